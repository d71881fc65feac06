"""A throw-away Orthanc PACS and a cxr-edge DICOM node as child processes, for tests and
tools/bench_dicom_node.py. Everything listens on, and is reached at, 127.0.0.1 only (Orthanc
binds all interfaces; nothing here ever connects elsewhere), and every process started is
stopped by its context manager.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import Self

from cxr_edge.triton.server import free_port

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


class Orthanc:
    """``Orthanc config.json`` with a generated config: loopback ports, storage in ``workdir``,
    no remote access, no authentication, the node registered as a modality."""

    def __init__(
        self, workdir: Path, node_ae: str = "CXREDGE", node_port: int = 11112, ae_title: str = "ORTHANC"
    ) -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.node_ae = node_ae
        self.node_port = node_port
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "Name": "cxr-edge-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"cxredge": [self.node_ae, LOOPBACK, self.node_port]},
            "DicomCheckCalledAet": True,
            "Plugins": [],
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "ConcurrentJobs": 1,
        }

    def __enter__(self) -> Self:
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt install orthanc)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited at start: {(self.workdir / 'orthanc.log').read_text()[-2000:]}"
                )
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)
        self.process = None

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=10) as reply:
            return json.loads(reply.read())

    def find_instances(self, **query: str) -> list[str]:
        """Orthanc IDs of the instances matching a DICOM tag query (e.g. StudyInstanceUID=...)."""
        body = json.dumps({"Level": "Instance", "Query": query}).encode()
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}/tools/find", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            found: list[str] = json.loads(reply.read())
        return found

    def instances_tags(self) -> list[dict[str, Any]]:
        """Simplified main tags of every stored instance (SOPInstanceUID, SOPClassUID, StudyInstanceUID, ...)."""
        out = []
        for orthanc_id in self.rest("/instances"):
            tags = self.rest(f"/instances/{orthanc_id}/simplified-tags")
            out.append(tags)
        return out

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL if needed; always reaps."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class Node:
    """``cxr-edge serve-dicom`` as a child process; its JSON log lines are collected."""

    def __init__(
        self,
        spool: Path,
        forward: Sequence[str],
        port: int,
        steps: int = 1,
        ae_title: str = "CXREDGE",
        extra: Sequence[str] = (),
    ) -> None:
        self.args = [
            sys.executable,
            "-c",
            "from cxr_edge.cli import app; app()",
            "serve-dicom",
            "--spool",
            str(spool),
            "--port",
            str(port),
            "--ae-title",
            ae_title,
            "--steps",
            str(steps),
            "--retry-max-s",
            "1",
            *[a for f in forward for a in ("--forward", f)],
            *extra,
        ]
        self.port = port
        self.ae_title = ae_title
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._reader: threading.Thread | None = None
        self._err_reader: threading.Thread | None = None
        self._listening = threading.Event()

    def start(self, timeout: float = 120.0) -> Node:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT
        )
        self._listening.clear()
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        # Drain stderr too: a full pipe would block the node.
        self._err_reader = threading.Thread(target=self._read_err, args=(self.process,), daemon=True)
        self._err_reader.start()
        if not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError(f"serve-dicom did not start: {''.join(self.stderr)[-2000:]}")
        return self

    def _read_err(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.stderr.append(line)

    def output(self) -> str:
        """Everything the node printed so far (stdout and stderr)."""
        return "".join(self.stdout) + "".join(self.stderr)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.stdout.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.lines.append(record)
            if record.get("event") == "listening":
                self._listening.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in list(self.lines) if r.get("event") == name]

    def _join_readers(self) -> None:
        for reader in (self._reader, self._err_reader):
            if reader is not None:
                reader.join(5)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no cleanup, no flush of anything not already durable
        self.process.wait(15)
        self._join_readers()

    def stop(self) -> int | None:
        stop_process(self.process, timeout=60)
        self._join_readers()
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send(
    datasets: Sequence[Any], port: int, called_ae: str = "CXREDGE", calling_ae: str = "MODALITY"
) -> list[tuple[int, str]]:
    """C-STORE each pydicom Dataset to 127.0.0.1:port over one association; (status, comment) per dataset."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    # One presentation context per (SOP class, transfer syntax): the acceptor picks one syntax per context.
    for sop_class, syntax in sorted(
        {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
    ):
        ae.add_requested_context(sop_class, syntax)
    for sop_class in sorted({str(d.SOPClassUID) for d in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError("association with the node not established")
    out = []
    try:
        for ds in datasets:
            reply = assoc.send_c_store(ds)
            out.append((int(reply.Status) if "Status" in reply else -1, str(reply.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def echo(port: int, called_ae: str = "CXREDGE") -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def read_chest_dicoms(folder: Path) -> Iterator[Any]:
    """The in-scope chest DICOMs of the shared set, as pydicom Datasets with file meta (the
    ACR-NEMA file gets Implicit VR Little Endian, which is how it is encoded)."""
    from cxr_edge.io.dicom import read_dataset

    for path in sorted(folder.glob("*.dcm")):
        yield read_dataset(path, path.read_bytes())
