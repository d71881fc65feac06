"""The node's durable work queue on disk: received images, their results, and what has been
delivered where. Every state change is an fsynced file or an atomic rename, so a kill -9 at
any moment leaves a state the next start resumes from.

Layout under the spool folder (file names are SOP Instance UIDs, checked to be UIDs)::

    incoming/<uid>.dcm          received image, durable before "stored" is answered
    results/<uid>/              its results (SC, SR files and manifest.json), renamed into place whole
    results/<uid>/sent.<dest>   one line per result delivered to that destination (appended, fsynced)
    done/<uid>.json             the object's final record; its incoming file and results are then removed
    failed/<uid>.dcm, .json     images that could not be processed after "stored" was answered

The bound counts incoming/, results/ and failed/; an image that would pass it is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom.uid import RE_VALID_UID

from cxr_edge.atomic import fsync_path, write_bytes_atomic, write_text_atomic
from cxr_edge.errors import CxrEdgeError

#: Free disk space the spool leaves to everything else on the machine.
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024

MANIFEST = "manifest.json"


def is_uid(text: str) -> bool:
    """DICOM PS3.5 9.1: digits and dots, no empty or zero-padded components, at most 64
    characters (the whole text: a trailing newline is not a UID)."""
    return len(text) <= 64 and re.fullmatch(RE_VALID_UID, text) is not None


class SpoolFull(Exception):
    """The spool cannot take an object now; ``reason`` says why (for the C-STORE status)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SpooledResult:
    """One built result object on disk."""

    kind: str
    label: str
    sop_class_uid: str
    sop_instance_uid: str
    path: Path


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # removed while we counted
    return total


