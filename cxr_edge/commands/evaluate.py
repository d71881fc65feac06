"""``cxr-edge eval``: classification, calibration and localization figures on phantoms or a
labelled folder, under the named localization protocols, with bootstrap intervals.

Option parsing, one library call (``cxr_edge.evaluate.loop.evaluate_model``), printing; the
JSON report is the library's (``EvalReport.to_json``), written atomically, and so are the plots
(``cxr_edge.evaluate.plots.write_plots``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr_edge.commands.common import one_line_errors

if TYPE_CHECKING:
    from rich.table import Table

    from cxr_edge.evaluate.bootstrap import Summary
    from cxr_edge.evaluate.loop import EvalReport, ProtocolResult

#: Column titles of the localization figures.
METRIC_TITLES = {
    "hit_rate": "hit",
    "miou_tp_only": "mIoU TP",
    "miou_tp_fp_fn": "mIoU TP,FP,FN",
    "miou": "mIoU",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_interval(value: float, lower: float, upper: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isnan(lower) or math.isnan(upper):
        return _fmt(value)
    return f"{value:.3f} [{lower:.2f}, {upper:.2f}]"


def results_table(report: EvalReport, count: int) -> Table:
    """Classification per class: AUROC with its bootstrap interval, counts at the thresholds, ECE."""
    from rich.table import Table

    title = f"cxr-edge eval: {count} images, S={report.steps}, {report.seconds:.0f} s (classification)"
    table = Table(title=title, title_justify="left")
    for col in ("finding", "n", "pos", "AUROC [95% CI]", "thr", "sens", "spec", "acc", "ECE"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for r in report.scored:
        _, lower, upper = r.auroc_interval
        table.add_row(
            r.label,
            str(r.n),
            str(r.positives),
            _with_interval(r.auroc, lower, upper),
            _fmt(r.threshold, 2),
            _fmt(r.counts.sensitivity),
            _fmt(r.counts.specificity),
            _fmt(r.counts.accuracy),
            _fmt(r.ece),
        )
    return table


def localization_table(result: ProtocolResult, scored: list[str]) -> Table:
    """One protocol's figures: per class and their mean, for each map kind, with intervals."""
    from rich.table import Table

    table = Table(title=f"localization, protocol {result.protocol}", title_justify="left")
    table.add_column("finding", justify="left")
    kinds = list(result.figures)
    for kind in kinds:
        for metric in result.metrics:
            table.add_column(f"{METRIC_TITLES.get(metric, metric)} {kind}", justify="right")

    def cells(pick: int | None) -> list[str]:
        out = []
        for kind in kinds:
            for metric in result.metrics:
                per, mean = result.figures[kind][metric]
                s: Summary = mean if pick is None else per[pick]
                out.append(_with_interval(s.value, s.lower, s.upper))
        return out

    for c, label in enumerate(result.labels):
        if label in scored:
            table.add_row(label, *cells(c))
    table.add_row("mean", *cells(None))
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
                help="Folder with labels.csv (+ masks/ or boxes.csv), or the shared set with MANIFEST.csv "
                "(finding names mapped by evaluate.datasets.DATASET_TO_CHEXPERT).",
            ),
        ] = None,
        model: Annotated[
            Path | None,
            typer.Option("--model", help="ONNX model or TensorRT engine (default: bundled demo)."),
        ] = None,
        steps: Annotated[
            int, typer.Option("--steps", "-s", help="Shifts per patch side S for the maps.")
        ] = 8,
        protocol: Annotated[
            str,
            typer.Option(
                "--protocol",
                help="Localization protocol: chexlocalize (CheXlocalize v1.0.0's official figures), "
                "medicalpatchnet (the MedicalPatchNet paper's), cxr-edge (cxr-edge's model-frame "
                "check), a comma list, or all (one pass for all).",
            ),
        ] = "chexlocalize",
        map_kind: Annotated[
            str,
            typer.Option(
                "--map",
                help="Maps to score: both (raw, scaled), all, or a comma list of raw, scaled, "
                "scaled-published (the public code's batched scaled map, for the paper's figures).",
            ),
        ] = "both",
        iou_threshold: Annotated[
            str | None,
            typer.Option(
                "--iou-threshold",
                help="mIoU binarisation for chexlocalize/medicalpatchnet: otsu, tuned (needs --tune-on) "
                "or a number in [0, 1) on the min-max normalised map. Default: each protocol's own "
                "(chexlocalize otsu, medicalpatchnet tuned).",
            ),
        ] = None,
        tune_on: Annotated[
            str | None,
            typer.Option(
                "--tune-on",
                help="Split to tune mIoU thresholds on: phantoms:N[:SEED] (default seed 100000, the "
                "demo model's validation phantoms) or a dataset folder.",
            ),
        ] = None,
        bootstrap: Annotated[
            int,
            typer.Option(
                "--bootstrap", help="Bootstrap replicates for the 95% intervals (0: none, else >= 40)."
            ),
        ] = 1000,
        bootstrap_seed: Annotated[
            int, typer.Option("--bootstrap-seed", help="Seed of the bootstrap draws (CheXlocalize: 0).")
        ] = 0,
        plots: Annotated[
            Path | None,
            typer.Option("--plots", help="Write per-class ROC curves and reliability diagrams (PNG) here."),
        ] = None,
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
                "--iou-fraction",
                help="cxr-edge protocol: map region = pixels >= this fraction of the map maximum.",
            ),
        ] = 0.5,
    ) -> None:
        """Per-class AUROC (with 95% bootstrap intervals), sensitivity/specificity/accuracy at
        the model's thresholds, expected calibration error, and hit rate and mIoU of the saliency
        maps under the chosen localization protocols."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from cxr_edge.atomic import write_text_atomic
        from cxr_edge.evaluate.datasets import open_dataset, open_split
        from cxr_edge.evaluate.loop import evaluate_model
        from cxr_edge.evaluate.maps import parse_map_kinds
        from cxr_edge.evaluate.plots import check_plots_available, write_plots
        from cxr_edge.evaluate.protocols import parse_protocols
        from cxr_edge.evaluate.protocols.base import parse_threshold_rule
        from cxr_edge.pipeline import CxrEdge
        from cxr_edge.tile import check_steps

        with one_line_errors():
            check_steps(steps)
            kinds = parse_map_kinds(map_kind)
            names = parse_protocols(protocol)
            rule = None if iou_threshold is None else parse_threshold_rule(iou_threshold)
            if plots is not None:
                check_plots_available(plots)
            edge = CxrEdge.load(model, threads=threads)
            labels = edge.metadata.labels
            dataset = open_dataset(labels, phantoms=phantoms, seed=seed, size=size, data=data)
            tuning = None if tune_on is None else open_split(tune_on, labels, size)
            columns = (
                TextColumn("[bold]{task.fields[stage]}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                tune_task = None
                if tuning is not None:
                    tune_task = progress.add_task("", total=tuning.count, stage="tune")
                task = progress.add_task("", total=dataset.count, stage="eval")

                def tuned_one(case: object) -> None:
                    if tune_task is not None:
                        progress.update(tune_task, advance=1, description=getattr(case, "name", ""))

                report = evaluate_model(
                    edge,
                    dataset,
                    steps,
                    protocols=names,
                    map_kinds=kinds,
                    threshold_rule=rule,
                    fraction=fraction,
                    tune_on=tuning,
                    replicates=bootstrap,
                    seed=bootstrap_seed,
                    on_case=lambda case: progress.update(task, advance=1, description=case.name),
                    on_tune_case=tuned_one,
                )
            if plots is not None:
                report.plots = [str(p) for p in write_plots(report, plots)]
            out = Console()
            if not out.is_terminal:  # piped / captured: do not squeeze the tables into 80 columns
                out = Console(width=200)
            out.print(results_table(report, dataset.count))
            scored = [r.label for r in report.scored]
            for result in report.localization:
                out.print(localization_table(result, scored))
                for line in result.description.get("deviations", []):
                    out.print(f"  {result.protocol}: {line}")
            if bootstrap:
                out.print(
                    f"[95% CI]: {bootstrap} bootstrap replicates over images (seed {bootstrap_seed}), "
                    "CheXlocalize's method; figures on all images."
                )
            if json_out is not None:
                write_text_atomic(json_out, report.to_json())
