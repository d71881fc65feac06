"""``cxr-edge infer``: classify X-rays, write JSON reports, overlays and maps. A thin layer
over ``cxr_edge.pipeline.CxrEdge``; every file is written atomically."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxr_edge.commands.common import EXIT_BAD_INPUT, EXIT_PARTIAL, one_line_errors, print_error
from cxr_edge.errors import CxrEdgeError

if TYPE_CHECKING:
    from rich.console import Console

    from cxr_edge.pipeline import CxrEdge, Prediction

#: File suffixes a folder argument expands to (DICOM files without a suffix are skipped).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def label_slug(label: str) -> str:
    """File-name-safe form of a label: "Pleural Effusion" -> "pleural-effusion"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "finding"


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their image files.

    Missing paths and folders without images are kept as-is, so they fail as one bad input.
    """
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            files.extend(found or [item])
        else:
            files.append(item)
    return files


def output_stems(files: list[Path]) -> list[str]:
    """Output name stem per input: the file's stem, made unique within one call (``chest``,
    ``chest-2``, ...) so same-named files from different folders do not overwrite each other."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems


def parse_findings(text: str | None, labels: tuple[str, ...]) -> list[str] | None:
    """``"cardiomegaly,Edema"`` -> the model's exact labels; CxrEdgeError for unknown names."""
    if text is None:
        return None
    by_fold = {label.casefold(): label for label in labels}
    chosen = []
    for name in (s.strip() for s in text.split(",")):
        if not name:
            continue
        if name.casefold() not in by_fold:
            raise CxrEdgeError(
                None, f"--findings: unknown finding {name!r}; the model has: {', '.join(labels)}"
            )
        chosen.append(by_fold[name.casefold()])
    if not chosen:
        raise CxrEdgeError(None, "--findings: give at least one finding name")
    return chosen


def maps_npz_bytes(prediction: Prediction) -> bytes:
    """``logits`` (C,), ``probabilities`` (C,), ``raw`` / ``scaled`` (C, N, N) float32 in logit
    units (model frame), ``labels`` (C,) str, ``steps``."""
    import numpy as np

    m = prediction.maps
    buf = io.BytesIO()
    np.savez(
        buf,
        logits=np.asarray(m.logits, dtype=np.float32),
        probabilities=np.asarray(m.probabilities, dtype=np.float32),
        raw=np.asarray(m.raw, dtype=np.float32),
        scaled=np.asarray(m.scaled, dtype=np.float32),
        labels=np.array(prediction.labels),
        steps=np.int64(prediction.steps),
    )
    return buf.getvalue()


def findings_table(prediction: Prediction, shown: list[str]) -> Any:
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


def process_one(
    edge: CxrEdge,
    path: Path,
    stem: str,
    out: Path,
    steps: int,
    map_kind: str,
    findings: list[str] | None,
    overlay: bool,
    save_maps: bool,
    allow_non_chest: bool,
    dicom_out: bool = False,
) -> tuple[Prediction, dict[str, Any], list[str]]:
    """Run one image and write its files; everything is rendered before anything is written,
    and each file is written atomically, so a failure leaves no partial output. ``dicom_out``:
    also file the overlays as Secondary Captures and the findings as an SR (DICOM inputs only)."""
    from cxr_edge.atomic import write_bytes_atomic, write_text_atomic
    from cxr_edge.render import encode_png
    from cxr_edge.report import report_json

    pred = edge.predict(path, steps=steps, allow_non_chest=allow_non_chest)
    if dicom_out and pred.source != "dicom":
        raise CxrEdgeError(path, "--dicom-out needs a DICOM input (results are filed in its study)")
    shown = findings if findings is not None else pred.reported_labels()
    outputs: list[tuple[Path, bytes]] = []
    t0 = time.perf_counter()
    overlays = {label: pred.overlay(label, map=map_kind) for label in shown} if overlay or dicom_out else {}
    if overlay:
        for label, rgb in overlays.items():
            outputs.append((out / f"{stem}.{label_slug(label)}.png", encode_png(rgb)))
    render_ms = (time.perf_counter() - t0) * 1e3
    if dicom_out:
        from cxr_edge.dicom_results import build_dicom_results, read_source
        from cxr_edge.dicom_results.results import result_file_name

        for result in build_dicom_results(pred, read_source(path), overlays, map_kind):
            outputs.append((out / result_file_name(stem, result), result.data))
    if save_maps:
        outputs.append((out / f"{stem}.maps.npz", maps_npz_bytes(pred)))
    report = pred.to_report(map=map_kind)
    report["timings_ms"]["render"] = round(render_ms, 3)
    report["overlays"] = [p.name for p, _ in outputs if p.suffix == ".png"]
    if dicom_out:
        report["dicom"] = [p.name for p, _ in outputs if p.suffix == ".dcm"]
    for target, data in outputs:
        write_bytes_atomic(target, data)
    write_text_atomic(out / f"{stem}.json", report_json(report))
    return pred, report, shown


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

        from cxr_edge.pipeline import MAP_KINDS, CxrEdge, check_steps
        from cxr_edge.report import report_json

        with one_line_errors():
            check_steps(steps)
            if map_kind not in MAP_KINDS:
                raise CxrEdgeError(None, f"--map must be one of {', '.join(MAP_KINDS)}, got {map_kind!r}")
            edge = CxrEdge.load(model, threads=threads)
            chosen = parse_findings(findings, edge.metadata.labels)
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
                    pred, report, shown = process_one(
                        edge, path, stem, out, steps, map_kind, chosen, overlay, save_maps, allow_non_chest,
                        dicom_out,
                    )
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
                    reports.append(report)
                    progress.console.print(findings_table(pred, shown))
                    if pred.info.get("scope_warning"):
                        typer.echo(f"warning: {path}: {pred.info['scope_warning']}", err=True)
                progress.advance(task)
        if as_json:
            typer.echo(report_json(reports), nl=False)
        if failed:
            if failed == len(files):
                print_error(f"all {len(files)} input(s) failed")
                raise typer.Exit(EXIT_BAD_INPUT)
            print_error(f"{failed} of {len(files)} input(s) failed")
            raise typer.Exit(EXIT_PARTIAL)
