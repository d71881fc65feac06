#!/usr/bin/env python3
"""Regenerate docs/images/sample_explained.png, the README's explained overlay of the sample.

    python tools/readme_figure.py            # bundled demo model and sample, S = 8

The overlay is ``cxr_edge.render.finding_overlay`` of the sample's positive finding, exactly as
``cxr-edge infer cxr_edge/assets/sample_chest.png --overlay`` writes it, then shrunk to 800 px
wide (area interpolation) and stored as a 256-colour PNG (Pillow, dithered) to stay small.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "sample_explained.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=800)
    args = parser.parse_args(argv)

    import cv2
    from PIL import Image

    from cxr_edge.assets import sample_image_path
    from cxr_edge.pipeline import CxrEdge
    from cxr_edge.render import finding_overlay

    pred = CxrEdge.load().predict(sample_image_path(), steps=args.steps)
    label = pred.reported_labels()[0]
    rgb = finding_overlay(pred, label)
    height = round(rgb.shape[0] * args.width / rgb.shape[1])
    small = cv2.resize(rgb, (args.width, height), interpolation=cv2.INTER_AREA)
    image = Image.fromarray(small).quantize(
        colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.FLOYDSTEINBERG
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {label}, {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
