"""``cxr-edge infer``: classify X-rays, write JSON reports, overlays and maps.

Option parsing, one library call per image (``cxr_edge.outputs.infer_to_files``) and printing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxr_edge.commands.common import EXIT_BAD_INPUT, EXIT_PARTIAL, one_line_errors, print_error
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.prediction import Prediction


def parse_findings(text: str | None, metadata: ModelMetadata) -> tuple[str, ...] | None:
    """``"cardiomegaly,Edema"`` -> the model's exact labels; CxrEdgeError for unknown names."""
    if text is None:
        return None
    try:
        chosen = tuple(metadata.labels[metadata.label_index(n.strip())] for n in text.split(",") if n.strip())
    except CxrEdgeError as exc:
        raise CxrEdgeError(None, f"--findings: {exc.problem}") from None
    if not chosen:
        raise CxrEdgeError(None, "--findings: give at least one finding name")
    return chosen


def findings_table(prediction: Prediction, shown: tuple[str, ...]) -> Table:
    """A rich table of all findings; rows with an overlay are marked."""
    from rich.markup import escape
    from rich.table import Table

    title = escape(f"{prediction.image or 'image'}  (S={prediction.steps}, {prediction.backend})")
    table = Table(title=title, title_justify="left")
    table.add_column("finding")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("result")
    for f in prediction.findings:
        result = "-" if f.positive is None else ("POSITIVE" if f.positive else "negative")
        style = "bold red" if f.positive else ("bold" if f.label in shown else None)
        thr = "-" if f.threshold is None else f"{f.threshold:.3f}"
        mark = " *" if f.label in shown else ""
        table.add_row(
            escape(f.label) + mark, f"{f.probability:.3f}", f"{f.logit:+.3f}", thr, result, style=style
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``infer`` to the app."""

    @app.command("infer")
    def infer(
        inputs: Annotated[
            list[Path],
            typer.Argument(
                metavar="IMAGE_OR_DIR...",
                help="PNG/JPEG/DICOM files, or folders of them (searched recursively).",
            ),
        ],
        overlay: Annotated[
            bool, typer.Option("--overlay", help="Write one overlay PNG per reported finding.")
        ] = False,
        steps: Annotated[
            int, typer.Option("--steps", "-s", help="Shifts per patch side S (power of two, 1..64).")
        ] = 8,
        map_kind: Annotated[
            str, typer.Option("--map", help="Map drawn in overlays: raw or scaled.")
        ] = "scaled",
        findings: Annotated[
            str | None,
            typer.Option(
                "--findings",
                help="Comma-separated findings to overlay (default: positives by the model's thresholds, "
                "or the top 3 by probability when it has none).",
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Output folder for <stem>.json, overlays and maps.")
        ] = Path("out"),
        as_json: Annotated[
            bool,
            typer.Option("--json", help="Print a JSON array of the reports on stdout (and nothing else)."),
        ] = False,
        save_maps: Annotated[
            bool,
            typer.Option(
                "--save-maps", help="Write <stem>.maps.npz: float32 logits (C,), raw and scaled (C, N, N)."
            ),
        ] = False,
        model: Annotated[
            Path | None,
            typer.Option(
                "--model",
                help="ONNX model (fp32, fp16 or INT8 Q/DQ) or TensorRT engine .plan (default: the bundled demo model).",
            ),
        ] = None,
        threads: Annotated[
            int | None, typer.Option("--threads", min=1, help="CPU threads (default: all).")
        ] = None,
        allow_non_chest: Annotated[
            bool,
            typer.Option(
                "--allow-non-chest",
                help="Process files whose header says they are not a frontal chest X-ray.",
            ),
        ] = False,
        dicom_out: Annotated[
            bool,
            typer.Option(
                "--dicom-out",
                help="DICOM inputs: also write OUT/<stem>.<finding>.sc.dcm (Secondary Capture of each overlay) "
                "and OUT/<stem>.sr.dcm (Structured Report of all findings), filed in the source's study.",
            ),
        ] = False,
    ) -> None:
        """Classify chest X-rays and explain each finding with a shift-averaged patch saliency map.

        Prints a findings table per image and writes OUT/<stem>.json. Exit code 0: all images
        done; 1: some failed (each named on stderr); 2: all failed or bad usage.
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cxr_edge.io.files import expand_inputs
        from cxr_edge.outputs import OutputOptions, infer_to_files, output_stems
        from cxr_edge.pipeline import CxrEdge
        from cxr_edge.postprocess import check_map_kind
        from cxr_edge.report import report_json
        from cxr_edge.tile import check_steps

        with one_line_errors():
            check_steps(steps)
            check_map_kind(map_kind, "--map")  # usage errors before the model is loaded
            edge = CxrEdge.load(model, threads=threads)
            options = OutputOptions(
                out, overlay, map_kind, parse_findings(findings, edge.metadata), save_maps, dicom=dicom_out
            )
        files = expand_inputs(inputs)
        # With --json, stdout carries the JSON only: tables and progress go to stderr.
        console: Console = Console(stderr=as_json)
        reports: list[dict[str, Any]] = []
        failed = 0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # one_line_errors here only turns Ctrl-C into "error: interrupted" and exit 130.
        with one_line_errors(), Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("infer", total=len(files))
            for path, stem in zip(files, output_stems(files)):
                progress.update(task, description=path.name)
                try:
                    result = infer_to_files(edge, path, stem, options, steps, allow_non_chest)
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                    if isinstance(exc, CxrEdgeError):
                        message = str(exc) if exc.path else f"{path}: {exc.problem}"
                    else:
                        message = f"{path}: {type(exc).__name__}: {exc}"
                    message = " ".join(message.split("\n"))  # one line, whatever the source
                    failed += 1
                    reports.append({"image": str(path), "error": message})
                    print_error(message)
                else:
                    reports.append(result.report)
                    progress.console.print(findings_table(result.prediction, result.shown))
                    warning = result.prediction.info.get("scope_warning")
                    if warning:
                        typer.echo(f"warning: {path}: {warning}", err=True)
                progress.advance(task)
        if as_json:
            typer.echo(report_json(reports), nl=False)
        if failed:
            if failed == len(files):
                print_error(f"all {len(files)} input(s) failed")
                raise typer.Exit(EXIT_BAD_INPUT)
            print_error(f"{failed} of {len(files)} input(s) failed")
            raise typer.Exit(EXIT_PARTIAL)
