"""The result files of one image, defined and written in one place.

For an image with output stem ``STEM`` in ``OutputOptions.directory``:

- ``STEM.json``: the report (``cxr_edge.report.build_report``), always; written last;
- ``STEM.<finding-slug>.png``: one overlay per shown finding (``overlays``), e.g.
  ``chest.pleural-effusion.png``;
- ``STEM.maps.npz`` (``maps``): ``logits``, ``probabilities`` (C,), ``raw``, ``scaled``
  (C, N, N) float32 in logit units (model frame), ``labels`` (C,) str, ``steps``;
- ``STEM.<finding-slug>.sc.dcm`` and ``STEM.sr.dcm`` (``dicom``, DICOM inputs only): a Secondary
  Capture of each shown finding's overlay and the Structured Report of all findings, filed in
  the source image's study (``cxr_edge.dicom_results``; docs/dicom.md).

Everything is rendered in memory before anything is written, and each file is written
atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.atomic import write_bytes_atomic, write_text_atomic
from cxr_edge.postprocess import check_map_kind
from cxr_edge.prediction import Prediction

if TYPE_CHECKING:
    from cxr_edge.dicom_results import DicomResult
    from cxr_edge.pipeline import CxrEdge


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image, and where.

    directory: output folder; overlays: one PNG per shown finding; map_kind: the map drawn
    and summarised in the report ("raw" | "scaled"); findings: labels to show (None: the
    prediction's ``reported_labels()``); maps: write ``STEM.maps.npz``; dicom: write the DICOM
    results (SC per shown finding + SR; the image must be a DICOM file).
    """

    directory: Path
    overlays: bool = False
    map_kind: str = "scaled"
    findings: tuple[str, ...] | None = None
    maps: bool = False
    dicom: bool = False

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


def dicom_file_name(stem: str, result: DicomResult) -> str:
    """``STEM.<finding-slug>.sc.dcm`` for an overlay's Secondary Capture, ``STEM.sr.dcm`` for the SR."""
    return f"{stem}.{label_slug(result.label)}.sc.dcm" if result.kind == "sc" else f"{stem}.sr.dcm"


def _dicom_source(prediction: Prediction) -> str:
    from cxr_edge.errors import CxrEdgeError

    if prediction.source != "dicom" or prediction.image is None:
        raise CxrEdgeError(
            prediction.image, "--dicom-out needs a DICOM input (results are filed in its study)"
        )
    return prediction.image


def write_dicom_results(
    prediction: Prediction,
    source: str | Path | Any,
    directory: str | Path,
    overlays: Mapping[str, np.ndarray],
    map_kind: str = "scaled",
    stem: str | None = None,
) -> list[Path]:
    """Build the SC(s) and SR of ``prediction`` and write them into ``directory``; their paths.

    source: the DICOM file the prediction was made from, or its pydicom Dataset; overlays:
    label -> (h, w, 3) uint8 RGB overlay to file as a Secondary Capture; stem: file name stem
    (default: the source file's stem, or its SOP Instance UID). Everything is built before the
    first file is written; each file is written atomically.
    """
    from cxr_edge.dicom_results import build_dicom_results, read_source

    dataset = read_source(source)
    if stem is None:
        stem = Path(source).stem if isinstance(source, (str, Path)) else str(dataset.SOPInstanceUID)
    results = build_dicom_results(prediction, dataset, overlays, map_kind)
    paths = []
    for result in results:
        path = Path(directory) / dicom_file_name(stem, result)
        write_bytes_atomic(path, result.data)
        paths.append(path)
    return paths


def write_result_set(prediction: Prediction, stem: str, options: OutputOptions) -> ImageResult:
    """Render and write the result files of one prediction (see the module docstring)."""
    from cxr_edge.render import encode_png, finding_overlay
    from cxr_edge.report import build_report, report_json

    directory = options.directory
    shown = tuple(options.findings) if options.findings is not None else tuple(prediction.reported_labels())
    source = _dicom_source(prediction) if options.dicom else None  # refused before anything is rendered
    staged: list[tuple[Path, bytes]] = []
    t0 = time.perf_counter()
    rendered = (
        {label: finding_overlay(prediction, label, options.map_kind) for label in shown}
        if (options.overlays or options.dicom)
        else {}
    )
    if options.overlays:
        for label, rgb in rendered.items():
            staged.append((directory / f"{stem}.{label_slug(label)}.png", encode_png(rgb)))
    render_ms = (time.perf_counter() - t0) * 1e3
    overlay_names = [path.name for path, _ in staged]
    if options.maps:
        staged.append((directory / f"{stem}.maps.npz", maps_npz_bytes(prediction)))
    dicom_names: list[str] = []
    if source is not None:
        from cxr_edge.dicom_results import build_dicom_results, read_source

        for result in build_dicom_results(prediction, read_source(source), rendered, options.map_kind):
            staged.append((directory / dicom_file_name(stem, result), result.data))
            dicom_names.append(staged[-1][0].name)
    report = build_report(
        prediction, options.map_kind, overlays=overlay_names, extra_timings_ms={"render": render_ms}
    )
    if options.dicom:
        report["dicom"] = dicom_names
    for target, data in staged:
        write_bytes_atomic(target, data)
    report_path = directory / f"{stem}.json"
    write_text_atomic(report_path, report_json(report))
    files = (*(path for path, _ in staged), report_path)
    return ImageResult(prediction, report, shown, files)


def infer_to_files(
    edge: CxrEdge,
    image: str | Path,
    stem: str,
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool = False,
) -> ImageResult:
    """Predict one image with ``edge`` and write its result set: ``infer``'s unit of work."""
    prediction = edge.predict(image, steps=steps, allow_non_chest=allow_non_chest)
    return write_result_set(prediction, stem, options)
