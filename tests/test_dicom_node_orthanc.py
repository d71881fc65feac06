"""``cxr-edge serve-dicom`` against a real PACS, Orthanc (issue 14): real chest DICOMs sent with
a pynetdicom SCU arrive as SC + SR in their studies; out-of-scope objects get failure statuses;
a kill -9 mid-spool and a restart deliver every object exactly once.

Orthanc (Debian's ``orthanc``) runs from a config this test writes, on free loopback ports, with
its storage in a temporary folder; every connection goes to 127.0.0.1; every process started is
stopped. Skips with a message where Orthanc or ../shared is missing; CI installs Orthanc.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ci_tools import require
from dicom_samples import require_dicom_stack, with_new_instance_uid

require_dicom_stack()

from orthanc_harness import Node, Orthanc, echo, free_port, orthanc_binary, read_chest_dicoms, send, wait_for

from cxr_edge.io.dicom import read_dataset

require("Orthanc (apt install orthanc)", orthanc_binary() is not None)

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"


def expected_results(node_lines: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """source SOP Instance UID -> its results, from the node's "delivered" lines."""
    return {line["sop_instance_uid"]: line["results"] for line in node_lines if line["event"] == "delivered"}


def test_results_arrive_in_the_study_and_out_of_scope_is_refused(shared_cxr: Path, tmp_path: Path) -> None:
    chests = list(read_chest_dicoms(shared_cxr / "dicom"))
    others = [
        read_dataset(p, p.read_bytes()) for p in sorted((shared_cxr / "dicom" / "out_of_scope").glob("*.dcm"))
    ]
    radiographs = [ds for ds in chests if ds.SOPClassUID == CR_CLASS]
    assert len(radiographs) >= 2
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", node_port=node_port) as pacs:
        node = Node(tmp_path / "spool", [f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"], node_port, steps=1)
        with node:
            assert echo(node_port) == 0x0000
            statuses = send(chests + others, node_port)
            for ds, (code, comment) in zip(chests + others, statuses):
                if any(ds is r for r in radiographs):
                    assert (code, comment) == (0x0000, "")
                else:  # the SIIM chest is a Secondary Capture; the others are CT, tibia, dental, elbow
                    assert code in (0x0122, 0xA900, 0xC000) and comment, (ds.get("Modality"), code)
            assert wait_for(lambda: len(node.events("delivered")) == len(radiographs), 180)
            lines = list(node.lines)
        assert node.process is not None and node.process.returncode == 0  # SIGTERM: clean exit
        printed = node.output()
        for ds in chests + others:  # never a patient identifier in what the node prints
            for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
                value = str(ds.get(keyword, "") or "").strip()
                if len(value) >= 3:
                    assert value not in printed, keyword

        refused = [line for line in lines if line["event"] == "refused"]
        assert len(refused) == len(chests) + len(others) - len(radiographs)
        assert all(line["status"] != "0x0000" and line["reason"] for line in refused)

        stored = {t["SOPInstanceUID"]: t for t in pacs.instances_tags()}
        results = expected_results(lines)
        assert set(stored) == {r["sop_instance_uid"] for rs in results.values() for r in rs}
        for source in radiographs:
            mine = [stored[r["sop_instance_uid"]] for r in results[str(source.SOPInstanceUID)]]
            srs = [t for t in mine if t["SOPClassUID"] == SR_CLASS]
            scs = [t for t in mine if t["SOPClassUID"] == SC_CLASS]
            assert len(srs) == 1 and len(scs) >= 1 and len(mine) == len(scs) + 1
            for tags in mine:
                assert tags["StudyInstanceUID"] == str(source.StudyInstanceUID)  # the same study
                assert tags.get("PatientID", "") == str(source.get("PatientID", "") or "")
                assert "NOT FOR CLINICAL USE" in tags["SeriesDescription"]
            for tags in scs:
                assert tags["BurnedInAnnotation"] == "YES"
                assert tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == str(
                    source.SOPInstanceUID
                )
            assert (
                len({t["SeriesInstanceUID"] for t in scs}) == 1
                and srs[0]["SeriesInstanceUID"] != scs[0]["SeriesInstanceUID"]
            )


def test_kill9_mid_spool_then_restart_delivers_every_object_exactly_once(
    shared_cxr: Path, tmp_path: Path
) -> None:
    path = shared_cxr / "dicom" / "CR-MONO1-10-chest.dcm"  # the smallest real chest CR (440 x 440)
    base = read_dataset(path, path.read_bytes())
    images = [with_new_instance_uid(base) for _ in range(5)]
    node_port = free_port()
    spool = tmp_path / "spool"
    with Orthanc(tmp_path / "orthanc", node_port=node_port) as pacs:
        forward = [f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"]
        first = Node(spool, forward, node_port, steps=2).start()
        try:
            assert [code for code, _ in send(images, node_port)] == [0x0000] * len(images)
            assert wait_for(lambda: len(first.events("delivered")) >= 1, 180)
        finally:
            first.kill9()
        before = {line["sop_instance_uid"] for line in first.events("delivered")}
        assert 1 <= len(before) < len(images), "the kill must land mid-spool"

        second = Node(spool, forward, node_port, steps=2)
        with second:
            (listening,) = second.events("listening")
            assert listening["pending"] == len(images) - len(before)
            assert wait_for(lambda: len(before) + len(second.events("delivered")) >= len(images), 300)
            # Re-sending everything after delivery: stored already, nothing is processed again.
            assert [code for code, _ in send(images, node_port)] == [0x0000] * len(images)
            assert wait_for(lambda: len(second.events("duplicate")) == len(images), 30)
        assert second.process is not None and second.process.returncode == 0

        delivered = first.events("delivered") + second.events("delivered")
        per_source = Counter(line["sop_instance_uid"] for line in delivered)
        assert per_source == Counter(str(ds.SOPInstanceUID) for ds in images)  # every object, once
        results = expected_results(delivered)
        expected = {r["sop_instance_uid"] for rs in results.values() for r in rs}
        assert len(expected) == sum(len(rs) for rs in results.values())  # no UID shared between objects
        stored = {t["SOPInstanceUID"]: t for t in pacs.instances_tags()}
        assert set(stored) == expected and pacs.count_instances() == len(expected)
        assert sum(t["SOPClassUID"] == SR_CLASS for t in stored.values()) == len(images)
