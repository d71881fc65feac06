"""The result files of one image, defined and written in one place, and never clobbering.

For an image with output stem ``STEM`` in ``OutputOptions.directory``:

- ``STEM.json``: the report (``cxr_edge.report.build_report``) plus ``result_files``, the names
  of the other files of the set; written last: it is the set's commit marker;
- ``STEM.<finding-slug>.png``: one overlay per shown finding (``overlays``), e.g.
  ``chest.pleural-effusion.png`` (``cxr_edge.render.finding_overlay``: the X-ray with a banner
  strip above and a legend strip below, so taller than the X-ray);
- ``STEM.maps.npz`` (``maps``): ``logits``, ``probabilities`` (C,), ``raw``, ``scaled``
  (C, N, N) float32 in logit units (model frame), ``labels`` (C,) str, ``steps``;
- ``STEM.<finding-slug>.sc.dcm`` and ``STEM.sr.dcm`` (``dicom``, DICOM inputs only): a Secondary
  Capture of each shown finding's overlay and the Structured Report of all findings, filed in
  the source image's study (``cxr_edge.dicom_results``; docs/dicom.md).

All-or-nothing: everything is rendered in memory first; then a journal ``.STEM.pending``
(the names about to change) is written, the old ``STEM.json`` removed (the old set is no longer
committed), old files not in the new set removed, each new file written atomically
(``cxr_edge.atomic``) and ``STEM.json`` last; then the journal goes. A set whose JSON is missing
is incomplete: ``recover_directory`` (run under the folder's lock before a batch writes) removes
the files its journal names, and every stale ``.part`` file.

Never clobbering: a file is overwritten only if it belongs to the same stem's previous set
(listed in its JSON or journal); any other existing file in the way is an error. Stems are unique
per batch (``output_stems``: same names from different folders get a hash of their path) and
short enough for every name derived from them to fit the file system's 255 bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_edge.atomic import TEMP_OVERHEAD, is_temp_name, write_bytes_atomic, write_text_atomic
from cxr_edge.errors import CxrEdgeError
from cxr_edge.locking import exclusive_lock
from cxr_edge.postprocess import check_map_kind
from cxr_edge.prediction import Prediction

if TYPE_CHECKING:
    from cxr_edge.dicom_results import DicomResult
    from cxr_edge.explain.explanations import Explanations, ImageRegions
    from cxr_edge.io.budget import InputBudget
    from cxr_edge.pipeline import CxrEdge, Predictor

#: Longest file name most file systems take (ext4, XFS, APFS, NTFS: 255 bytes / UTF-16 units).
MAX_NAME_BYTES = 255
JOURNAL_SUFFIX = ".pending"
LOCK_NAME = ".cxr-edge.lock"
_HASH_CHARS = 8


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image, and where.

    directory: output folder; overlays: one PNG per shown finding; map_kind: the map drawn
    and summarised in the report ("raw" | "scaled"); findings: labels to show (None: the
    prediction's ``reported_labels()``); maps: write ``STEM.maps.npz``; center: the overlays'
    neutral colour, "threshold" (the decision threshold) or "zero" (logit 0, the paper's);
    dicom: write the DICOM results (an SC per shown finding + the SR; DICOM inputs only).
    """

    directory: Path
    overlays: bool = False
    map_kind: str = "scaled"
    findings: tuple[str, ...] | None = None
    maps: bool = False
    center: str = "threshold"
    dicom: bool = False

    def __post_init__(self) -> None:
        from cxr_edge.render import check_center

        check_map_kind(self.map_kind)
        check_center(self.center, "--center")


@dataclass(frozen=True)
class ImageResult:
    """One image's prediction, its report dict, the labels shown and the files written, and
    the explanations of the shown and reported labels (``explain.explanations.explain``)."""

    prediction: Prediction
    report: dict[str, Any]
    shown: tuple[str, ...]
    files: tuple[Path, ...]
    explanations: Explanations | None = None


def label_slug(label: str) -> str:
    """File-name-safe form of a label: "Pleural Effusion" -> "pleural-effusion"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "finding"


def label_slugs(labels: Sequence[str]) -> dict[str, str]:
    """label -> slug, unique within the model (a clash gets "-2", "-3", ... in label order)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        slug = base = label_slug(label)
        n = 1
        while slug in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug)
        out[label] = slug
    return out


