"""``cxr-edge build-engine``: ONNX -> TensorRT plan + JSON manifest under ``engines/``.

Given a float32 ONNX and --precision fp16/int8, the precision-specific ONNX is made first
(int8: from --calib, symmetric for TensorRT, behind the accuracy gate) and kept beside the plan.
Without TensorRT it says so in one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_edge.commands.common import one_line_errors
from cxr_edge.engine.profile import DEFAULT_PROFILE_MAX_PATCHES


def default_plan_path(onnx: Path, precision: str, dla_core: int | None) -> Path:
    """``engines/<onnx stem>-<precision>[-dla<K>].plan``."""
    suffix = f"-dla{dla_core}" if dla_core is not None else ""
    return Path("engines") / f"{onnx.stem}-{precision}{suffix}.plan"


def build_engine_command(
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX from 'cxr-edge export' (or 'quantize').")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp16",
    calib: Annotated[Path | None, typer.Option(help="Calibration set for int8 from a float32 ONNX.")] = None,
    max_patches: Annotated[
        int, typer.Option(help="Largest patch batch per engine call (profile max; DLA: fixed <= 4096).")
    ] = DEFAULT_PROFILE_MAX_PATCHES,
    workspace: Annotated[int, typer.Option(min=16, help="Builder workspace limit in MiB.")] = 4096,
    dla_core: Annotated[int | None, typer.Option(min=0, help="Build for this DLA core (Jetson).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Plan path (default engines/NAME.plan).")
    ] = None,
    holdout: Annotated[Path | None, typer.Option(help="Held-out real X-rays for the int8/fp16 gate.")] = None,
    device: Annotated[int, typer.Option(min=0, help="CUDA device index.")] = 0,
) -> None:
    """Build a TensorRT engine (TensorRT 10.3 ... 11.x) with one optimization profile over N."""

    from cxr_edge.engine.tensorrt_build import BuildOptions, build_engine, import_tensorrt
    from cxr_edge.metadata import ModelMetadata

    with one_line_errors():
        import_tensorrt()  # fail fast, before any quantization work
        plan = out or default_plan_path(onnx, precision, dla_core)
        source = onnx
        if precision in ("fp16", "int8") and ModelMetadata.from_onnx(onnx).precision == "fp32":
            from cxr_edge.commands.quantize import gated_precision_onnx
            from cxr_edge.quantize import GateSettings
            from cxr_edge.quantize.int8 import Int8Options

            source = plan.with_suffix(f".{precision}.onnx")
            gated_precision_onnx(
                onnx,
                source,
                precision,
                calib=calib,
                int8=Int8Options(target="tensorrt"),
                gate=GateSettings(holdout=holdout),
            )
        manifest = build_engine(
            BuildOptions(
                onnx=source,
                precision=precision,
                out=plan,
                max_patches=max_patches,
                workspace_mb=workspace,
                dla_core=dla_core,
                device=device,
            )
        )
        typer.echo(
            f"wrote {plan} ({manifest.precision}, TensorRT {manifest.tensorrt_version}, {manifest.gpu_name} "
            f"sm {manifest.compute_capability}, profile N {manifest.profile.min}..{manifest.profile.max}) "
            f"and {plan.with_suffix('.json')}"
        )


def register(app: typer.Typer) -> None:
    """Add ``build-engine`` to the app."""
    app.command("build-engine")(build_engine_command)
