"""Precision-specific ONNX models (INT8 Q/DQ, FP16) behind an accuracy gate against float32.

``make_precision_onnx`` writes the output only when the gate passes (atomic: no partial or
failed model is ever left at the output path). INT8 also writes the calibration manifest and
the activation-range cache, into the folder the caller names (default: the output's folder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxr_edge.atomic import atomic_path
from cxr_edge.calibration import (
    CalibrationSet,
    SamplingSettings,
    list_calibration_files,
    load_calibration_set,
    write_calibration_manifest,
)
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import PRECISIONS, ModelMetadata, write_onnx_metadata
from cxr_edge.quantize.gate import GateImage, GateReport, phantom_gate_images, real_gate_images, run_gate
from cxr_edge.quantize.int8 import Int8Options, quantize_int8
from cxr_edge.quantize.qdq_census import qdq_census

#: Precisions a float32 export can be turned into.
REDUCED_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp32")


class GateFailed(CxrEdgeError):
    """The candidate model missed the accuracy gate; no output was written."""

    def __init__(self, path: str | Path, report: GateReport) -> None:
        self.report = report
        super().__init__(
            path,
            f"{report.precision} model failed the accuracy gate (worst map r {report.worst_map_r:.4f}, "
            f"limit {report.min_map_r}; AUROC diff {report.worst_auroc_diff:.4f}, limit {report.max_auroc_diff}; "
            f"image logits {'within' if report.logits.passed else 'beyond'} tolerance); not written",
        )


@dataclass
class GateSettings:
    """Held-out images for the gate: real X-rays (``holdout``: folder or list file, files also in
    the calibration set are dropped) and labelled phantoms (``phantoms``, maps on ``phantom_maps``)."""

    holdout: Path | None = None
    max_real: int = 6
    phantoms: int = 200
    phantom_maps: int = 4
    threads: int | None = None
    speed_repeats: int = 5


@dataclass
class QuantizeResult:
    out: Path
    report: GateReport
    calibration: CalibrationSet | None = None
    kept_float: dict[str, list[str]] = field(default_factory=dict)
    census: dict[str, int] = field(default_factory=dict)  # Q/DQ nodes by kind (qdq_census)
    calibration_dir: Path | None = None  # where the manifest and range cache went (int8)


def cache_path(calib: CalibrationSet, onnx: Path, options: Int8Options, directory: Path) -> Path:
    """Range cache named by set (and its digest), model hash, range kind and method, never reused stale.

    The kind is the target (``cpu``: asymmetric ranges, ``tensorrt``: symmetric), ``cpu-int8`` for
    symmetric CPU ranges; the placement (``keep_float``) does not matter: every tensor is cached.
    """
    method = options.range_method
    if method == "percentile":
        method += f"{options.percentile:g}"
    kind = "cpu-int8" if options.target == "cpu" and options.symmetric else options.target
    name = f"{calib.name}-{calib.digest[:8]}-{sha256_file(onnx)[:12]}-{kind}-{method}.ranges.json"
    return directory / name


def gate_images(settings: GateSettings, metadata: ModelMetadata, exclude_sha: set[str]) -> list[GateImage]:
    """The held-out images ``settings`` names: real X-rays (files with a sha256 in ``exclude_sha``,
    i.e. calibration images, dropped) then labelled phantoms."""
    real: list[Path] = []
    if settings.holdout is not None:
        for path in list_calibration_files(settings.holdout):
            if len(real) >= settings.max_real:
                break
            if sha256_file(path) not in exclude_sha:
                real.append(path)
    images = real_gate_images(real)
    if settings.phantoms:
        images += phantom_gate_images(
            settings.phantoms, metadata.image_size, metadata.labels, settings.phantom_maps
        )
    return images


def make_precision_onnx(
    onnx_in: str | Path,
    out: str | Path,
    precision: str,
    *,
    calib: str | Path | None = None,
    int8: Int8Options | None = None,
    sampling: SamplingSettings | None = None,
    gate: GateSettings | None = None,
    calibration_dir: str | Path | None = None,
    on_report: Callable[[GateReport], None] | None = None,
) -> QuantizeResult:
    """Make an INT8 (needs ``calib``) or FP16 ONNX from a float32 one, gate it, write ``out``.

    ``calibration_dir``: where INT8 writes ``<set>.manifest.json`` and its range cache (default:
    ``out``'s folder; never the current directory unless that is where ``out`` goes).
    ``on_report`` sees the gate report before a failure is raised, so it is printed every time.
    """
    import onnx

    onnx_in, out = Path(onnx_in), Path(out)
    if precision not in REDUCED_PRECISIONS:
        raise CxrEdgeError(None, f"unknown --precision {precision!r}; use {' or '.join(REDUCED_PRECISIONS)}")
    metadata = ModelMetadata.from_onnx(onnx_in)
    if metadata.precision != "fp32":
        raise CxrEdgeError(onnx_in, f"is already {metadata.precision}; quantize the float32 export")
    if out.resolve() == onnx_in.resolve():
        raise CxrEdgeError(out, "output would overwrite the input model")
    gate = gate or GateSettings()
    calibration: CalibrationSet | None = None
    kept: dict[str, list[str]] = {}
    folder = Path(calibration_dir) if calibration_dir is not None else out.parent

    with atomic_path(out) as tmp:
        if precision == "int8":
            if calib is None:
                raise CxrEdgeError(None, "--precision int8 needs --calib (a folder or list file of X-rays)")
            int8 = int8 or Int8Options()
            calibration = load_calibration_set(calib, metadata, sampling)
            cache = cache_path(calibration, onnx_in, int8, folder)
            # Every cache made from this very set (same digest) stays listed, whatever the model.
            calibration.caches.extend(
                p.name for p in folder.glob(f"{calibration.name}-{calibration.digest[:8]}-*.ranges.json")
            )
            calibration.caches.append(cache.name)
            folder.mkdir(parents=True, exist_ok=True)
            kept = quantize_int8(onnx_in, tmp, calibration, int8, cache=cache)
            write_calibration_manifest(calibration, folder)
            model = onnx.load(str(tmp))
        else:
            from cxr_edge.quantize.fp16 import convert_fp16

            model = convert_fp16(onnx.load(str(onnx_in)))
        write_onnx_metadata(model, metadata.with_(precision=precision))
        onnx.save(model, str(tmp))

        exclude = {i.sha256 for i in calibration.images} if calibration else set()
        images = gate_images(gate, metadata, exclude)
        report = run_gate(
            onnx_in, tmp, precision, images, threads=gate.threads, speed_repeats=gate.speed_repeats
        )
        if precision == "int8" and int8 is not None and int8.target == "tensorrt":
            report.notes.append(
                "made for TensorRT: ONNX Runtime runs its float16 layers through float32 casts, "
                "so the CPU speed is not the engine's"
            )
        if on_report is not None:
            on_report(report)
        if not report.passed:
            raise GateFailed(out, report)
    return QuantizeResult(
        out=out,
        report=report,
        calibration=calibration,
        kept_float=kept,
        census=qdq_census(model),
        calibration_dir=folder if calibration is not None else None,
    )
