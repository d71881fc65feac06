"""``build-engine``'s policy: the precision ONNX first when needed, then a plan checked against float32.

Given a float32 ONNX and ``fp16``/``int8``, the precision-specific ONNX is made first
(``make_precision_onnx``: int8 with the TensorRT recipe from a calibration set, both behind the
accuracy gate) and kept beside the plan as ``<plan stem>.<precision>.onnx``. The plan is then
built and compared with the float32 ONNX on the gate's held-out patches (``plan_check``); a plan
that fails is not written. Given an ONNX that already is fp16/int8, that ONNX is the reference
unless ``reference`` names the float32 one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cxr_edge.compare import Comparison
from cxr_edge.engine.manifest import EngineManifest
from cxr_edge.engine.profile import DEFAULT_PROFILE_MAX_PATCHES
from cxr_edge.quantize import GateSettings
from cxr_edge.quantize.gate import GateReport


@dataclass(frozen=True)
class CheckedBuild:
    """What ``build_checked_engine`` wrote and measured."""

    manifest: EngineManifest
    plan: Path
    source_onnx: Path  # the ONNX the plan was built from
    reference_onnx: Path  # the ONNX the plan was checked against
    check: Comparison
    gate: GateReport | None  # None when no precision ONNX had to be made


def default_plan_path(onnx: Path, precision: str, dla_core: int | None) -> Path:
    """``engines/<onnx stem>-<precision>[-dla<K>].plan``."""
    suffix = f"-dla{dla_core}" if dla_core is not None else ""
    return Path("engines") / f"{onnx.stem}-{precision}{suffix}.plan"


def build_checked_engine(
    onnx: str | Path,
    precision: str,
    plan: str | Path | None = None,
    *,
    calib: str | Path | None = None,
    gate: GateSettings | None = None,
    reference: str | Path | None = None,
    max_patches: int = DEFAULT_PROFILE_MAX_PATCHES,
    workspace_mb: int = 4096,
    dla_core: int | None = None,
    device: int = 0,
    on_report: Callable[[GateReport], None] | None = None,
) -> CheckedBuild:
    """Make the precision ONNX if ``onnx`` is float32 (GateFailed: nothing written), build the plan,
    check it against float32 (PlanCheckFailed: no plan written), write plan + manifest.

    ``on_report`` sees the accuracy gate's report (before a failure is raised).
    """
    from cxr_edge.engine.plan_check import plan_vs_onnx
    from cxr_edge.engine.tensorrt_build import BuildOptions, build_engine, import_tensorrt
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.quantize import gate_images, make_precision_onnx
    from cxr_edge.quantize.gate import check_patches
    from cxr_edge.quantize.int8 import Int8Options

    onnx = Path(onnx)
    import_tensorrt()  # fail fast, before any quantization work
    plan = Path(plan) if plan is not None else default_plan_path(onnx, precision, dla_core)
    gate = gate or GateSettings()
    metadata = ModelMetadata.from_onnx(onnx)
    source, report = onnx, None
    if precision in ("fp16", "int8") and metadata.precision == "fp32":
        source = plan.with_suffix(f".{precision}.onnx")
        result = make_precision_onnx(
            onnx,
            source,
            precision,
            calib=calib,
            int8=Int8Options(target="tensorrt"),
            gate=gate,
            on_report=on_report,
        )
        report = result.report
        exclude = {i.sha256 for i in result.calibration.images} if result.calibration else set()
    else:
        exclude = set()
    reference_onnx = Path(reference) if reference is not None else onnx
    # only the map images are checked: no need to render the AUROC phantoms again
    map_images = gate_images(replace(gate, phantoms=gate.phantom_maps), metadata, exclude)
    patches = check_patches(map_images, metadata)
    manifest, comparison = build_engine(
        BuildOptions(
            onnx=source,
            precision=precision,
            out=plan,
            max_patches=max_patches,
            workspace_mb=workspace_mb,
            dla_core=dla_core,
            device=device,
        ),
        check=plan_vs_onnx(reference_onnx, patches),
    )
    return CheckedBuild(manifest, plan, source, reference_onnx, comparison, report)
