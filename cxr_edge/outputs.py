"""The result files of one image, defined and written in one place.

For an image with output stem ``STEM`` in ``OutputOptions.directory``:

- ``STEM.json``: the report (``cxr_edge.report.build_report``), always; written last;
- ``STEM.<finding-slug>.png``: one overlay per shown finding (``overlays``), e.g.
  ``chest.pleural-effusion.png``;
- ``STEM.maps.npz`` (``maps``): ``logits``, ``probabilities`` (C,), ``raw``, ``scaled``
  (C, N, N) float32 in logit units (model frame), ``labels`` (C,) str, ``steps``.

Everything is rendered in memory before anything is written, and each file is written
atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.atomic import write_bytes_atomic, write_text_atomic
from cxr_edge.postprocess import check_map_kind
from cxr_edge.prediction import Prediction

if TYPE_CHECKING:
    from cxr_edge.pipeline import Predictor


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image, and where.

    directory: output folder; overlays: one PNG per shown finding; map_kind: the map drawn
    and summarised in the report ("raw" | "scaled"); findings: labels to show (None: the
    prediction's ``reported_labels()``); maps: write ``STEM.maps.npz``.
    """

    directory: Path
    overlays: bool = False
    map_kind: str = "scaled"
    findings: tuple[str, ...] | None = None
    maps: bool = False

    def __post_init__(self) -> None:
        check_map_kind(self.map_kind)


@dataclass(frozen=True)
class ImageResult:
    """One image's prediction, its report dict, the labels shown and the files written."""

    prediction: Prediction
    report: dict[str, Any]
    shown: tuple[str, ...]
    files: tuple[Path, ...]


def label_slug(label: str) -> str:
    """File-name-safe form of a label: "Pleural Effusion" -> "pleural-effusion"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "finding"


def output_stems(files: Sequence[Path]) -> list[str]:
    """Output name stem per input: the file's stem, made unique within one call (``chest``,
    ``chest-2``, ...) so same-named files from different folders do not overwrite each other."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems


def maps_npz_bytes(prediction: Prediction) -> bytes:
    """The ``STEM.maps.npz`` file's bytes (see the module docstring)."""
    m = prediction.maps
    buf = io.BytesIO()
    np.savez(
        buf,
        logits=np.asarray(m.logits, dtype=np.float32),
        probabilities=np.asarray(m.probabilities, dtype=np.float32),
        raw=np.asarray(m.raw, dtype=np.float32),
        scaled=np.asarray(m.scaled, dtype=np.float32),
        labels=np.array(prediction.labels),
        steps=np.int64(prediction.steps),
    )
    return buf.getvalue()


def write_result_set(prediction: Prediction, stem: str, options: OutputOptions) -> ImageResult:
    """Render and write the result files of one prediction (see the module docstring)."""
    from cxr_edge.render import encode_png, finding_overlay
    from cxr_edge.report import build_report, report_json

    directory = options.directory
    shown = tuple(options.findings) if options.findings is not None else tuple(prediction.reported_labels())
    staged: list[tuple[Path, bytes]] = []
    t0 = time.perf_counter()
    if options.overlays:
        for label in shown:
            rgb = finding_overlay(prediction, label, options.map_kind)
            staged.append((directory / f"{stem}.{label_slug(label)}.png", encode_png(rgb)))
    render_ms = (time.perf_counter() - t0) * 1e3
    overlay_names = [path.name for path, _ in staged]
    if options.maps:
        staged.append((directory / f"{stem}.maps.npz", maps_npz_bytes(prediction)))
    report = build_report(
        prediction, options.map_kind, overlays=overlay_names, extra_timings_ms={"render": render_ms}
    )
    for target, data in staged:
        write_bytes_atomic(target, data)
    report_path = directory / f"{stem}.json"
    write_text_atomic(report_path, report_json(report))
    files = (*(path for path, _ in staged), report_path)
    return ImageResult(prediction, report, shown, files)


def infer_to_files(
    edge: Predictor,
    image: str | Path,
    stem: str,
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool = False,
) -> ImageResult:
    """Predict one image with ``edge`` (in-process ``CxrEdge`` or a Triton server's
    ``TritonCxrEdge``) and write its result set: ``infer``'s unit of work."""
    prediction = edge.predict(image, steps=steps, allow_non_chest=allow_non_chest)
    return write_result_set(prediction, stem, options)
