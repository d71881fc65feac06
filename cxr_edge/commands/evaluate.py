"""``cxr-edge eval``: classification and localization metrics on phantoms or a labelled folder.

Option parsing, one library call (``cxr_edge.evaluate.loop.evaluate_model``) and printing; the
JSON report is the library's (``EvalReport.to_json``), written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr_edge.commands.common import one_line_errors

if TYPE_CHECKING:
    from rich.table import Table

    from cxr_edge.evaluate.loop import EvalReport


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def results_table(report: EvalReport, count: int) -> Table:
    """The per-class table printed by ``eval``."""
    from rich.table import Table

    title = f"cxr-edge eval: {count} images, S={report.steps}, {report.seconds:.0f} s"
    table = Table(title=title, title_justify="left")
    for col in ("finding", "n", "pos", "AUROC", "thr", "sens", "spec", "acc"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for kind in report.map_kinds:
        table.add_column(f"hit {kind}", justify="right")
        table.add_column(f"mIoU {kind}", justify="right")
    for r in report.scored:
        row = [
            r.label,
            str(r.n),
            str(r.positives),
            _fmt(r.auroc),
            _fmt(r.threshold, 2),
            _fmt(r.counts.sensitivity),
            _fmt(r.counts.specificity),
            _fmt(r.counts.accuracy),
        ]
        for kind in report.map_kinds:
            t = r.localization[kind]
            row += [f"{_fmt(t.hit_rate)} ({t.hits}/{t.pointed})" if t.pointed else "-", _fmt(t.miou)]
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the app."""

    @app.command("eval")
    def eval_command(
        phantoms: Annotated[
            int | None, typer.Option("--phantoms", help="Evaluate on N chest phantoms (seeds K..K+N-1).")
        ] = None,
        seed: Annotated[
            int,
            typer.Option(
                "--seed", help="First phantom seed (the demo model's held-out seeds start at 1000000)."
            ),
        ] = 1_000_000,
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Folder with labels.csv (+ masks/ or boxes.csv), or the shared set with MANIFEST.csv.",
            ),
        ] = None,
        model: Annotated[
            Path | None,
            typer.Option("--model", help="ONNX model or TensorRT engine (default: bundled demo)."),
        ] = None,
        steps: Annotated[
            int, typer.Option("--steps", "-s", help="Shifts per patch side S for the maps.")
        ] = 8,
        map_kind: Annotated[str, typer.Option("--map", help="Maps to score: raw, scaled or both.")] = "both",
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Write the full report as JSON here.")
        ] = None,
        threads: Annotated[
            int | None, typer.Option("--threads", help="CPU threads for ONNX Runtime.")
        ] = None,
        size: Annotated[int, typer.Option("--size", help="Phantom height in pixels.")] = 512,
        fraction: Annotated[
            float,
            typer.Option(
                "--iou-fraction", help="mIoU: map region = pixels >= this fraction of the map maximum."
            ),
        ] = 0.5,
    ) -> None:
        """Per-class AUROC, sensitivity/specificity/accuracy at the model's thresholds, and
        CheXlocalize-style hit rate and mIoU of the saliency maps."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from cxr_edge.atomic import write_text_atomic
        from cxr_edge.evaluate.datasets import open_dataset
        from cxr_edge.evaluate.loop import evaluate_model
        from cxr_edge.pipeline import CxrEdge
        from cxr_edge.postprocess import MAP_KINDS, check_map_kind
        from cxr_edge.tile import check_steps

        with one_line_errors():
            check_steps(steps)
            kinds = MAP_KINDS if map_kind == "both" else (check_map_kind(map_kind, "--map (or both)"),)
            edge = CxrEdge.load(model, threads=threads)
            dataset = open_dataset(edge.metadata.labels, phantoms=phantoms, seed=seed, size=size, data=data)
            columns = (
                TextColumn("[bold]eval[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("", total=dataset.count)
                report = evaluate_model(
                    edge,
                    dataset.cases,
                    dataset.description,
                    steps,
                    map_kinds=kinds,
                    fraction=fraction,
                    on_case=lambda case: progress.update(task, advance=1, description=case.name),
                )
            out = Console()
            if not out.is_terminal:  # piped / captured: do not squeeze the table into 80 columns
                out = Console(width=160)
            out.print(results_table(report, dataset.count))
            if json_out is not None:
                write_text_atomic(json_out, report.to_json())
