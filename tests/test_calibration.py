"""Calibration sets: declaration (folder / list file), patch sampling, manifest, data reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.calibration import (
    PatchReader,
    SamplingSettings,
    list_calibration_files,
    load_calibration_set,
    sample_patches,
    write_calibration_manifest,
)
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata

META = ModelMetadata()


def _write_png(path: Path, seed: int, shape: tuple[int, int] = (90, 120)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def test_folder_declares_images_recursively_sorted(tmp_path: Path) -> None:
    b = _write_png(tmp_path / "set" / "b.png", 1)
    a = _write_png(tmp_path / "set" / "sub" / "a.PNG", 2)
    (tmp_path / "set" / "README.md").write_text("not an image")
    assert list_calibration_files(tmp_path / "set") == sorted([a, b])


def test_list_file_paths_are_relative_to_it_with_comments(tmp_path: Path) -> None:
    one = _write_png(tmp_path / "imgs" / "one.png", 1)
    two = _write_png(tmp_path / "imgs" / "two.png", 2)
    listing = tmp_path / "lists" / "set.txt"
    listing.parent.mkdir()
    listing.write_text(f"# my set\n../imgs/two.png\n\n{one}  # absolute\n")
    assert list_calibration_files(listing) == [listing.parent / "../imgs/two.png", one]
    assert list_calibration_files(listing)[0].resolve() == two.resolve()


@pytest.mark.parametrize(
    "content, match",
    [("missing.png\n", "line 1: no such file missing.png"), ("# nothing\n", "names no X-rays")],
)
def test_bad_list_files_are_one_line_errors(tmp_path: Path, content: str, match: str) -> None:
    listing = tmp_path / "set.txt"
    listing.write_text(content)
    with pytest.raises(CxrEdgeError, match=match):
        list_calibration_files(listing)


def test_empty_folder_and_missing_source_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrEdgeError, match="no X-ray files"):
        list_calibration_files(tmp_path)
    with pytest.raises(CxrEdgeError, match="not found"):
        list_calibration_files(tmp_path / "nope")


def _reference_shift(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """shifted[u, v] = image[u + dr, v + dc], zero outside (float64, independent of cxr_edge.tile)."""
    size = image.shape[0]
    out = np.zeros_like(image, dtype=np.float64)
    for u in range(size):
        src_u = u + dr
        if 0 <= src_u < size:
            lo, hi = max(0, -dc), min(size, size - dc)
            out[u, lo:hi] = image[src_u, lo + dc : hi + dc]
    return out


def test_sampled_patches_come_from_unshifted_and_shifted_copies() -> None:
    size, patch = 128, 32
    image = (np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)).astype(np.float32)
    sampling = SamplingSettings(steps=4, shifts_per_image=3, patches_per_image=40, seed=0)
    patches = sample_patches(image, patch, sampling, np.random.default_rng(5))
    assert patches.shape == (40, 1, patch, patch) and patches.dtype == np.float32

    offsets = sorted({((round(patch * k / 4) + patch // 2) % patch) - patch // 2 for k in range(4)})
    catalogue: dict[bytes, tuple[int, int]] = {}
    for dr in offsets:
        for dc in offsets:
            shifted = _reference_shift(image, dr, dc).astype(np.float32)
            for r in range(0, size, patch):
                for c in range(0, size, patch):
                    catalogue[shifted[r : r + patch, c : c + patch].tobytes()] = (dr, dc)
    shifts = [catalogue.get(p[0].tobytes()) for p in patches]
    assert None not in shifts, "a sampled patch is not a patch of any shifted copy"
    used = set(shifts)
    assert len(used) <= 3
    assert len(used) >= 2  # 40 of 3 * 16 patches: more than one copy must be represented


def test_unshifted_copy_is_always_sampled() -> None:
    size, patch = 64, 32
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    sampling = SamplingSettings(steps=8, shifts_per_image=1, patches_per_image=4, seed=0)
    patches = sample_patches(image, patch, sampling, np.random.default_rng(1))
    expected = {image[r : r + patch, c : c + patch].tobytes() for r in (0, 32) for c in (0, 32)}
    assert {p[0].tobytes() for p in patches} == expected


def test_load_set_hashes_files_and_writes_small_manifest(tmp_path: Path) -> None:
    files = [_write_png(tmp_path / "set" / f"{i}.png", i, (80 + i, 100)) for i in range(3)]
    sampling = SamplingSettings(steps=2, shifts_per_image=2, patches_per_image=16, seed=3)
    calib = load_calibration_set(tmp_path / "set", META, sampling)
    assert calib.patches.shape == (48, 1, 64, 64) and calib.patches.dtype == np.float32
    assert 0.0 <= calib.patches.min() and calib.patches.max() <= 1.0
    assert [i.sha256 for i in calib.images] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert [i.shape for i in calib.images] == [(80, 100), (81, 100), (82, 100)]

    again = load_calibration_set(tmp_path / "set", META, sampling)
    assert again.digest == calib.digest and np.array_equal(again.patches, calib.patches)
    _write_png(files[1], 99, (81, 100))
    assert load_calibration_set(tmp_path / "set", META, sampling).digest != calib.digest

    out = write_calibration_manifest(calib, tmp_path / "calibration")
    assert [p.name for p in (tmp_path / "calibration").iterdir()] == ["set.manifest.json"]
    raw = json.loads(out.read_text())
    assert raw["digest"] == calib.digest and raw["patch_count"] == 48
    assert [i["sha256"] for i in raw["images"]] == [i.sha256 for i in calib.images]
    assert out.stat().st_size < 10_000


def test_real_xrays_load_through_the_infer_path(shared_cxr: Path, tmp_path: Path) -> None:
    images = sorted((shared_cxr / "images" / "nih14").glob("*.png"))[:2]
    listing = tmp_path / "real.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    calib = load_calibration_set(listing, META, SamplingSettings(patches_per_image=8))
    assert calib.patches.shape == (16, 1, 64, 64)
    assert [i.source for i in calib.images] == ["png", "png"]
    assert calib.patches.std() > 0.05  # real anatomy, not blank


def test_patch_reader_batches_and_ranges() -> None:
    patches = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    reader = PatchReader(patches, "patches", batch=4)
    assert len(reader) == 3
    seen = []
    while (item := reader.get_next()) is not None:
        seen.append(item["patches"][:, 0, 0, 0].tolist())
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    reader.set_range(1, 2)
    assert reader.get_next()["patches"][:, 0, 0, 0].tolist() == [4, 5, 6, 7]  # type: ignore[index]
    assert reader.get_next() is None
