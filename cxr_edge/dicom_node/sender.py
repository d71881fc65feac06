"""Send one image's results to one destination over a single association (pynetdicom SCU)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cxr_edge.dicom_node.destinations import Destination
from cxr_edge.dicom_node.spool import SpooledResult
from cxr_edge.io.dicom import pydicom_muted

#: C-STORE statuses meaning "the destination has the instance": success, the PS3.4 B.2.3
#: warnings (coercion, elements discarded, data set does not match), and "duplicate SOP
#: instance", which a re-send after a crash is meant to meet.
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007, 0x0111})

#: Seconds to wait for association setup, a DIMSE reply and the network.
TIMEOUT_S = 30.0


class DeliveryError(Exception):
    """A destination did not take a result (unreachable, rejected, failure status)."""


def send_results(
    destination: Destination,
    calling_ae_title: str,
    results: Sequence[SpooledResult],
    on_stored: Callable[[SpooledResult], None],
) -> None:
    """C-STORE ``results`` to ``destination``; ``on_stored(result)`` runs after each one the
    destination confirms. Raises DeliveryError on the first failure (the rest are not sent)."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class in sorted({r.sop_class_uid for r in results}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:  # pynetdicom raises for unresolvable hosts
        raise DeliveryError(f"cannot connect ({type(exc).__name__})") from None
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise DeliveryError(f"association {reason}")
    try:
        for result in results:
            with pydicom_muted():  # our own files, but they carry copied patient attributes
                dataset = dcmread(result.path)
            status = assoc.send_c_store(dataset)
            code = int(status.Status) if "Status" in status else None
            if code not in STORED_STATUSES:
                shown = "no response" if code is None else f"status 0x{code:04X}"
                raise DeliveryError(f"C-STORE of {result.kind} failed: {shown}")
            on_stored(result)
    finally:
        if assoc.is_established:
            assoc.release()
