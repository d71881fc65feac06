"""The ``cxr-edge`` command. Each sub-command lives in ``cxr_edge/commands/<name>.py``.

Command modules import heavy dependencies (torch, onnxruntime, tensorrt) inside their
functions, so ``cxr-edge --help`` and CPU-only commands never need the GPU stack.
"""

from __future__ import annotations

import typer

from cxr_edge import __version__
from cxr_edge.commands import build_engine, evaluate, export, export_triton, infer, quantize, serve_dicom

app = typer.Typer(
    name="cxr-edge",
    help=(
        "Edge runtime for MedicalPatchNet chest X-ray classification with patch saliency maps.\n\n"
        "Typical use: 'cxr-edge infer chest.png --overlay' (CPU, bundled demo model)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxr-edge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Edge runtime for MedicalPatchNet."""


for _module in (infer, export, evaluate, quantize, build_engine, export_triton, serve_dicom):
    _module.register(app)