def _suffixes(labels: Sequence[str]) -> list[str]:
    """Every name ending a stem can get: JSON, maps, one overlay per label."""
    slugs = label_slugs(labels).values()
    return [".json", ".maps.npz", ".sr.dcm", *(f".{s}.png" for s in slugs), *(f".{s}.sc.dcm" for s in slugs)]


def max_stem_bytes(labels: Sequence[str]) -> int:
    """The longest stem (UTF-8 bytes) whose every derived name, and its temporary and journal
    names, fit in ``MAX_NAME_BYTES``."""
    longest = max(len(s.encode()) for s in [*_suffixes(labels), JOURNAL_SUFFIX])
    return MAX_NAME_BYTES - longest - TEMP_OVERHEAD - len(".")


def _path_hash(path: Path, chars: int = _HASH_CHARS) -> str:
    key = os.fsencode(os.path.abspath(path))
    return hashlib.sha256(key).hexdigest()[:chars]


def _clean_stem(stem: str) -> str:
    """Control and format characters (escape codes, bidi overrides) become "_" in file names."""
    import unicodedata

    cleaned = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf", "Cs") else ch for ch in stem)
    return cleaned.lstrip(".") or "image"


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8", errors="surrogateescape")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def output_stems(files: Sequence[Path], labels: Sequence[str] = ()) -> list[str]:
    """Output name stem per input, unique within the batch and stable across runs.

    The file's stem (control characters replaced), unless two inputs share it (compared
    case-insensitively, for case-insensitive file systems): then each of them gets
    ``STEM-<8 hex of sha256(absolute path)>``. A stem too long for ``max_stem_bytes(labels)``
    is cut and gets the hash as well. ``a/chest.png b/chest.png c/chest-2.png`` -> ``chest-1f0c...``,
    ``chest-9a3e...``, ``chest-2``.
    """
    limit = max_stem_bytes(labels or ("x" * 40,)) - 1 - 2 * _HASH_CHARS
    bases = []
    for path in files:
        stem = _clean_stem(path.stem)
        short = _truncate_utf8(stem, limit)
        bases.append((short, short != stem))
    folded = [b.casefold() for b, _ in bases]
    stems = []
    for path, (base, was_cut) in zip(files, bases):
        shared = folded.count(base.casefold()) > 1
        stems.append(f"{base}-{_path_hash(path)}" if shared or was_cut else base)
    # A plain stem could still equal another input's hashed one (or two hashes collide):
    # lengthen the hash of every clashing entry until all differ.
    chars = _HASH_CHARS
    while len({s.casefold() for s in stems}) < len(stems) and chars < 64:
        chars *= 2
        seen: dict[str, int] = {}
        for s in stems:
            seen[s.casefold()] = seen.get(s.casefold(), 0) + 1
        stems = [
            f"{bases[i][0]}-{_path_hash(p, chars)}" if seen[s.casefold()] > 1 else s
            for i, (p, s) in enumerate(zip(files, stems))
        ]
    return stems


def maps_npz_bytes(prediction: Prediction) -> bytes:
    """The ``STEM.maps.npz`` file's bytes (see the module docstring)."""
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


def _plain_name(name: object) -> str | None:
    """A bare file name from a JSON/journal entry, or None for anything that is not one."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    return name


def committed_files(directory: Path, stem: str) -> list[str]:
    """Names of the files of ``stem``'s committed set (its JSON first), or [] without one."""
    report_path = directory / f"{stem}.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return []
    listed = report.get("result_files") if isinstance(report, dict) else None
    names = [n for n in (_plain_name(x) for x in (listed or [])) if n]
    return [report_path.name, *names]


def _journal(directory: Path, stem: str) -> Path:
    return directory / f".{stem}{JOURNAL_SUFFIX}"


