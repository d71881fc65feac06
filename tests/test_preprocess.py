"""The reference preprocessing against PyTorch: crop margins, antialiased resize, /255."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cxr_edge.errors import CxrEdgeError
from cxr_edge.preprocess import antialiased_resize, center_crop_box, preprocess, resize_taps

torch = pytest.importorskip("torch")


def torch_resize(img: np.ndarray, size: int) -> np.ndarray:
    """What torchvision ``Resize`` does on a float tensor (antialias=True)."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].numpy()


def reference_preprocess(gray: np.ndarray, size: int) -> np.ndarray:
    """The public pipeline written out: ToTensor (/255 in float32), centre crop, Resize."""
    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    tensor = torch.from_numpy(gray).float().div(255)
    crop = tensor[top : top + side, left : left + side].numpy()
    return torch_resize(crop, size)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1024, 1024), 512),  # the production case, 2x down
        ((37, 53), 20),  # odd, non-square, down by a non-integer factor
        ((333, 211), 512),  # up along both axes, different factors
        ((1955, 1841), 512),  # odd, real DICOM size
        ((7, 9), 64),  # strong upscaling
        ((600, 601), 512),  # scale barely above 1
        ((512, 512), 512),  # identity
    ],
)
def test_resize_matches_torch_interpolate(shape: tuple[int, int], size: int) -> None:
    rng = np.random.default_rng(sum(shape) + size)
    img = rng.integers(0, 256, shape).astype(np.float32) / np.float32(255)
    ours = antialiased_resize(img, size)
    assert ours.shape == (size, size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_resize(img, size), rtol=0, atol=1e-6)


def test_resize_taps_are_a_partition_of_unity_within_the_image() -> None:
    for in_size, out_size in [(1024, 512), (53, 20), (9, 64), (1841, 512)]:
        index, weight = resize_taps(in_size, out_size)
        assert index.min() >= 0 and index.max() < in_size
        assert (weight >= 0).all()
        np.testing.assert_allclose(weight.sum(axis=1), 1.0, atol=1e-6)


def test_resize_of_a_constant_is_that_constant() -> None:
    img = np.full((301, 487), 0.375, dtype=np.float32)
    np.testing.assert_allclose(antialiased_resize(img, 512), 0.375, atol=1e-6)


@pytest.mark.parametrize(
    ("h", "w"), [(1024, 1024), (700, 1001), (1001, 700), (515, 512), (513, 1023), (300, 200)]
)
def test_crop_box_margins(h: int, w: int) -> None:
    box = center_crop_box(h, w)
    side = min(h, w)
    assert (box.top, box.left, box.side) == ((h - side) // 2, (w - side) // 2, side)


@pytest.mark.parametrize(
    ("h", "w"), [(700, 1001), (1001, 700), (513, 1023), (300, 200), (512, 640), (1024, 1024)]
)
def test_preprocess_matches_the_reference_pipeline(h: int, w: int) -> None:
    rng = np.random.default_rng(h * w)
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    out = preprocess(gray, 512)
    assert out.image.shape == (512, 512) and out.image.dtype == np.float32
    assert out.original_shape == (h, w)
    assert 0.0 <= float(out.image.min()) and float(out.image.max()) <= 1.0
    np.testing.assert_allclose(out.image, reference_preprocess(gray, 512), rtol=0, atol=1e-6)


def test_preprocess_picks_the_centre_not_a_corner() -> None:
    # A wide image whose centre square is white and the margins black: the crop is all white.
    gray = np.zeros((64, 100), dtype=np.uint8)
    gray[:, 18:82] = 255
    out = preprocess(gray, 32)
    assert out.crop.left == 18 and out.crop.side == 64
    np.testing.assert_allclose(out.image, 1.0, atol=1e-6)


def test_preprocess_at_model_size_is_exactly_divide_by_255() -> None:
    gray = np.arange(512 * 512, dtype=np.int64).reshape(512, 512).astype(np.uint8)
    out = preprocess(gray, 512)
    assert np.array_equal(out.image, gray.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), np.zeros((0, 5), np.uint8)]
)
def test_preprocess_rejects_what_is_not_an_8bit_gray_image(bad: np.ndarray) -> None:
    with pytest.raises(CxrEdgeError, match="^img.png: "):
        preprocess(bad, 512, path="img.png")


def test_preprocess_of_1024_is_fast() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    preprocess(gray, 512)  # builds and caches the taps
    times = []
    for _ in range(5):
        start = time.perf_counter()
        preprocess(gray, 512)
        times.append(time.perf_counter() - start)
    # A few ms on one free core; generous because the test machine's 2 cores are shared.
    assert min(times) < 0.05


def test_preprocess_of_a_real_xray_matches_torch(shared_cxr) -> None:
    from cxr_edge.io import load_xray

    for name in ["images/nih14/00000075_000.png", "dicom/RG1_J2KI.dcm"]:
        gray = load_xray(shared_cxr / name).pixels
        out = preprocess(gray, 512)
        np.testing.assert_allclose(out.image, reference_preprocess(gray, 512), rtol=0, atol=1e-6)
