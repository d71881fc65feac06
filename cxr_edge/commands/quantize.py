"""``cxr-edge quantize``: float32 ONNX -> INT8 (Q/DQ) or FP16 ONNX behind an accuracy gate.

The gate is printed every time; exit 3 and no output file when it fails, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxr_edge.calibration import SamplingSettings
from cxr_edge.commands.common import EXIT_GATE_FAILED, one_line_errors, print_error
from cxr_edge.quantize import GateSettings
from cxr_edge.quantize.int8 import Int8Options

_GATE, _SAMPLING, _INT8 = GateSettings(), SamplingSettings(), Int8Options()  # defaults live with the settings


def parse_keep_float(text: str) -> tuple[str, ...]:
    """``"stem,se,head"`` -> groups; ``"none"`` -> ()."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if parts in ((), ("none",)) else parts


def gated_precision_onnx(onnx: Path, out: Path, precision: str, **options: Any) -> Any:
    """``make_precision_onnx`` for a command: prints the gate report either way; on a failed
    gate prints the error and exits with EXIT_GATE_FAILED (nothing written). Returns the result."""
    from cxr_edge.quantize import GateFailed, make_precision_onnx

    try:
        result = make_precision_onnx(onnx, out, precision, **options)
    except GateFailed as exc:
        typer.echo("\n".join(exc.report.lines()))
        print_error(str(exc))
        raise typer.Exit(EXIT_GATE_FAILED) from None
    typer.echo("\n".join(result.report.lines()))
    return result


def quantize_command(
    onnx: Annotated[Path, typer.Option("--onnx", help="Float32 ONNX from 'cxr-edge export'.")],
    precision: Annotated[str, typer.Option(help="int8 or fp16.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output ONNX (written only if the gate passes).")],
    calib: Annotated[
        Path | None, typer.Option(help="Calibration set: folder or list file of real X-rays (int8).")
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            help="int8 recipe: 'cpu' = ONNX Runtime's fastest (uint8 activations, every quantizable op); "
            "'tensorrt' = TensorRT's placement (symmetric int8 at Conv/Gemm and residual-Add inputs)."
        ),
    ] = _INT8.target,
    high_precision: Annotated[
        str | None,
        typer.Option(
            help="Precision of the unquantized rest: fp16 or fp32 (default: fp16 for tensorrt, fp32 for cpu)."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Activation ranges: percentile, mse (symmetric only), entropy or minmax "
            "(default: mse for tensorrt, percentile for cpu)."
        ),
    ] = None,
    percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = _INT8.percentile,
    keep_float: Annotated[
        str | None,
        typer.Option(help="Groups left unquantized: any of stem,se,head, or 'none' (default: the target's)."),
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="Held-out real X-rays for the gate (folder or list file).")
    ] = None,
    gate_real: Annotated[
        int, typer.Option(min=0, help="Most held-out real images in the gate.")
    ] = _GATE.max_real,
    gate_phantoms: Annotated[
        int, typer.Option(min=0, help="Labelled phantoms for the AUROC check.")
    ] = _GATE.phantoms,
    gate_phantom_maps: Annotated[
        int, typer.Option(min=0, help="Phantoms also compared on S=4 maps.")
    ] = _GATE.phantom_maps,
    patches_per_image: Annotated[
        int, typer.Option(min=1, help="Calibration patches per image.")
    ] = _SAMPLING.patches_per_image,
    shifts_per_image: Annotated[
        int, typer.Option(min=1, help="Shifted copies sampled per image.")
    ] = _SAMPLING.shifts_per_image,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads (default: all cores).")] = None,
    calibration_dir: Annotated[
        Path | None,
        typer.Option(help="Where the calibration manifest and range cache go (default: beside --out)."),
    ] = None,
) -> None:
    """Make a precision-specific ONNX and print the accuracy gate against float32."""
    with one_line_errors():
        options = Int8Options(
            target=target,
            method=method,
            percentile=percentile,
            keep_float=None if keep_float is None else parse_keep_float(keep_float),
            high_precision=high_precision,
        )
        gate = GateSettings(
            holdout=holdout,
            max_real=gate_real,
            phantoms=gate_phantoms,
            phantom_maps=gate_phantom_maps,
            threads=threads,
        )
        sampling = SamplingSettings(shifts_per_image=shifts_per_image, patches_per_image=patches_per_image)
        result = gated_precision_onnx(
            onnx,
            out,
            precision,
            calib=calib,
            int8=options,
            sampling=sampling,
            gate=gate,
            calibration_dir=calibration_dir,
        )
        if result.kept_float:
            counts = ", ".join(f"{g} {len(n)} nodes" for g, n in result.kept_float.items())
            typer.echo(f"not quantized ({options.remainder_precision}): {counts}")
        if precision == "int8":
            typer.echo("Q/DQ: " + ", ".join(f"{k} {v}" for k, v in result.census.items()))
        if result.calibration is not None and result.calibration_dir is not None:
            typer.echo(
                f"calibration: {len(result.calibration.images)} images, {len(result.calibration.patches)} patches, "
                f"manifest and range cache in {result.calibration_dir}"
            )
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``quantize`` to the app."""
    app.command("quantize")(quantize_command)
