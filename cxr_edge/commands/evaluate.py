"""``cxr-edge eval``: classification and localization metrics on phantoms or a labelled folder.

A thin layer over ``cxr_edge.evaluate`` and ``cxr_edge.pipeline.CxrEdge``; the JSON report is
written atomically.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cxr_edge.commands.common import EXIT_BAD_INPUT, one_line_errors, print_error
from cxr_edge.errors import CxrEdgeError


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the report is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def run_eval(
    phantoms: int | None,
    seed: int,
    data: Path | None,
    model: Path | None,
    steps: int,
    map_kind: str,
    json_out: Path | None,
    threads: int | None,
    size: int,
    fraction: float,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate and return the report dict (also printed as a table and written to ``json_out``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from cxr_edge.atomic import write_text_atomic
    from cxr_edge.evaluate import evaluate_cases, folder_cases, phantom_cases
    from cxr_edge.pipeline import CxrEdge

    if (phantoms is None) == (data is None):
        raise CxrEdgeError(None, "give exactly one dataset: --phantoms N or --data DIR")
    if phantoms is not None and phantoms < 1:
        raise CxrEdgeError(None, f"--phantoms must be >= 1, got {phantoms}")
    if map_kind not in ("raw", "scaled", "both"):
        raise CxrEdgeError(None, f"--map must be raw, scaled or both, got {map_kind!r}")
    if not 0.0 < fraction <= 1.0:
        raise CxrEdgeError(None, f"--iou-fraction must be in (0, 1], got {fraction}")
    kinds = ("raw", "scaled") if map_kind == "both" else (map_kind,)

    engine = CxrEdge.load(model, threads=threads)
    md = engine.metadata
    if phantoms is not None:
        from cxr_edge.phantoms import PHANTOM_LABELS

        if not set(PHANTOM_LABELS) & set(md.labels):
            raise CxrEdgeError(model, "the model predicts none of the phantom findings")
        cases: Any = phantom_cases(phantoms, seed=seed, size=size)
        total = phantoms
        dataset = {"kind": "phantoms", "count": phantoms, "seeds": [seed, seed + phantoms - 1], "size": size}
    else:
        cases = folder_cases(data, md.labels)  # type: ignore[arg-type]
        if not cases:
            raise CxrEdgeError(data, "no usable images in the dataset")
        total = len(cases)
        dataset = {"kind": "folder", "path": str(data), "count": total}

    console = Console(stderr=True, quiet=quiet)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]eval[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=total)
        results = evaluate_cases(
            cases,
            lambda image: engine.predict(image, steps=steps),
            md.labels,
            md.thresholds,
            md.image_size,
            map_kinds=kinds,
            fraction=fraction,
            on_case=lambda case: progress.update(task, advance=1, description=case.name),
        )
    seconds = time.perf_counter() - t0
    scored = [r for r in results if r.n]

    table = Table(title=f"cxr-edge eval: {total} images, S={steps}, {seconds:.0f} s", title_justify="left")
    for col in ("finding", "n", "pos", "AUROC", "thr", "sens", "spec", "acc"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for kind in kinds:
        table.add_column(f"hit {kind}", justify="right")
        table.add_column(f"mIoU {kind}", justify="right")
    for r in scored:
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
        for kind in kinds:
            t = r.localization[kind]
            row += [f"{_fmt(t.hit_rate)} ({t.hits}/{t.pointed})" if t.pointed else "-", _fmt(t.miou)]
        table.add_row(*row)
    out = Console(quiet=quiet)
    if not out.is_terminal:  # piped / captured: do not squeeze the table into 80 columns
        out = Console(quiet=quiet, width=160)
    out.print(table)

    report = {
        "model": engine.model_info,
        "dataset": dataset,
        "steps": steps,
        "maps": list(kinds),
        "iou_threshold_fraction": fraction,
        "thresholds_from": "model metadata" if md.thresholds is not None else "default 0.5",
        "seconds": seconds,
        "classes": [r.to_dict() for r in scored],
    }
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(_json_safe(report), indent=1) + "\n")
    return report


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
        with one_line_errors():
            try:
                run_eval(phantoms, seed, data, model, steps, map_kind, json_out, threads, size, fraction)
            except ValueError as exc:  # e.g. an invalid --steps from the pipeline's check
                print_error(str(exc))
                raise typer.Exit(EXIT_BAD_INPUT) from None