class Spool:
    """A spool folder. Thread-safe: the receiving threads ``admit``, one worker does the rest."""

    def __init__(
        self, root: str | Path, max_bytes: int, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    ) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.incoming = self.root / "incoming"
        self.results_dir = self.root / "results"
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        for folder in (self.incoming, self.results_dir, self.done_dir, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._lock_file: IO[str] | None = None

    # -- ownership -----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the spool for this process (an exclusive lock the OS drops if the process dies);
        CxrEdgeError if another node holds it."""
        handle = open(self.root / ".lock", "a")  # noqa: SIM115 - held for the process's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise CxrEdgeError(self.root, "spool is in use by another running node") from None
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def recover(self) -> None:
        """After a crash: drop half-written temporaries and finish cleaning up objects whose
        final record was written before the crash."""
        for folder in (self.incoming, self.results_dir, self.done_dir, self.failed_dir):
            for tmp in folder.glob(".*.part"):
                tmp.unlink(missing_ok=True)
        for partial in self.results_dir.glob(".*.building"):
            shutil.rmtree(partial, ignore_errors=True)
        for record in self.done_dir.glob("*.json"):
            self._remove_work(record.stem)

    # -- receiving -----------------------------------------------------------------------------

    def usage_bytes(self) -> int:
        return sum(_tree_bytes(d) for d in (self.incoming, self.results_dir, self.failed_dir))

    def admit(self, uid: str, data: bytes) -> bool:
        """Store a received image durably; True when stored now, False when this SOP Instance is
        already here or already done (a re-send: nothing to do). Raises SpoolFull."""
        if not is_uid(uid):
            raise ValueError(f"not a UID: {uid[:70]!r}")
        with self._lock:
            if self.known(uid):
                return False
            used = self.usage_bytes()
            if used + len(data) > self.max_bytes:
                raise SpoolFull(f"spool full ({used // 2**20} of {self.max_bytes // 2**20} MiB); retry later")
            free = shutil.disk_usage(self.root).free
            if free - len(data) < self.min_free_bytes:
                raise SpoolFull(f"disk nearly full ({free // 2**20} MiB free); retry later")
            write_bytes_atomic(self.incoming / f"{uid}.dcm", data, durable=True)
            self._arrived.notify_all()
        return True

    def known(self, uid: str) -> bool:
        return (
            (self.incoming / f"{uid}.dcm").exists()
            or (self.done_dir / f"{uid}.json").exists()
            or (self.failed_dir / f"{uid}.json").exists()
        )

    def wait_for_arrival(self, timeout: float) -> None:
        """Sleep until an image arrives or ``timeout`` seconds pass."""
        with self._arrived:
            self._arrived.wait(timeout)

    # -- the worker's side ---------------------------------------------------------------------

    def pending(self) -> list[str]:
        """UIDs of images not yet done, oldest arrival first."""
        entries = []
        for path in self.incoming.glob("*.dcm"):
            try:
                entries.append((path.stat().st_mtime_ns, path.stem))
            except FileNotFoundError:
                continue
        return [uid for _, uid in sorted(entries)]

    def source_path(self, uid: str) -> Path:
        return self.incoming / f"{uid}.dcm"

    def received_at(self, uid: str) -> float:
        """When the image was stored (Unix time, s): its file's modification time."""
        return self.source_path(uid).stat().st_mtime

    def results(self, uid: str) -> list[SpooledResult] | None:
        """The image's results, or None when they are not built yet."""
        folder = self.results_dir / uid
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        return [
            SpooledResult(
                m["kind"], m["label"], m["sop_class_uid"], m["sop_instance_uid"], folder / m["file"]
            )
            for m in manifest["results"]
        ]

    def results_info(self, uid: str) -> dict[str, Any]:
        """What was recorded with the results (e.g. inference time)."""
        info: dict[str, Any] = json.loads((self.results_dir / uid / MANIFEST).read_text()).get("info", {})
        return info

    def save_results(
        self, uid: str, results: list[tuple[str, str, str, str, bytes]], info: dict[str, Any]
    ) -> list[SpooledResult]:
        """Write (kind, label, sop_class_uid, sop_instance_uid, data) results and ``info``
        durably; they appear under results/<uid>/ all at once. Returns them as ``results`` will."""
        building = self.results_dir / f".{uid}.building"
        folder = self.results_dir / uid
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        manifest = []
        saved = []
        for n, (kind, label, class_uid, instance_uid, data) in enumerate(results):
            name = f"{n:02d}.{kind}.dcm"
            write_bytes_atomic(building / name, data, durable=True)
            saved.append(SpooledResult(kind, label, class_uid, instance_uid, folder / name))
            manifest.append(
                {
                    "kind": kind,
                    "label": label,
                    "sop_class_uid": class_uid,
                    "sop_instance_uid": instance_uid,
                    "file": name,
                }
            )
        write_text_atomic(building / MANIFEST, json.dumps({"results": manifest, "info": info}), durable=True)
        os.replace(building, folder)
        fsync_path(self.results_dir)
        return saved

    def delivered(self, uid: str, destination_key: str) -> set[str]:
        """SOP Instance UIDs of this image's results already delivered to a destination."""
        path = self.results_dir / uid / f"sent.{destination_key}"
        try:
            return set(path.read_text().split())
        except FileNotFoundError:
            return set()

    def mark_delivered(self, uid: str, destination_key: str, sop_instance_uid: str) -> None:
        """Record, durably, that one result reached one destination."""
        path = self.results_dir / uid / f"sent.{destination_key}"
        with open(path, "a") as journal:
            # A leading newline: a line torn by a crash mid-append stays a line of its own (an
            # unknown UID, so at worst that result is sent again under the same UID).
            journal.write("\n" + sop_instance_uid + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        fsync_path(path.parent)

    def finish(self, uid: str, record: dict[str, Any]) -> None:
        """The image is delivered everywhere: write its final record, then remove its work."""
        write_text_atomic(self.done_dir / f"{uid}.json", json.dumps(record) + "\n", durable=True)
        self._remove_work(uid)

    def fail(self, uid: str, record: dict[str, Any]) -> None:
        """The image cannot be processed: keep it, with why, under failed/."""
        write_text_atomic(self.failed_dir / f"{uid}.json", json.dumps(record) + "\n", durable=True)
        source = self.source_path(uid)
        if source.exists():
            os.replace(source, self.failed_dir / f"{uid}.dcm")
            fsync_path(self.failed_dir)
        shutil.rmtree(self.results_dir / uid, ignore_errors=True)

    def _remove_work(self, uid: str) -> None:
        shutil.rmtree(self.results_dir / uid, ignore_errors=True)
        self.source_path(uid).unlink(missing_ok=True)

    def done_record(self, uid: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads((self.done_dir / f"{uid}.json").read_text())
        except FileNotFoundError:
            return None
        return record
