"""The node's worker: takes spooled images oldest first, infers, files the results in the spool,
and C-STOREs them to every destination, retrying unreachable ones with exponential backoff.

One object is handled at a time, start to finish (build, then deliver everywhere that is up),
so a stop request (SIGTERM) lets the object in hand finish and then ends the loop. A destination
that is down does not hold up inference: its deliveries wait for its next retry while later
images are inferred; every result reaches every destination once (the spool journals each
confirmed C-STORE; a result confirmed but not journalled before a crash is sent again with the
same SOP Instance UID, which the PACS stores as the same instance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cxr_edge.dicom_node.destinations import Destination
from cxr_edge.dicom_node.log import EventLog
from cxr_edge.dicom_node.sender import DeliveryError, send_results
from cxr_edge.dicom_node.spool import Spool, SpooledResult
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge

#: Longest sleep when there is nothing to do (arrivals wake the worker at once).
IDLE_WAIT_S = 1.0

#: The saliency map the overlays and the report are made from.
MAP_KIND = "scaled"


@dataclass
class Backoff:
    """Retry times per destination: after n consecutive failures wait base * 2**(n-1), at most
    ``max_s`` seconds."""

    base_s: float = 1.0
    max_s: float = 60.0
    failures: dict[str, int] = field(default_factory=dict)
    next_try: dict[str, float] = field(default_factory=dict)

    def ready(self, key: str, now: float) -> bool:
        return now >= self.next_try.get(key, 0.0)

    def failed(self, key: str, now: float) -> float:
        """Record a failure; returns the delay until the next try (s)."""
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        delay = float(min(self.base_s * 2.0 ** (n - 1), self.max_s))
        self.next_try[key] = now + delay
        return delay

    def succeeded(self, key: str) -> bool:
        """Record a success; True when the destination had been failing."""
        self.next_try.pop(key, None)
        return self.failures.pop(key, 0) > 0

    def seconds_to_next_try(self, now: float) -> float | None:
        if not self.next_try:
            return None
        return max(0.0, min(self.next_try.values()) - now)


class Worker:
    """Processes the spool; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        edge: CxrEdge,
        spool: Spool,
        destinations: Sequence[Destination],
        calling_ae_title: str,
        steps: int,
        log: EventLog,
        backoff: Backoff | None = None,
    ) -> None:
        self.edge = edge
        self.spool = spool
        self.destinations = tuple(destinations)
        self.calling_ae_title = calling_ae_title
        self.steps = steps
        self.log = log
        self.backoff = backoff or Backoff()
        self._deliver_ms: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.step():
                continue
            wait = self.backoff.seconds_to_next_try(time.monotonic())
            self.spool.wait_for_arrival(IDLE_WAIT_S if wait is None else min(max(wait, 0.01), IDLE_WAIT_S))

    def step(self) -> bool:
        """Handle the oldest image that has something to do; False when none has."""
        now = time.monotonic()
        for uid in self.spool.pending():
            results = self.spool.results(uid)
            if results is None:
                results = self._build(uid)
                if results is not None:
                    self._deliver(uid, results)
                return True
            if any(self._todo(uid, d, results) and self.backoff.ready(d.key, now) for d in self.destinations):
                self._deliver(uid, results)
                return True
        return False

    def _todo(
        self, uid: str, destination: Destination, results: Sequence[SpooledResult]
    ) -> list[SpooledResult]:
        sent = self.spool.delivered(uid, destination.key)
        return [r for r in results if r.sop_instance_uid not in sent]

    def _build(self, uid: str) -> list[SpooledResult] | None:
        """Infer and file the results; None (and the image moved to failed/) when impossible."""
        from cxr_edge.dicom_results import build_dicom_results, read_source
        from cxr_edge.render import finding_overlay

        t0 = time.perf_counter()
        path = self.spool.source_path(uid)
        try:
            prediction = self.edge.predict(path, steps=self.steps)
            t1 = time.perf_counter()
            overlays = {
                label: finding_overlay(prediction, label, MAP_KIND) for label in prediction.reported_labels()
            }
            source = read_source(path)
            results = build_dicom_results(prediction, source, overlays, MAP_KIND)
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the node
            # CxrEdgeError problems name no header values; other messages might, so only the type.
            reason = (
                exc.problem if isinstance(exc, CxrEdgeError) else f"{type(exc).__name__} while processing"
            )
            record = {"sop_instance_uid": uid, "reason": reason, "received_at": self._received_at(uid)}
            self.spool.fail(uid, record)
            self.log.write("failed", **record)
            return None
        info = {
            "study_instance_uid": str(source.StudyInstanceUID),
            "infer_ms": round((t1 - t0) * 1e3, 1),
            "build_ms": round((time.perf_counter() - t1) * 1e3, 1),
            "findings": list(overlays),
        }
        return self.spool.save_results(
            uid, [(r.kind, r.label, r.sop_class_uid, r.sop_instance_uid, r.data) for r in results], info
        )

    def _received_at(self, uid: str) -> float | None:
        try:
            return round(self.spool.received_at(uid), 3)
        except FileNotFoundError:
            return None

    def _deliver(self, uid: str, results: Sequence[SpooledResult]) -> None:
        complete = True
        for destination in self.destinations:
            todo = self._todo(uid, destination, results)
            if not todo:
                continue
            if not self.backoff.ready(destination.key, time.monotonic()):
                complete = False
                continue
            t0 = time.perf_counter()
            key = destination.key

            def journal(result: SpooledResult, key: str = key) -> None:
                self.spool.mark_delivered(uid, key, result.sop_instance_uid)

            try:
                send_results(destination, self.calling_ae_title, todo, journal)
            except DeliveryError as exc:
                complete = False
                delay = self.backoff.failed(destination.key, time.monotonic())
                if self.backoff.failures[destination.key] == 1:
                    self.log.write(
                        "destination_down", destination=str(destination), reason=str(exc), retry_in_s=delay
                    )
                continue
            finally:
                self._deliver_ms[uid] = self._deliver_ms.get(uid, 0.0) + (time.perf_counter() - t0) * 1e3
            if self.backoff.succeeded(destination.key):
                self.log.write("destination_up", destination=str(destination))
        if complete:
            self._finish(uid, results)

    def _finish(self, uid: str, results: Sequence[SpooledResult]) -> None:
        info = self.spool.results_info(uid)
        received_at = self.spool.received_at(uid)
        record: dict[str, Any] = {
            "sop_instance_uid": uid,
            "study_instance_uid": info.get("study_instance_uid"),
            "results": [{"kind": r.kind, "sop_instance_uid": r.sop_instance_uid} for r in results],
            "destinations": [str(d) for d in self.destinations],
            "received_at": round(received_at, 3),
            "infer_ms": info.get("infer_ms"),
            "build_ms": info.get("build_ms"),
            "deliver_ms": round(self._deliver_ms.pop(uid, 0.0), 1),
            "latency_ms": round((time.time() - received_at) * 1e3, 1),
        }
        self.spool.finish(uid, record)
        self.log.write("delivered", **record)
