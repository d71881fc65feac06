"""``cxr-edge export-triton``: write a Triton Inference Server model repository for a model
(``cxr_edge.triton.repository``). Exit 2 on bad input; the repository appears whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_edge.commands.common import one_line_errors
from cxr_edge.triton.repository import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PATCHES,
    export_repository,
)


def export_triton_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Repository folder to write (absent or empty).")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="ONNX model, or TensorRT plan with its manifest (default: the bundled demo model).",
        ),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="whole: one Python model runs everything; split: 'patchnet' serves the patch network "
            "with dynamic batching over patches, 'cxr_edge' tiles, calls it (BLS) and postprocesses.",
        ),
    ] = "whole",
    instances: Annotated[
        int, typer.Option("--instances", min=1, help="Instances (processes) of the cxr_edge model.")
    ] = DEFAULT_INSTANCES,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Images per dynamic batch of the cxr_edge model.")
    ] = DEFAULT_MAX_BATCH,
    max_patches: Annotated[
        int,
        typer.Option(
            "--max-patches",
            help="split: patches per dynamic batch of patchnet (at most a plan's profile maximum).",
        ),
    ] = DEFAULT_MAX_PATCHES,
    patchnet: Annotated[
        str,
        typer.Option(
            "--patchnet",
            help="split: where patchnet runs: native (Triton's onnxruntime_onnx / tensorrt_plan backend) "
            "or python (cxr-edge's backend in a Python model, for servers with only the Python backend).",
        ),
    ] = "native",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write a Triton model repository: config.pbtxt files (model metadata in their parameters, from
    the ONNX metadata), the model.py files, and the network file. Serve it with
    'tritonserver --model-repository OUT' (the server's Python needs cxr-edge installed); query it
    with 'cxr-edge infer IMAGE --server grpc://HOST:8001'."""
    from cxr_edge.assets import default_model_path

    with one_line_errors():
        source = model if model is not None else default_model_path()
        configs = export_repository(
            source,
            out,
            layout=layout,
            instances=instances,
            max_batch=max_batch,
            max_patches=max_patches,
            patchnet=patchnet,
            force=force,
        )
    typer.echo(f"{out}: {layout} layout for {source} ({', '.join(str(c) for c in configs)})")


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
    app.command("export-triton")(export_triton_command)
