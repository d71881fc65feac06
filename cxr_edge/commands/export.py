"""``cxr-edge export``: checkpoint (official or cxr-edge format) -> simplified ONNX with metadata,
parity-checked against PyTorch. Exit 2 on bad input, 3 when the parity gate fails; no partial file."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from cxr_edge.commands.common import EXIT_GATE_FAILED, one_line_errors, print_error
from cxr_edge.compare import EXPORT as PARITY_TOLERANCE


def export_command(
    weights: Annotated[
        Path, typer.Option("--weights", "-w", help="Checkpoint: official state dict or cxr-edge .pt.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output ONNX file (written atomically).")],
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset (>= 17).")] = 17,
    parity: Annotated[bool, typer.Option(help="Check ONNX Runtime against PyTorch (recommended).")] = True,
    atol: Annotated[
        float, typer.Option(help="Parity: absolute logit tolerance (|onnx - torch| <= atol + rtol*|torch|).")
    ] = PARITY_TOLERANCE.atol,
    rtol: Annotated[float, typer.Option(help="Parity: relative logit tolerance.")] = PARITY_TOLERANCE.rtol,
    threads: Annotated[int | None, typer.Option(help="CPU threads for PyTorch (default: all).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the summary line.")] = False,
) -> None:
    """Export the MedicalPatchNet patch backbone to ONNX: input 'patches' (N,1,P,P) float32 in [0,1],
    output 'logits' (N,C); simplified (onnxsim), checked (onnx.checker), with labels, geometry,
    variant, checkpoint sha256 and package version in the ONNX metadata."""
    from rich.console import Console

    from cxr_edge.compare import Tolerance
    from cxr_edge.export import ParityError, export_onnx

    console = Console(stderr=True)
    start = time.perf_counter()
    with one_line_errors():
        import torch

        from cxr_edge.model.checkpoint import read_checkpoint

        if threads:
            torch.set_num_threads(threads)
        with console.status("loading checkpoint ...") if not quiet else contextlib.nullcontext():
            checkpoint = read_checkpoint(weights)
        if not quiet:
            console.print(
                f"[green]done[/] loaded {checkpoint.format} checkpoint: variant '{checkpoint.variant.name}', "
                f"{checkpoint.metadata.num_classes} classes ({time.perf_counter() - start:.1f} s)"
            )
        metadata = checkpoint.metadata.with_(checkpoint_sha256=checkpoint.sha256)
        try:
            report = export_onnx(
                checkpoint.model,
                out,
                metadata,
                parity=parity,
                opset=opset,
                tolerance=Tolerance(atol=atol, rtol=rtol),
                console=None if quiet else console,
            )
        except ParityError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_GATE_FAILED) from None
    total = time.perf_counter() - start
    parity_text = (
        "parity skipped"
        if report.parity is None
        else "parity max |diff| "
        + ", ".join(f"N={n}: {d:.2e}" for n, d in report.parity_max_abs_diff.items())
        + f"; {report.parity.summary()}"
    )
    typer.echo(
        f"{out}: {report.onnx_bytes / 1e6:.1f} MB, {report.nodes} nodes, opset {report.opset}, "
        f"{parity_text}; {total:.1f} s"
    )


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
    app.command("export")(export_command)
