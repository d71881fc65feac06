"""``cxr-edge infer``: classify X-rays, write JSON reports, overlays and maps.

Option parsing, one library call for the batch (``cxr_edge.batch.run_batch``, which owns the
output folder, the per-image result sets and the index) and printing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr_edge.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_PARTIAL,
    one_line_errors,
    print_error,
    print_warning,
    printable,
)
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from cxr_edge.explain.explanations import Explanations
    from cxr_edge.metadata import ModelMetadata
    from cxr_edge.outputs import ImageResult
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


def findings_table(
    prediction: Prediction,
    shown: tuple[str, ...],
    map_kind: str = "scaled",
    of_steps: int | None = None,
    explanations: Explanations | None = None,
) -> Table:
    """A rich table of all findings; rows with an overlay are marked. The title names the image
    and the model (file, variant, short sha256); the caption carries the NOT FOR CLINICAL USE
    banner when the model's intended use is not clinical, as the overlays do, then the rationale
    of each shown finding and any shortcut warning (``cxr_edge.explain``). ``decisive``: how many
    patches reverse the call. of_steps: the final S of a progressive run. explanations: the
    prediction's ``explain.explanations.explain`` if already computed (an ``ImageResult``'s)."""
    from rich.markup import escape
    from rich.table import Table

    from cxr_edge.explain.explanations import explained
    from cxr_edge.render import clinical_use_banner, model_identity

    ex = explained(prediction, shown, map_kind, explanations)

    level = f"S={prediction.steps}" + (f" of {of_steps}" if of_steps is not None else "")
    head = printable(f"{prediction.image or 'image'}  ({level}, {prediction.backend})")
    title = escape(head) + "\n" + escape(printable(model_identity(prediction)))
    banner = clinical_use_banner(prediction)
    caption = [f"[bold red]{escape(banner)}[/]"] if banner else []
    caption += [escape(ex.rationales[label].text) for label in shown]
    caption += [f"[bold yellow]warning:[/] {escape(w.message)}" for w in ex.shortcut_warnings(shown)]
    table = Table(
        title=title, title_justify="left", caption="\n".join(caption) or None, caption_justify="left"
    )
    table.add_column("finding")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("result")
    table.add_column("decisive", justify="right")
    for f in prediction.findings:
        result = "-" if f.positive is None else ("POSITIVE" if f.positive else "negative")
        style = "bold red" if f.positive else ("bold" if f.label in shown else None)
        thr = "-" if f.threshold is None else f"{f.threshold:.3f}"
        mark = " *" if f.label in shown else ""
        decisive = ex.decisive_of(f.label)
        count = "none" if decisive.count is None else f"{decisive.count}/{decisive.grid_patches}"
        table.add_row(
            escape(f.label) + mark, f"{f.probability:.3f}", f"{f.logit:+.3f}", thr, result, count, style=style
        )
    return table


class LevelDisplay:
    """The findings table of a progressive run, redrawn in place per level on a terminal
    (elsewhere, e.g. a log file, nothing until the image is done)."""

    def __init__(self, console: Console, map_kind: str, steps: int) -> None:
        self.console, self.map_kind, self.steps = console, map_kind, steps
        self._live: Live | None = None

    def level(self, result: ImageResult) -> None:
        if not self.console.is_terminal:
            return
        from rich.live import Live

        table = findings_table(
            result.prediction, result.shown, self.map_kind, self.steps, result.explanations
        )
        if self._live is None:
            self._live = Live(table, console=self.console, auto_refresh=False)
            self._live.start()
        self._live.update(table, refresh=True)

    def done(self) -> bool:
        """End the image's live table; True if one was shown (then the final table is on screen)."""
        live, self._live = self._live, None
        if live is None:
            return False
        live.stop()
        return True


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
            int | None,
            typer.Option("--threads", min=1, help="CPU threads, 1 .. the cores available (default: all)."),
        ] = None,
        allow_non_chest: Annotated[
            bool,
            typer.Option(
                "--allow-non-chest",
                help="Process files that look like no frontal chest X-ray: a DICOM header saying so, "
                "or PNG/JPEG pixels with a CT slice's tones.",
            ),
        ] = False,
        center: Annotated[
            str,
            typer.Option(
                "--center",
                help="Neutral (white) point of the overlay colours: 'threshold' (the model's decision "
                "threshold: red pushes toward calling the finding) or 'zero' (logit 0, the paper's display).",
            ),
        ] = "threshold",
        max_megapixels: Annotated[
            float,
            typer.Option(
                "--max-megapixels",
                help="Input budget: refuse files whose header declares more pixels (and files over "
                "4 bytes per budgeted pixel), before decoding.",
            ),
        ] = 100.0,
        server: Annotated[
            str | None,
            typer.Option(
                "--server",
                metavar="URL",
                help="Run the model on a Triton server (grpc://HOST:8001 or http://HOST:8000) holding a "
                "repository from 'cxr-edge export-triton'; files are read here, only pixels are sent.",
            ),
        ] = None,
        progressive: Annotated[
            bool,
            typer.Option(
                "--progressive",
                help="Refine the maps at S = 1, 2, 4, ... up to --steps, redrawing the table and rewriting "
                "the result files after each level (every shifted copy still runs once; S=1 comes first).",
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

        Prints a findings table per image, writes OUT/<stem>.json (plus overlays and maps) per
        image, all or nothing, and OUT/index.csv listing every input with its status and files.
        Exit code 0: all images done; 1: some failed (each named on stderr); 2: all failed, the
        model failed, or bad usage.
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cxr_edge.batch import BatchItem, check_output_directory, run_batch
        from cxr_edge.io.budget import InputBudget
        from cxr_edge.outputs import OutputOptions
        from cxr_edge.pipeline import CxrEdge, Predictor
        from cxr_edge.postprocess import check_map_kind
        from cxr_edge.render import check_center
        from cxr_edge.report import report_json
        from cxr_edge.tile import check_steps

        with one_line_errors():
            check_steps(steps)
            check_map_kind(map_kind, "--map")  # usage errors before the model is loaded
            check_center(center, "--center")
            budget = InputBudget.megapixels(max_megapixels)
            check_output_directory(out, inputs)  # a bad --out fails before any compute
            edge: Predictor
            if server is not None:
                if model is not None or threads is not None:
                    raise CxrEdgeError(None, "--server runs the server's model: drop --model and --threads")
                if progressive:
                    raise CxrEdgeError(None, "--progressive needs the model in this process: drop --server")
                from cxr_edge.triton.client import TritonCxrEdge

                edge = TritonCxrEdge(server)
            else:
                edge = CxrEdge.load(model, threads=threads)
            edge.input_budget = budget
            options = OutputOptions(
                out, overlay, map_kind, parse_findings(findings, edge.metadata), save_maps, center, dicom_out
            )
        # With --json, stdout carries the JSON only: tables and progress go to stderr.
        console: Console = Console(stderr=as_json)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        levels = LevelDisplay(console, map_kind, steps)
        # A progressive run redraws its table live instead of showing the progress bar.
        bar = Progress(*columns, console=console, transient=True, disable=progressive)
        # Here one_line_errors catches a busy output folder and Ctrl-C ("error: interrupted", 130).
        with one_line_errors(), bar as progress:
            task = progress.add_task("infer", total=None)

            def started(files: object) -> None:
                progress.update(task, total=len(files))  # type: ignore[arg-type]

            def done(item: BatchItem) -> None:
                shown_live = levels.done()
                if item.result is None:
                    print_error(item.error or f"{item.input}: failed")
                else:
                    if not shown_live:
                        of_steps = steps if progressive else None
                        result = item.result
                        table = findings_table(
                            result.prediction, result.shown, map_kind, of_steps, result.explanations
                        )
                        progress.console.print(table)
                    warning = item.result.prediction.info.get("scope_warning")
                    if warning:
                        print_warning(f"{item.input}: {warning}")
                progress.advance(task)

            summary = run_batch(
                edge,
                inputs,
                options,
                steps,
                allow_non_chest,
                on_item=done,
                on_start=started,
                progressive=progressive,
                on_level=levels.level,
            )
        if as_json:
            reports = [
                item.result.report
                if item.result
                else {"image": str(item.input), "status": item.status, "error": item.error}
                for item in summary.items
            ]
            typer.echo(report_json(reports), nl=False)
        typer.echo(printable(f"infer: {summary.line()}"), err=True)
        failed = summary.count("failed") + summary.count("not run")
        if summary.stopped:  # the item's error line says why; the summary line says what was not run
            raise typer.Exit(EXIT_BAD_INPUT)
        if failed:
            raise typer.Exit(EXIT_BAD_INPUT if failed == len(summary.items) else EXIT_PARTIAL)
