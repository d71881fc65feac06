"""A DICOM node: receives chest radiographs (C-STORE), infers, and forwards SC + SR results to
one or more destinations, with a durable, bounded spool in between (see ``spool``, ``scp``,
``worker``). ``DicomNode.serve`` runs until ``request_stop`` (the command wires SIGTERM/SIGINT
to it); the object in hand is finished first, everything else stays in the spool for the next
start, which resumes it (also after a kill -9).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_edge.dicom_node.destinations import Destination, check_ae_title
from cxr_edge.dicom_node.log import EventLog
from cxr_edge.dicom_node.scp import StorageScp
from cxr_edge.dicom_node.spool import DEFAULT_MIN_FREE_BYTES, Spool
from cxr_edge.dicom_node.worker import Backoff, Worker
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge


@dataclass(frozen=True)
class NodeConfig:
    """How a node listens, where it sends, how it infers. Sizes in bytes, times in seconds."""

    spool: Path
    destinations: tuple[Destination, ...]
    ae_title: str = "CXREDGE"
    bind: str = "127.0.0.1"
    port: int = 11112
    steps: int = 8
    spool_max_bytes: int = 2 * 1024**3
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title)
        if not self.destinations:
            raise CxrEdgeError(None, "give at least one --forward AE@HOST:PORT destination")
        if not 0 <= self.port <= 65535:
            raise CxrEdgeError(None, f"--port {self.port} is not in 0..65535")
        if self.spool_max_bytes <= 0:
            raise CxrEdgeError(None, "the spool bound must be positive")


class DicomNode:
    """One running node: an SCP thread pool receiving into the spool, a worker draining it."""

    def __init__(self, config: NodeConfig, edge: CxrEdge, log: EventLog | None = None) -> None:
        self.config = config
        self.edge = edge
        self.log = log or EventLog()
        self.spool = Spool(config.spool, config.spool_max_bytes, config.min_free_bytes)
        self.scp = StorageScp(config.ae_title, self.spool, self.log)
        self.worker = Worker(
            edge,
            self.spool,
            config.destinations,
            config.ae_title,
            config.steps,
            self.log,
            Backoff(config.retry_base_s, config.retry_max_s),
        )
        self._stop = threading.Event()

    def serve(self) -> None:
        """Take the spool, resume it, listen, and work until ``request_stop``; then stop
        listening and return. CxrEdgeError if the spool is taken or the port cannot be bound."""
        self.spool.acquire()
        try:
            self.spool.recover()
            try:
                self.scp.start(self.config.bind, self.config.port)
            except OSError as exc:
                raise CxrEdgeError(
                    None, f"cannot listen on {self.config.bind}:{self.config.port} ({exc.strerror or exc})"
                ) from None
            self.log.write(
                "listening",
                ae_title=self.config.ae_title,
                bind=self.config.bind,
                port=self.scp.port,
                destinations=[str(d) for d in self.config.destinations],
                pending=len(self.spool.pending()),
            )
            try:
                self.worker.run(self._stop)
            finally:
                self.scp.stop()
                self.log.write("stopped", pending=len(self.spool.pending()))
        finally:
            self.spool.release()

    def request_stop(self) -> None:
        """Finish the object in hand, then make ``serve`` return. Safe from a signal handler: it
        only sets an event (taking the spool's lock there could deadlock); an idle worker sees
        it within ``worker.IDLE_WAIT_S``."""
        self._stop.set()
