"""The receiving side: a Verification and Storage SCP (pynetdicom) that answers each C-STORE only
after deciding about the object and, when it takes it, after the spool holds it durably.

Every storage SOP class is accepted at association time, so an object the node will not process
gets a C-STORE failure status with a reason (PS3.4 B.2.3) instead of a bare association
rejection: nothing is dropped silently. Statuses:

- 0x0000 stored (or already stored: a re-send is answered the same way, and not processed again);
- 0x0122 SOP class not supported (only CR and DX For Presentation images are read);
- 0xA700 out of resources (the spool is full or the disk nearly so; retry later);
- 0xA900 data set does not match the SOP class (no pixel data);
- 0xC000 cannot process: out of scope by the header (modality, body part, view), or a
  SOP Instance UID that is not a UID.
"""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from cxr_edge.dicom_node.log import EventLog
from cxr_edge.dicom_node.spool import Spool, SpoolFull, is_uid
from cxr_edge.io.dicom import pydicom_muted
from cxr_edge.io.scope import scope_problem

#: The SOP classes whose images the model reads.
ACCEPTED_SOP_CLASSES = frozenset({ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation})

STORED = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_PROCESS = 0xC000

#: Error Comment is LO: 64 characters.
_COMMENT_CHARS = 64


def status(code: int, comment: str | None = None) -> Dataset:
    """A C-STORE response status (with an Error Comment for failures)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:_COMMENT_CHARS]
    return ds


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else "unknown SOP class"


def decide(ds: Any, sop_class_uid: str) -> tuple[int, str] | None:
    """Why the node will not take this object, as (status, comment), or None to take it. Looks
    at the SOP class, the SOP Instance UID, pixel data presence and the header scope only."""
    if sop_class_uid == DigitalXRayImageStorageForProcessing:
        return SOP_CLASS_NOT_SUPPORTED, "DX For Processing: send the For Presentation image"
    if sop_class_uid not in ACCEPTED_SOP_CLASSES:
        return SOP_CLASS_NOT_SUPPORTED, f"{_sop_class_name(sop_class_uid)}: only CR and DX images"
    if not is_uid(str(ds.get("SOPInstanceUID", "") or "")):
        return CANNOT_PROCESS, "SOP Instance UID missing or not a valid UID"
    if not str(ds.get("StudyInstanceUID", "") or ""):
        return CANNOT_PROCESS, "no Study Instance UID: results could not be filed"
    if "PixelData" not in ds:
        return DATASET_DOES_NOT_MATCH, "no Pixel Data"
    problem = scope_problem(ds)
    if problem:
        return CANNOT_PROCESS, f"out of scope: {problem}"
    return None


class StorageScp:
    """Listens for associations; each C-STORE is checked, spooled durably, then answered."""

    def __init__(self, ae_title: str, spool: Spool, log: EventLog) -> None:
        self.ae_title = ae_title
        self.spool = spool
        self.log = log
        self._server: ThreadedAssociationServer | None = None
        self._ae = AE(ae_title=ae_title)
        self._ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = 60.0
        # No calling AE title whitelist here: the node listens on 127.0.0.1 by default; put
        # it behind the hospital network's own access control when binding elsewhere.

    def start(self, bind: str, port: int) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = self._ae.start_server((bind, port), block=False, evt_handlers=handlers)
        assert server is not None  # block=False returns the server
        self._server = server

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop listening; an association in flight is aborted, so its sender retries (nothing
        it was not told "stored" for is lost)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._ae.shutdown()

    def _on_echo(self, event: Any) -> int:
        return STORED

    def _on_store(self, event: Any) -> Dataset:
        t0 = time.perf_counter()
        sop_class_uid = str(event.request.AffectedSOPClassUID)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            with pydicom_muted():  # pydicom's warnings about odd values quote them (names, dates)
                ds = event.dataset
                ds.file_meta = event.file_meta
                refusal = decide(ds, sop_class_uid)
        except Exception as exc:  # noqa: BLE001 - a malformed data set must get an answer, not a dead thread
            refusal = (CANNOT_PROCESS, f"unreadable data set ({type(exc).__name__})")
        if refusal is None and str(ds.SOPInstanceUID) != sop_uid:
            refusal = (CANNOT_PROCESS, "SOP Instance UID differs from the C-STORE request's")
        if refusal is not None:
            code, comment = refusal
            self.log.write(
                "refused",
                sop_instance_uid=sop_uid if is_uid(sop_uid) else None,
                status=f"0x{code:04X}",
                reason=comment,
            )
            return status(code, comment)
        try:
            stored = self.spool.admit(sop_uid, event.encoded_dataset(include_meta=True))
        except SpoolFull as full:
            self.log.write(
                "refused", sop_instance_uid=sop_uid, status=f"0x{OUT_OF_RESOURCES:04X}", reason=full.reason
            )
            return status(OUT_OF_RESOURCES, full.reason)
        except OSError as exc:
            reason = f"spool write failed ({exc.strerror or type(exc).__name__})"
            self.log.write(
                "refused", sop_instance_uid=sop_uid, status=f"0x{OUT_OF_RESOURCES:04X}", reason=reason
            )
            return status(OUT_OF_RESOURCES, reason)
        if not stored:
            self.log.write(
                "duplicate",
                sop_instance_uid=sop_uid,
                status="0x0000",
                ms=round((time.perf_counter() - t0) * 1e3, 1),
            )
        # A stored object's one log line is written when its results are delivered (worker).
        return status(STORED)
