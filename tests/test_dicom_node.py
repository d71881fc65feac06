"""The DICOM node's parts without a PACS (issue 14): destinations, the durable bounded spool, the
C-STORE decisions, backoff, and the worker delivering to an in-test storage SCP (also when it
is down at first, and after a crash that left a delivery half-journalled). Everything listens
on 127.0.0.1 and is shut down by the test that started it."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_samples import require_dicom_stack, synthetic_cr, with_new_instance_uid
from typing_extensions import Self

require_dicom_stack()

from orthanc_harness import LOOPBACK, echo, free_port, send, wait_for
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from cxr_edge.dicom_node.destinations import Destination, check_ae_title, parse_destination
from cxr_edge.dicom_node.log import EventLog
from cxr_edge.dicom_node.scp import StorageScp, decide
from cxr_edge.dicom_node.spool import Spool, SpoolFull
from cxr_edge.dicom_node.worker import Backoff, Worker
from cxr_edge.errors import CxrEdgeError


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    from cxr_edge.assets import sample_image_path
    from cxr_edge.io import load_xray

    return load_xray(sample_image_path()).pixels


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- destinations -----------------------------------------------------------------------------


def test_parse_destination() -> None:
    assert parse_destination("PACS@127.0.0.1:4242") == Destination("PACS", "127.0.0.1", 4242)
    assert parse_destination("ARCH 2@[::1]:104") == Destination("ARCH 2", "::1", 104)
    for bad in (
        "PACS",
        "PACS@host",
        "@h:1",
        "PACS@h:0",
        "PACS@h:70000",
        "WAY-TOO-LONG-AE-TITLE@h:1",
        "A\\B@h:1",
    ):
        with pytest.raises(CxrEdgeError):
            parse_destination(bad)
    with pytest.raises(CxrEdgeError):
        check_ae_title("   ")
    assert Destination("A B", "h", 1).key == "A_B_h_1"


# -- spool ------------------------------------------------------------------------------------


def test_spool_admits_durably_once_and_pushes_back_when_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000, min_free_bytes=0)
    assert spool.admit("1.2.3", b"x" * 600) is True
    assert (spool.incoming / "1.2.3.dcm").read_bytes() == b"x" * 600
    assert spool.admit("1.2.3", b"x" * 600) is False  # a re-send: nothing new
    with pytest.raises(SpoolFull, match=r"spool full \(0 of 0 MiB\); retry later"):
        spool.admit("1.2.4", b"y" * 600)
    assert spool.pending() == ["1.2.3"]
    for bad in ("../etc/passwd", "1.02.3", "1..2", "", "1." + "2" * 70, "1.2.3\n"):
        with pytest.raises(ValueError):
            spool.admit(bad, b"z")
    assert not list(spool.incoming.glob(".*"))  # no temporaries left behind


def test_spool_disk_reserve(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**12, min_free_bytes=10**15)
    with pytest.raises(SpoolFull, match="disk nearly full"):
        spool.admit("1.2", b"x")


def test_spool_results_journal_finish_and_recover(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**9, min_free_bytes=0)
    spool.admit("1.5", b"image")
    assert spool.results("1.5") is None
    saved = spool.save_results(
        "1.5",
        [("sc", "Edema", "1.2.840.1", "2.25.1", b"sc"), ("sr", "", "1.2.840.2", "2.25.2", b"sr")],
        {"infer_ms": 1},
    )
    results = spool.results("1.5")
    assert results is not None and [r.sop_instance_uid for r in results] == ["2.25.1", "2.25.2"]
    assert saved == results  # what the worker delivers right away is what a restart reads back
    assert results[0].path.read_bytes() == b"sc" and spool.results_info("1.5") == {"infer_ms": 1}
    spool.mark_delivered("1.5", "D", "2.25.1")
    assert spool.delivered("1.5", "D") == {"2.25.1"} and spool.delivered("1.5", "E") == set()
    # A crash between the final record and the clean-up: recover() finishes the clean-up.
    (spool.done_dir / "1.5.json").write_text("{}")
    (spool.incoming / ".x.dcm.part").write_bytes(b"half")
    (spool.results_dir / ".1.6.building").mkdir()
    spool.recover()
    assert spool.pending() == [] and spool.results("1.5") is None
    assert not list(spool.incoming.iterdir()) and not list(spool.results_dir.iterdir())
    assert spool.admit("1.5", b"image") is False  # done already: a re-send is not processed again


def test_spool_is_taken_by_one_node(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, 10**6), Spool(tmp_path, 10**6)
    first.acquire()
    try:
        with pytest.raises(CxrEdgeError, match="in use by another running node"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


# -- decisions --------------------------------------------------------------------------------


def test_decide(chest: np.ndarray) -> None:
    cr = synthetic_cr(chest)
    assert decide(cr, str(cr.SOPClassUID)) is None
    assert decide(cr, CTImageStorage) == (0x0122, "CT Image Storage: only CR and DX images")
    assert decide(cr, DigitalXRayImageStorageForProcessing)[0] == 0x0122  # type: ignore[index]
    lateral = synthetic_cr(chest, ViewPosition="LL")
    assert decide(lateral, str(cr.SOPClassUID)) == (
        0xC000,
        "out of scope: not a frontal view: ViewPosition is LL",
    )
    knee = synthetic_cr(chest, BodyPartExamined="KNEE")
    assert decide(knee, str(cr.SOPClassUID))[0] == 0xC000  # type: ignore[index]
    empty = synthetic_cr(chest)
    del empty.PixelData
    assert decide(empty, str(cr.SOPClassUID)) == (0xA900, "no Pixel Data")
    bad_uid = synthetic_cr(chest, SOPInstanceUID="1.02.3")
    assert decide(bad_uid, str(cr.SOPClassUID))[0] == 0xC000  # type: ignore[index]


def test_backoff() -> None:
    b = Backoff(base_s=1.0, max_s=5.0)
    assert b.ready("d", 0.0) and b.seconds_to_next_try(0.0) is None
    assert [b.failed("d", 0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not b.ready("d", 4.9) and b.ready("d", 5.0)
    assert b.succeeded("d") is True and b.succeeded("d") is False and b.ready("d", 0.0)


# -- the receiving SCP ------------------------------------------------------------------------


def test_scp_answers_every_object_with_a_status(chest: np.ndarray, tmp_path: Path) -> None:
    cr = synthetic_cr(chest)
    stream = io.StringIO()
    spool = Spool(tmp_path / "spool", max_bytes=len(encoded(cr)) + 1024, min_free_bytes=0)
    scp = StorageScp("CXREDGE", spool, EventLog(stream))
    scp.start(LOOPBACK, 0)
    try:
        assert echo(scp.port) == 0x0000
        ct = synthetic_cr(chest, SOPClassUID=CTImageStorage, Modality="CT")
        ct.file_meta.MediaStorageSOPClassUID = CTImageStorage
        lateral = synthetic_cr(chest, ViewPosition="LATERAL")
        statuses = send([cr, cr, ct, lateral, with_new_instance_uid(cr)], scp.port)
    finally:
        scp.stop()
    assert statuses[0] == (0x0000, "")
    assert statuses[1] == (0x0000, "")  # the same instance again: stored already
    assert statuses[2] == (0x0122, "CT Image Storage: only CR and DX images")
    assert statuses[3] == (0xC000, "out of scope: not a frontal view: ViewPosition is LATERAL")
    assert statuses[4][0] == 0xA700 and "spool full" in statuses[4][1] and "retry later" in statuses[4][1]
    assert spool.pending() == [str(cr.SOPInstanceUID)]
    stored = spool.source_path(str(cr.SOPInstanceUID)).read_bytes()
    assert stored[128:132] == b"DICM"
    events = [line["event"] for line in log_lines(stream)]
    assert events == ["duplicate", "refused", "refused", "refused"]
    text = stream.getvalue()
    assert "Phantom" not in text and "PHANTOM-001" not in text and "19700101" not in text  # no patient data


# -- the worker, delivering to an in-test destination -----------------------------------------


class DestinationScp:
    """A storage SCP for SC and SR that records every SOP Instance UID it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[str] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title="DEST")
        for sop_class in (SecondaryCaptureImageStorage, ComprehensiveSRStorage):
            self.ae.add_supported_context(sop_class)
        self.server: Any = None

    def _store(self, event: Any) -> int:
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def __enter__(self) -> Self:
        self.server = self.ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def test_worker_delivers_once_retrying_a_destination_that_is_down(chest: np.ndarray, tmp_path: Path) -> None:
    from cxr_edge.pipeline import CxrEdge

    port = free_port()
    destination = Destination("DEST", LOOPBACK, port)
    stream = io.StringIO()
    spool = Spool(tmp_path / "spool", max_bytes=10**9, min_free_bytes=0)
    images = [synthetic_cr(chest), synthetic_cr(chest)]
    for ds in images:
        spool.admit(str(ds.SOPInstanceUID), encoded(ds))
    worker = Worker(
        CxrEdge.load(),
        spool,
        [destination],
        "CXREDGE",
        steps=1,
        log=EventLog(stream),
        backoff=Backoff(base_s=0.05, max_s=0.2),
    )

    # The destination is down: both images are inferred and their results filed, none delivered.
    assert worker.step() and worker.step()
    assert all(spool.results(str(ds.SOPInstanceUID)) is not None for ds in images)
    assert [line["event"] for line in log_lines(stream)] == ["destination_down"]

    # Simulate a crash after the destination confirmed the first result of image 0 but before the
    # journal said so for the rest: only the unjournalled results are sent again.
    first = spool.results(str(images[0].SOPInstanceUID))
    assert first is not None
    spool.mark_delivered(str(images[0].SOPInstanceUID), destination.key, first[0].sop_instance_uid)

    stop = threading.Event()
    with DestinationScp(port) as pacs:
        runner = threading.Thread(target=worker.run, args=(stop,))
        runner.start()
        try:
            assert wait_for(lambda: len(spool.pending()) == 0, 60, 0.05)
        finally:
            stop.set()
            runner.join(10)
    assert not runner.is_alive()
    records = [spool.done_record(str(ds.SOPInstanceUID)) for ds in images]
    expected = [r["sop_instance_uid"] for record in records if record for r in record["results"]]
    assert all(records) and len(expected) >= 2 * len(images)  # an SR and at least one SC each
    assert sorted(pacs.received) == sorted(set(expected) - {first[0].sop_instance_uid})  # each once
    lines = log_lines(stream)
    delivered = [line for line in lines if line["event"] == "delivered"]
    assert [d["sop_instance_uid"] for d in delivered] == [str(ds.SOPInstanceUID) for ds in images]
    assert {line["event"] for line in lines} == {"destination_down", "destination_up", "delivered"}
    for record in delivered:
        assert record["latency_ms"] >= record["infer_ms"] > 0
        assert record["study_instance_uid"] in {str(ds.StudyInstanceUID) for ds in images}
    assert not list(spool.incoming.iterdir()) and not list(spool.results_dir.iterdir())


def test_worker_moves_an_undecodable_image_to_failed(chest: np.ndarray, tmp_path: Path) -> None:
    from cxr_edge.pipeline import CxrEdge

    ds = synthetic_cr(chest)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixel data
    stream = io.StringIO()
    spool = Spool(tmp_path, max_bytes=10**9, min_free_bytes=0)
    spool.admit(str(ds.SOPInstanceUID), encoded(ds))
    worker = Worker(
        CxrEdge.load(), spool, [Destination("D", LOOPBACK, free_port())], "CXREDGE", 1, EventLog(stream)
    )
    assert worker.step()
    assert spool.pending() == []
    assert (spool.failed_dir / f"{ds.SOPInstanceUID}.dcm").is_file()
    (line,) = log_lines(stream)
    assert line["event"] == "failed" and "pixel" in line["reason"].lower()
