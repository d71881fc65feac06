#!/usr/bin/env python3
"""How the explanations come out over a set of X-rays: shortcut-warning rate, decisive patches.

    python tools/explain_stats.py ../shared/data/cxr/images/nih14 ../shared/data/cxr/images/tbx11k \\
        ../shared/data/cxr/dicom --steps 8            # bundled demo model
    python tools/explain_stats.py DIR --model m.onnx --json stats.json

Per image: the reported findings (positives by the model's thresholds), each one's decisive
patch count and shortcut warnings (``cxr_edge.explain``). Totals: images, reported findings,
findings and images with a warning (by kind), decisive counts. Files that are refused (out of
scope) or unreadable are counted and skipped. Not a test: a look at a data set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="files or folders (searched recursively)")
    parser.add_argument("--model", type=Path, help="ONNX model (default: the bundled demo model)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--map", default="scaled", dest="map_kind")
    parser.add_argument("--json", type=Path, help="also write per-image rows and totals as JSON")
    args = parser.parse_args(argv)

    from cxr_edge.errors import CxrEdgeError
    from cxr_edge.explain.decisive import decisive_patches
    from cxr_edge.explain.shortcuts import shortcut_warnings
    from cxr_edge.io.files import expand_inputs
    from cxr_edge.pipeline import CxrEdge

    edge = CxrEdge.load(args.model)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in expand_inputs(args.inputs):
        try:
            pred = edge.predict(path, steps=args.steps)
        except CxrEdgeError as exc:
            skipped.append(f"{path.name}: {exc.problem}")
            continue
        reported = pred.reported_labels()
        warnings = shortcut_warnings(pred, reported, args.map_kind)
        rows.append(
            {
                "image": str(path),
                "reported": reported,
                "decisive": {label: decisive_patches(pred, label).count for label in reported},
                "warnings": [
                    {"label": w.label, "kind": w.kind, "share": round(w.share, 3)} for w in warnings
                ],
            }
        )
        decided = ", ".join(f"{label} {k}" for label, k in rows[-1]["decisive"].items()) or "-"
        flags = ", ".join(f"{w.label} {w.kind} {w.share:.0%}" for w in warnings) or "-"
        print(f"{path.name:40s} decisive: {decided:50s} warnings: {flags}")

    findings = sum(len(r["reported"]) for r in rows)
    flagged = {(r["image"], w["label"]) for r in rows for w in r["warnings"]}
    by_kind = Counter(w["kind"] for r in rows for w in r["warnings"])
    images_flagged = sum(1 for r in rows if r["warnings"])
    per_label = Counter(label for r in rows for label in r["reported"])
    flagged_label = Counter(label for _, label in flagged)
    counts = [k for r in rows for k in r["decisive"].values() if k is not None]
    totals = {
        "images": len(rows),
        "skipped": skipped,
        "reported_findings": findings,
        "images_with_a_finding": sum(1 for r in rows if r["reported"]),
        "findings_flagged": len(flagged),
        "warnings_by_kind": dict(by_kind),
        "images_flagged": images_flagged,
        "reported_by_label": dict(per_label),
        "flagged_by_label": dict(flagged_label),
        "decisive_median": statistics.median(counts) if counts else None,
        "decisive_range": [min(counts), max(counts)] if counts else None,
        "decisive_not_reversible": sum(1 for r in rows for k in r["decisive"].values() if k is None),
    }
    print(json.dumps(totals, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "totals": totals}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
