"""``cxr-edge build-engine``: ONNX -> TensorRT plan + JSON manifest under ``engines/``.

Given a float32 ONNX and --precision fp16/int8, the precision-specific ONNX is made first
(int8: from --calib with the TensorRT recipe, behind the accuracy gate) and kept beside the plan;
the built plan is compared with the float32 ONNX and not written when it differs
(``cxr_edge.engine.checked_build``). Without TensorRT it says so in one line and exits 2;
a failed gate or plan check exits 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_edge.commands.common import EXIT_GATE_FAILED, one_line_errors, print_error
from cxr_edge.engine.profile import DEFAULT_PROFILE_MAX_PATCHES


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
    holdout: Annotated[
        Path | None, typer.Option(help="Held-out real X-rays for the accuracy gate and the plan check.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Float32 ONNX to check the plan against when --onnx is already fp16/int8."),
    ] = None,
    device: Annotated[int, typer.Option(min=0, help="CUDA device index.")] = 0,
) -> None:
    """Build a TensorRT engine (TensorRT 10.3 ... 11.x) with one optimization profile over N."""
    from cxr_edge.engine.checked_build import build_checked_engine
    from cxr_edge.engine.tensorrt_build import PlanCheckFailed
    from cxr_edge.quantize import GateFailed, GateSettings

    with one_line_errors():
        try:
            built = build_checked_engine(
                onnx,
                precision,
                out,
                calib=calib,
                gate=GateSettings(holdout=holdout),
                reference=reference,
                max_patches=max_patches,
                workspace_mb=workspace,
                dla_core=dla_core,
                device=device,
                on_report=lambda report: typer.echo("\n".join(report.lines())),
            )
        except (GateFailed, PlanCheckFailed) as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_GATE_FAILED) from None
        manifest = built.manifest
        typer.echo(f"plan vs {built.reference_onnx}: image logits {built.check.summary()}")
        typer.echo(
            f"wrote {built.plan} ({manifest.precision}, TensorRT {manifest.tensorrt_version}, {manifest.gpu_name} "
            f"sm {manifest.compute_capability}, profile N {manifest.profile.min}..{manifest.profile.max}) "
            f"and {built.plan.with_suffix('.json')}"
        )


def register(app: typer.Typer) -> None:
    """Add ``build-engine`` to the app."""
    app.command("build-engine")(build_engine_command)
