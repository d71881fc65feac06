"""Calibration sets: real X-rays -> the patch batches INT8 calibration sees.

A set is declared as a folder of X-rays (searched recursively) or a list file (one path per line,
relative to the list file; ``#`` starts a comment). Every image goes through the pipeline's ``prepare_image`` (decode
+ preprocess) exactly like ``infer``; patches are sampled from the unshifted copy and from
randomly chosen shifted copies (``tile_shifts``), so activation ranges match what the runtime feeds.
The manifest (file sha256s, sampling settings, digest) is written where the caller says
(``cxr-edge quantize``: beside the output model unless ``--calibration-dir`` names a folder).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.atomic import write_text_atomic
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError
from cxr_edge.io.files import IMAGE_SUFFIXES, find_image_files
from cxr_edge.metadata import ModelMetadata
from cxr_edge.tile import check_steps

MANIFEST_SUFFIX = ".manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_calibration_files(source: str | Path) -> list[Path]:
    """The image files a calibration set declares, in a stable (sorted / listed) order."""
    source = Path(source)
    if source.is_dir():
        files = find_image_files(source)
        if not files:
            raise CxrEdgeError(source, f"no X-ray files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not source.is_file():
        raise CxrEdgeError(source, "calibration set not found (give a folder of X-rays or a list file)")
    files = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        path = Path(entry)
        path = path if path.is_absolute() else (source.parent / path)
        if not path.is_file():
            raise CxrEdgeError(source, f"line {number}: no such file {entry}")
        files.append(path)
    if not files:
        raise CxrEdgeError(source, "the list file names no X-rays")
    return files


@dataclass(frozen=True)
class CalibrationImage:
    """One calibration X-ray: the path as declared, its sha256, decoder and original (h, w)."""

    path: str
    sha256: str
    source: str
    shape: tuple[int, int]


@dataclass(frozen=True)
class SamplingSettings:
    """How patches are drawn from each image.

    ``steps``: shift grid S the shifted copies come from; ``shifts_per_image``: copies per image
    (the unshifted one always among them); ``patches_per_image``: patches kept from those copies.
    """

    steps: int = 8
    shifts_per_image: int = 8
    patches_per_image: int = 384
    seed: int = 0


@dataclass
class CalibrationSet:
    """The declared images and the ``(N, 1, P, P) float32 in [0, 1]`` patches drawn from them."""

    name: str
    declared: str
    images: list[CalibrationImage]
    sampling: SamplingSettings
    patches: np.ndarray
    caches: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """sha256 over the image hashes (in order) and the sampling settings: the set's identity."""
        text = json.dumps([[i.sha256 for i in self.images], asdict(self.sampling)], sort_keys=True)
        return sha256_bytes(text.encode())

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "declared": self.declared,
            "digest": self.digest,
            "sampling": asdict(self.sampling),
            "patch_count": int(self.patches.shape[0]),
            "patch_shape": list(self.patches.shape[1:]),
            "images": [asdict(i) | {"shape": list(i.shape)} for i in self.images],
            "caches": sorted(set(self.caches)),
        }


def sample_patches(
    image: np.ndarray, patch_size: int, sampling: SamplingSettings, rng: np.random.Generator
) -> np.ndarray:
    """Patches from the unshifted and ``shifts_per_image - 1`` random shifted copies of one image.

    ``image``: ``(S, S) float32 in [0, 1]``; returns ``(patches_per_image, 1, P, P) float32``
    (fewer when the copies hold fewer patches).
    """
    from cxr_edge.tile import shift_pairs, tile_shifts

    pairs = shift_pairs(sampling.steps, patch_size)
    unshifted = np.flatnonzero((pairs == 0).all(axis=1))
    others = np.setdiff1d(np.arange(len(pairs)), unshifted)
    extra = rng.choice(others, size=min(len(others), max(0, sampling.shifts_per_image - 1)), replace=False)
    chosen = pairs[np.concatenate([unshifted, np.sort(extra)])]
    patches = tile_shifts(image, chosen, patch_size)
    keep = min(sampling.patches_per_image, len(patches))
    return patches[np.sort(rng.choice(len(patches), size=keep, replace=False))]


def load_calibration_set(
    source: str | Path,
    metadata: ModelMetadata,
    sampling: SamplingSettings | None = None,
    max_images: int | None = None,
) -> CalibrationSet:
    """Read every declared X-ray (loader + preprocessing of ``infer``) and sample its patches."""
    from cxr_edge.pipeline import prepare_image

    sampling = sampling or SamplingSettings()
    check_steps(sampling.steps)
    if sampling.shifts_per_image < 1 or sampling.patches_per_image < 1:
        raise CxrEdgeError(source, f"invalid calibration sampling {sampling}")
    files = list_calibration_files(source)[:max_images]
    rng = np.random.default_rng(sampling.seed)
    images, chunks = [], []
    for path in files:
        prepared = prepare_image(path, metadata)
        chunks.append(sample_patches(prepared.model_input, metadata.patch_size, sampling, rng))
        shape = (int(prepared.gray.shape[0]), int(prepared.gray.shape[1]))
        images.append(CalibrationImage(str(path), sha256_file(path), prepared.source, shape))
    source = Path(source)
    name = source.stem if source.is_file() else source.name
    return CalibrationSet(name, str(source), images, sampling, np.concatenate(chunks).astype(np.float32))


def manifest_file(name: str, directory: Path) -> Path:
    return directory / f"{name}{MANIFEST_SUFFIX}"


def write_calibration_manifest(calib: CalibrationSet, directory: Path) -> Path:
    """Write ``<directory>/<name>.manifest.json`` atomically, mode as any output (no images are copied)."""
    path = manifest_file(calib.name, directory)
    write_text_atomic(path, json.dumps(calib.manifest(), indent=2, sort_keys=True) + "\n")
    return path


class PatchReader:
    """ONNX Runtime ``CalibrationDataReader`` over a patch array, ``batch`` patches per call.

    ``__len__`` and ``set_range`` let the calibrator collect in strides, so activations of only a
    few batches are held in memory at once.
    """

    def __init__(self, patches: np.ndarray, input_name: str, batch: int = 32) -> None:
        self.patches = patches
        self.input_name = input_name
        self.batch = batch
        self._starts = list(range(0, len(patches), batch))
        self._range = (0, len(self._starts))
        self._iter: Iterator[int] = iter(())
        self.rewind()

    def __len__(self) -> int:
        return len(self._starts)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (start_index, end_index)
        self.rewind()

    def rewind(self) -> None:
        self._iter = iter(self._starts[self._range[0] : self._range[1]])

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._iter, None)
        if start is None:
            return None
        return {self.input_name: self.patches[start : start + self.batch]}