def _read_journal(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [n for n in (_plain_name(x) for x in lines) if n]


def recover_directory(directory: Path) -> list[str]:
    """Finish what an interrupted writer left: remove the files of every incomplete set (a
    journal without its JSON), the journals, and every stale ``.part`` file. Call only while
    holding ``locked_directory``. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(JOURNAL_SUFFIX):
            names = _read_journal(Path(entry.path))
            committed = bool(names) and (directory / names[0]).exists()
            if not committed:
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        (directory / name).unlink()
                        removed.append(name)
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    for entry in entries:
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


@contextlib.contextmanager
def locked_directory(directory: Path) -> Iterator[None]:
    """Hold ``directory/.cxr-edge.lock`` exclusively (``cxr_edge.locking``): one writer per
    folder, and a crashed writer's lock goes with its process. CxrEdgeError when another holds it
    (not POSIX: no lock, recovery still runs)."""
    busy = "--out: another cxr-edge run is writing to this folder"
    with exclusive_lock(directory / LOCK_NAME, busy, directory):
        yield


def _check_not_clobbering(directory: Path, names: Sequence[str], ours: set[str]) -> None:
    for name in names:
        path = directory / name
        if name not in ours and (path.exists() or path.is_symlink()):
            raise CxrEdgeError(
                path,
                "exists and is not a result of this image; refusing to overwrite it (choose another --out)",
            )


def dicom_file_name(stem: str, result: DicomResult, slugs: Mapping[str, str]) -> str:
    """``STEM.<finding-slug>.sc.dcm`` for an overlay's Secondary Capture, ``STEM.sr.dcm`` for the SR;
    slugs: ``label_slugs`` of the model's labels."""
    return f"{stem}.{slugs[result.label]}.sc.dcm" if result.kind == "sc" else f"{stem}.sr.dcm"


def _dicom_source(prediction: Prediction) -> str:
    """The DICOM file a prediction was made from; CxrEdgeError for any other input."""
    if prediction.source != "dicom" or prediction.image is None:
        raise CxrEdgeError(
            prediction.image, "--dicom-out needs a DICOM input (results are filed in its study)"
        )
    return prediction.image


def write_dicom_results(
    prediction: Prediction,
    source: str | Path | Any,
    directory: str | Path,
    overlays: Mapping[str, np.ndarray],
    map_kind: str = "scaled",
    stem: str | None = None,
    budget: InputBudget | None = None,
) -> list[Path]:
    """Build the SC(s) and SR of ``prediction`` and write them into ``directory``; their paths.

    source: the DICOM file the prediction was made from, or its pydicom Dataset; overlays:
    label -> (h, w, 3) uint8 RGB overlay (``cxr_edge.render.finding_overlay``) to file as a
    Secondary Capture; stem: file name stem (default: the source file's stem, or its SOP
    Instance UID); budget: what the source file may cost (``dicom_results.read_source``).
    Everything is built before the first file is written; each file is written atomically. (``write_result_set`` with ``OutputOptions.dicom`` writes them as part of an
    image's all-or-nothing result set.)
    """
    paths = []
    for name, data in _dicom_files(prediction, source, overlays, map_kind, stem, budget):
        path = Path(directory) / name
        write_bytes_atomic(path, data)
        paths.append(path)
    return paths


def _dicom_files(
    prediction: Prediction,
    source: str | Path | Any,
    overlays: Mapping[str, np.ndarray],
    map_kind: str,
    stem: str | None,
    budget: InputBudget | None,
) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each DICOM result of ``prediction`` (``write_dicom_results``'s
    arguments), built in memory."""
    from cxr_edge.dicom_results import build_dicom_results, read_source

    dataset = read_source(source, budget)
    if stem is None:
        stem = Path(source).stem if isinstance(source, (str, Path)) else str(dataset.SOPInstanceUID)
    slugs = label_slugs(prediction.labels)
    results = build_dicom_results(prediction, dataset, overlays, map_kind)
    return [(dicom_file_name(stem, result, slugs), result.data) for result in results]


def write_result_set(
    prediction: Prediction,
    stem: str,
    options: OutputOptions,
    regions: ImageRegions | None = None,
    budget: InputBudget | None = None,
) -> ImageResult:
    """Render and write the result files of one prediction, all or nothing (module docstring).

    Its explanations are computed once (``explain.explanations.explain``) for the overlays, the
    report and the ``ImageResult``; regions: the image regions of an earlier prediction of the
    same image (a progressive run's previous level), reused when they fit. budget: the run's
    input budget, within which ``OutputOptions.dicom`` re-reads the source DICOM (default
    ``InputBudget()``)."""
    from cxr_edge.explain.explanations import explain
    from cxr_edge.render import encode_png, finding_overlay
    from cxr_edge.report import build_report, report_json

    directory = options.directory
    shown = tuple(options.findings) if options.findings is not None else tuple(prediction.reported_labels())
    slugs = label_slugs(prediction.labels)
    source = _dicom_source(prediction) if options.dicom else None  # refused before any rendering
    staged: list[tuple[str, bytes]] = []
    t0 = time.perf_counter()
    explained = [*shown, *(label for label in prediction.reported_labels() if label not in shown)]
    explanations = explain(prediction, explained, options.map_kind, regions)
    rendered = (
        {
            label: finding_overlay(
                prediction, label, options.map_kind, center=options.center, explanations=explanations
            )
            for label in shown
        }
        if options.overlays or options.dicom
        else {}
    )
    if options.overlays:
        for label, rgb in rendered.items():
            staged.append((f"{stem}.{slugs[label]}.png", encode_png(rgb)))
    render_ms = (time.perf_counter() - t0) * 1e3
    overlay_names = [name for name, _ in staged]
    if options.maps:
        staged.append((f"{stem}.maps.npz", maps_npz_bytes(prediction)))
    dicom_names: list[str] = []
    if source is not None:
        dicom_files = _dicom_files(prediction, source, rendered, options.map_kind, stem, budget)
        dicom_names = [name for name, _ in dicom_files]
        staged.extend(dicom_files)
    report = build_report(
        prediction,
        options.map_kind,
        overlays=overlay_names,
        extra_timings_ms={"render": render_ms},
        explanations=explanations,
    )
    if options.dicom:
        report["dicom"] = dicom_names
    report["result_files"] = [name for name, _ in staged]
    text = report_json(report)
    report_name = f"{stem}.json"

    journal = _journal(directory, stem)
    old = [*committed_files(directory, stem), *_read_journal(journal)]
    new = [report_name, *(name for name, _ in staged)]
    _check_not_clobbering(directory, new, set(old))
    # The journal names the JSON first: recovery keeps a set whose JSON exists.
    write_text_atomic(journal, "\n".join(dict.fromkeys([*new, *old])) + "\n")
    try:
        (directory / report_name).unlink(missing_ok=True)  # the old set is no longer committed
        for name in set(old) - set(new):
            (directory / name).unlink(missing_ok=True)
        for name, data in staged:
            write_bytes_atomic(directory / name, data)
        write_text_atomic(directory / report_name, text)
    except BaseException:
        # A failed write (disk full, Ctrl-C) leaves nothing of this image: undo by the journal.
        for name in _read_journal(journal):
            (directory / name).unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        raise
    journal.unlink(missing_ok=True)
    files = (*(directory / name for name, _ in staged), directory / report_name)
    return ImageResult(prediction, report, shown, files, explanations)


def infer_to_files(
    edge: Predictor,
    image: str | Path,
    stem: str,
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool = False,
) -> ImageResult:
    """Predict one image with ``edge`` (in-process ``CxrEdge`` or a Triton server's
    ``TritonCxrEdge``) and write its result set: ``infer``'s unit of work."""
    prediction = edge.predict(image, steps=steps, allow_non_chest=allow_non_chest)
    return write_result_set(prediction, stem, options, budget=edge.input_budget)


def infer_progressive_to_files(
    edge: CxrEdge,
    image: str | Path,
    stem: str,
    options: OutputOptions,
    steps: int,
    allow_non_chest: bool = False,
) -> Iterator[ImageResult]:
    """``infer_to_files`` refined level by level (``CxrEdge.predict_progressive``): after each
    level S' = 1, 2, 4, ..., ``steps`` the image's result set is rewritten for that level (all
    or nothing, ``write_result_set``) and its ``ImageResult`` yielded; the last one is S. The
    image regions of the explanations are computed at the first level only."""
    regions = None
    for prediction in edge.predict_progressive(image, steps=steps, allow_non_chest=allow_non_chest):
        result = write_result_set(prediction, stem, options, regions, edge.input_budget)
        regions = result.explanations.regions if result.explanations is not None else None
        yield result
