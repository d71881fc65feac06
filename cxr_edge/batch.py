"""A batch of images into one output folder: ``cxr-edge infer``'s semantics as a library call.

``run_batch`` checks the output folder before any compute (``check_output_directory``), takes
the folder's lock, finishes or removes what an interrupted run left (``outputs.recover_directory``),
gives every input a unique stem (``outputs.output_stems``), predicts and writes one result set
per image (``outputs.infer_to_files``, all or nothing), and ends with ``OUT/index.csv``: one row
per input with its status (``ok``, ``failed``, ``not run``), stem, output files and error.

One bad image fails alone (its error is one line naming it); a model error
(``errors.ModelError``: non-finite outputs) stops the batch, since every image would fail;
Ctrl-C stops it too, after the index is written. Warnings raised while an image is processed
(numpy RuntimeWarnings) are errors of that image, never chatter on the terminal.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_edge.atomic import write_text_atomic
from cxr_edge.errors import CxrEdgeError, ModelError
from cxr_edge.io.files import expand_inputs
from cxr_edge.outputs import (
    ImageResult,
    OutputOptions,
    infer_progressive_to_files,
    infer_to_files,
    locked_directory,
    output_stems,
    recover_directory,
)

if TYPE_CHECKING:
    from cxr_edge.pipeline import CxrEdge, Predictor

INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("input", "status", "stem", "outputs", "error")
STATUSES = ("ok", "failed", "not run")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_directory(directory: Path, inputs: Sequence[Path]) -> Path:
    """Create ``directory`` if needed and refuse it (CxrEdgeError naming it) when it is not a
    writable folder, or when it is an input folder or lies inside one (a later run would read
    the results back as X-rays). Returns it. Cheap: call before loading the model."""
    real_out = Path(os.path.realpath(directory))
    for item in inputs:
        if item.is_dir() and _within(real_out, Path(os.path.realpath(item))):
            raise CxrEdgeError(
                directory,
                f"--out lies inside the input folder {item}: results would be read back as X-rays; "
                "choose a folder outside the inputs",
            )
    if directory.exists() and not directory.is_dir():
        raise CxrEdgeError(directory, "--out is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrEdgeError(
            directory, f"--out cannot be created ({exc.strerror or type(exc).__name__})"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CxrEdgeError(directory, "--out is not writable")
    index = directory / INDEX_NAME
    if index.exists():
        try:
            first = index.read_text().splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            first = []
        if first != [",".join(INDEX_COLUMNS)]:
            raise CxrEdgeError(index, "exists and is not a cxr-edge index; refusing to overwrite it")
    return directory


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: its status (one of ``STATUSES``), stem, result and error line."""

    input: Path
    stem: str
    status: str
    result: ImageResult | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchSummary:
    """What a batch did: every input's item, the index written, and why it stopped early."""

    items: tuple[BatchItem, ...]
    index: Path | None
    stopped: str | None = None

    def count(self, status: str) -> int:
        return sum(item.status == status for item in self.items)

    def line(self) -> str:
        """``4 input(s): 3 ok, 1 failed, 0 not run; index out/index.csv``, with ``(stopped at a
        model or service error)`` after the counts when a ModelError ended the batch early."""
        where = f"; index {self.index}" if self.index else ""
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES)
        stopped = " (stopped at a model or service error)" if self.stopped else ""
        return f"{len(self.items)} input(s): {counts}{stopped}{where}"


def _error_line(path: Path, exc: BaseException) -> str:
    """``<path>: <problem>`` on one line, whatever raised it."""
    if isinstance(exc, CxrEdgeError):
        message = str(exc) if exc.path else f"{path}: {exc.problem}"
    else:
        message = f"{path}: {type(exc).__name__}: {exc}"
    return " ".join(message.split())


def index_csv(items: Sequence[BatchItem]) -> str:
    """The ``index.csv`` text: INDEX_COLUMNS, one row per input, outputs ";"-separated names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for item in items:
        outputs = ";".join(p.name for p in item.result.files) if item.result else ""
        writer.writerow([os.fsdecode(item.input), item.status, item.stem, outputs, item.error or ""])
    return buf.getvalue()


def _unique(files: Sequence[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for path in files:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def _last_level(
    edge: CxrEdge,
    path: Path,
    stem: str,
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool,
    on_level: Callable[[ImageResult], None] | None,
) -> ImageResult:
    """One image's progressive result sets, level by level; the last (S = ``steps``)."""
    result: ImageResult | None = None
    for result in infer_progressive_to_files(edge, path, stem, options, steps, allow_non_chest):
        if on_level:
            on_level(result)
    assert result is not None  # every run has level S' = 1
    return result


def _in_process(edge: Predictor) -> CxrEdge:
    """``edge`` as the in-process ``CxrEdge`` a progressive run needs; CxrEdgeError otherwise."""
    from cxr_edge.pipeline import CxrEdge

    if not isinstance(edge, CxrEdge):
        raise CxrEdgeError(None, "progressive maps need the model in this process, not a server")
    return edge


def run_batch(
    edge: Predictor,
    inputs: Sequence[Path],
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool = False,
    on_item: Callable[[BatchItem], None] | None = None,
    on_start: Callable[[Sequence[Path]], None] | None = None,
    progressive: bool = False,
    on_level: Callable[[ImageResult], None] | None = None,
) -> BatchSummary:
    """Predict every image of ``inputs`` (files, or folders searched recursively) into
    ``options.directory`` (module docstring). ``on_start(files)`` is called once the inputs are
    expanded, ``on_item(item)`` after each image. Raises CxrEdgeError for a bad output folder
    (before any compute); KeyboardInterrupt after writing the index. ``progressive`` (an
    in-process ``CxrEdge`` only, else CxrEdgeError before anything is done): each image's result
    set is written at S = 1, 2, 4, ..., ``steps`` in turn (``outputs.infer_progressive_to_files``),
    ``on_level(result)`` after each."""
    progressive_edge = _in_process(edge) if progressive else None
    directory = check_output_directory(options.directory, inputs)
    files = _unique(expand_inputs(inputs))
    stems = output_stems(files, edge.metadata.labels)
    items: list[BatchItem] = []
    stopped: str | None = None
    with locked_directory(directory):
        recover_directory(directory)
        if on_start:
            on_start(files)
        try:
            for path, stem in zip(files, stems):
                try:
                    with warnings.catch_warnings():
                        # numpy's RuntimeWarnings (overflow, invalid value) are this image's error
                        warnings.simplefilter("error", RuntimeWarning)
                        if progressive_edge is not None:
                            result = _last_level(
                                progressive_edge, path, stem, options, steps, allow_non_chest, on_level
                            )
                        else:
                            result = infer_to_files(edge, path, stem, options, steps, allow_non_chest)
                except ModelError as exc:
                    stopped = _error_line(path, exc)
                    item = BatchItem(path, stem, "failed", error=stopped)
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                    item = BatchItem(path, stem, "failed", error=_error_line(path, exc))
                else:
                    item = BatchItem(path, stem, "ok", result=result)
                items.append(item)
                if on_item:
                    on_item(item)
                if stopped:
                    break
        finally:
            done = len(items)
            items.extend(BatchItem(p, s, "not run") for p, s in zip(files[done:], stems[done:]))
            index = directory / INDEX_NAME
            write_text_atomic(index, index_csv(items))
    return BatchSummary(tuple(items), index, stopped)
