"""Measure `cxr-edge serve-dicom` against a local Orthanc: receive-to-results-in-PACS latency,
throughput with concurrent senders, and what a kill -9 mid-spool does (objects sent / delivered).

Not a test: it prints JSON with medians and the raw samples. Everything runs on 127.0.0.1
(Orthanc from Debian's package with a generated config, the node as a child process) and is
stopped at the end. Needs Orthanc, the `dicom` extra and ../shared/data/cxr/dicom.

    python tools/bench_dicom_node.py --steps 4 --runs 7 --senders 4 --per-sender 3 --kill-objects 8

Latency: from the C-STORE response of the image to the moment Orthanc's REST API lists all of its
results (polled every 20 ms); each sample is a copy of a real CR in a new study.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dicom_samples import with_new_instance_uid
from orthanc_harness import Node, Orthanc, free_port, send, wait_for

from cxr_edge.io.dicom import read_dataset

POLL_S = 0.02


def new_study(ds: Any) -> Any:
    from pydicom.uid import generate_uid

    twin = with_new_instance_uid(ds)
    twin.StudyInstanceUID = generate_uid()
    return twin


def delivered_line(node: Node, uid: str, timeout: float) -> dict[str, Any]:
    """The node's "delivered" line of one image (waits for it)."""

    def find() -> list[dict[str, Any]]:
        return [d for d in node.events("delivered") if d["sop_instance_uid"] == uid]

    wait_for(lambda: bool(find()), timeout, POLL_S)
    (line,) = find()
    return line


def wait_in_pacs(pacs: Orthanc, study: str, count: int, timeout: float) -> None:
    wait_for(lambda: len(pacs.find_instances(StudyInstanceUID=study)) >= count, timeout, POLL_S)


def latency(pacs: Orthanc, node: Node, port: int, base: Any, runs: int) -> dict[str, Any]:
    warm = new_study(base)
    send([warm], port)
    expected = len(delivered_line(node, str(warm.SOPInstanceUID), 300)["results"])
    samples, node_side = [], []
    for _ in range(runs):
        ds = new_study(base)
        ((status, _),) = send([ds], port)
        t0 = time.perf_counter()
        assert status == 0
        wait_in_pacs(pacs, str(ds.StudyInstanceUID), expected, 300)
        samples.append((time.perf_counter() - t0) * 1e3)
        node_side.append(delivered_line(node, str(ds.SOPInstanceUID), 30))
    return {
        "image": f"{base.Rows}x{base.Columns}",
        "results_per_image": expected,
        "runs": runs,
        "median_ms": round(statistics.median(samples), 1),
        "samples_ms": [round(x, 1) for x in samples],
        "node_median_latency_ms": round(statistics.median(d["latency_ms"] for d in node_side), 1),
        "node_median_infer_ms": round(statistics.median(d["infer_ms"] for d in node_side), 1),
        "node_median_build_ms": round(statistics.median(d["build_ms"] for d in node_side), 1),
        "node_median_deliver_ms": round(statistics.median(d["deliver_ms"] for d in node_side), 1),
    }


def throughput(
    pacs: Orthanc, node: Node, port: int, base: Any, senders: int, per_sender: int
) -> dict[str, Any]:
    batches = [[new_study(base) for _ in range(per_sender)] for _ in range(senders)]
    uids = {str(ds.SOPInstanceUID) for batch in batches for ds in batch}
    before = len(node.events("delivered"))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(batch, port)) for batch in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored_s = time.perf_counter() - t0
    wait_for(lambda: uids <= {d["sop_instance_uid"] for d in node.events("delivered")}, 600, POLL_S)
    wall = time.perf_counter() - t0
    done = node.events("delivered")[before:]
    return {
        "senders": senders,
        "objects": len(uids),
        "all_stored_by_node_s": round(stored_s, 2),
        "all_delivered_s": round(wall, 2),
        "images_per_s": round(len(uids) / wall, 3),
        "median_latency_ms": round(statistics.median(d["latency_ms"] for d in done), 1),
    }


def kill9(workdir: Path, base: Any, steps: int, objects: int) -> dict[str, Any]:
    port = free_port()
    with Orthanc(workdir / "orthanc-kill", node_port=port) as pacs:
        forward = [f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"]
        images = [with_new_instance_uid(base) for _ in range(objects)]
        first = Node(workdir / "spool-kill", forward, port, steps=steps).start()
        try:
            stored = [code for code, _ in send(images, port)].count(0)
            wait_for(lambda: len(first.events("delivered")) >= 1, 300)
        finally:
            first.kill9()
        before = len(first.events("delivered"))
        with Node(workdir / "spool-kill", forward, port, steps=steps) as second:
            pending = second.events("listening")[0]["pending"]
            wait_for(lambda: before + len(second.events("delivered")) >= objects, 600)
            delivered = first.events("delivered") + second.events("delivered")
        expected = {r["sop_instance_uid"] for d in delivered for r in d["results"]}
        in_pacs = {t["SOPInstanceUID"] for t in pacs.instances_tags()}
        return {
            "objects_sent": objects,
            "stored_answers": stored,
            "delivered_before_kill": before,
            "pending_at_restart": pending,
            "objects_delivered": len({d["sop_instance_uid"] for d in delivered}),
            "delivered_lines": len(delivered),
            "results_expected": len(expected),
            "results_in_pacs": pacs.count_instances(),
            "pacs_matches_expected": in_pacs == expected,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=7, help="sequential latency samples per image")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--per-sender", type=int, default=3)
    parser.add_argument("--kill-objects", type=int, default=8)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr" / "dicom")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    small_path, large_path = args.data / "CR-MONO1-10-chest.dcm", args.data / "RG1_J2KI.dcm"
    small = read_dataset(small_path, small_path.read_bytes())
    large = read_dataset(large_path, large_path.read_bytes())
    with tempfile.TemporaryDirectory(prefix="cxr-dicom-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        port = free_port()
        out: dict[str, Any] = {"steps": args.steps, "model": "bundled demo model"}
        with Orthanc(workdir / "orthanc", node_port=port) as pacs:
            forward = [f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"]
            with Node(workdir / "spool", forward, port, steps=args.steps) as node:
                out["latency"] = [latency(pacs, node, port, img, args.runs) for img in (small, large)]
                out["throughput"] = throughput(pacs, node, port, small, args.senders, args.per_sender)
        out["kill9"] = kill9(workdir, small, args.steps, args.kill_objects)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
