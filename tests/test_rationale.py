"""The structured rationale (issue 17): zones against an independent per-pixel computation,
orientation from the DICOM header, the fixed sentence template, lung fields on phantoms."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from cxr_edge.explain.body import BODY_GRID, lung_fields_blocks
from cxr_edge.explain.decisive import decisive_patches
from cxr_edge.explain.rationale import (
    IMAGE_SIDES_NOTE,
    finding_zones,
    lung_row_bounds,
    orientation,
    rationale,
    rationale_json,
)
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import CxrEdge
from cxr_edge.prediction import Prediction

IMAGE_SIZE, PATCH = 128, 16
LABELS = ("Alpha", "Beta")


class ConstantBackend:
    """Every patch gets the same logits: the maps are then replaced by the test."""

    name = "constant-test"
    thread_safe = True

    def __init__(self, thresholds: tuple[float, ...] | None = (0.5, 0.5)) -> None:
        self.metadata = ModelMetadata(
            labels=LABELS, image_size=IMAGE_SIZE, patch_size=PATCH, thresholds=thresholds
        )

    def run(self, patches: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[1.0, -1.0]], dtype=np.float32), (len(patches), 1))


def with_map(pred: Prediction, label: str, value_map: np.ndarray, info: dict | None = None) -> Prediction:
    scaled = pred.maps.scaled.copy()
    scaled[pred.metadata.label_index(label)] = value_map
    maps = dataclasses.replace(pred.maps, scaled=scaled)
    return dataclasses.replace(pred, maps=maps, info=pred.info if info is None else info)


def synthetic_chest(size: int = 256, lung_rows: tuple[float, float] = (0.2, 0.7)) -> np.ndarray:
    """Black background, a bright body (cols 0.1..0.9, from row 0.05 down), two dark lungs
    (ellipses) spanning ``lung_rows`` of the height, one in each half."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = np.zeros((size, size), dtype=np.float64)
    img[(x > 0.1) & (x < 0.9) & (y > 0.05)] = 200.0
    cy, ry = (lung_rows[0] + lung_rows[1]) / 2, (lung_rows[1] - lung_rows[0]) / 2
    for cx in (0.3, 0.7):
        img[((x - cx) / 0.13) ** 2 + ((y - cy) / ry) ** 2 <= 1.0] = 70.0
    return img.astype(np.uint8)


def expected_zone_shares(
    evidence: np.ndarray,
    bounds: tuple[tuple[float, float], tuple[float, float]],
    names: dict[tuple[int, int], str],
) -> dict[str, float]:
    """Per-pixel loop: side = image half, third of that half's lung bounds (clamped)."""
    n = evidence.shape[0]
    sums: dict[str, float] = {}
    total = float(np.clip(evidence, 0, None).sum())
    for i in range(n):
        for j in range(n):
            v = max(float(evidence[i, j]), 0.0)
            half = 0 if j < n // 2 else 1
            top, bottom = bounds[half]
            third = int(min(max(np.floor(3 * ((i + 0.5) / n - top) / (bottom - top)), 0), 2))
            name = names[(half, third)]
            sums[name] = sums.get(name, 0.0) + v
    return {k: v / total for k, v in sums.items()}


THIRDS = ("upper", "middle", "lower")
IMAGE_NAMES = {(h, t): f"image-{('left', 'right')[h]} {THIRDS[t]}" for h in (0, 1) for t in range(3)}


def test_orientation_from_the_header_or_the_standard_display_assumption() -> None:
    assert orientation({}).patient_sides is False and orientation({}).basis == IMAGE_SIDES_NOTE
    o = orientation({"patient_orientation": ["L", "F"]})
    assert (o.x_toward, o.y_toward, o.patient_sides) == ("L", "F", True)
    assert "Patient Orientation L\\F" in o.basis
    assert orientation({"patient_orientation": ["RF", "FL"]}).x_toward == "R"  # oblique: main letter
    assert orientation({"patient_orientation": ["A", "F"]}).patient_sides is False  # lateral axes
    assert orientation({"patient_orientation": ["L", "R"]}).patient_sides is False
    assert orientation({"patient_orientation": None}).patient_sides is False


def test_lung_fields_of_a_synthetic_chest() -> None:
    fields = lung_fields_blocks(synthetic_chest())
    (lt, lb), (rt, rb) = lung_row_bounds(fields)
    for top, bottom in ((lt, lb), (rt, rb)):
        assert top == pytest.approx(0.2, abs=2.5 / BODY_GRID) and bottom == pytest.approx(
            0.7, abs=2.5 / BODY_GRID
        )
    assert lung_row_bounds(np.zeros((8, 8), dtype=bool)) == ((0.0, 1.0), (0.0, 1.0))


@pytest.mark.parametrize("where", ["upper-left", "lower-right", "spread"])
def test_zone_shares_match_a_per_pixel_computation(where: str) -> None:
    edge = CxrEdge(ConstantBackend())
    gray = synthetic_chest()
    pred = edge.predict(gray, steps=1)
    rng = np.random.default_rng(len(where))
    evidence = rng.normal(-1, 1, size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    if where == "upper-left":
        evidence[30:40, 20:50] += 6.0
    elif where == "lower-right":
        evidence[80:120, 70:110] += 6.0  # partly below the lungs' base (0.7 * 128 = 90): still lower
    else:
        evidence += 1.5
    got = finding_zones(with_map(pred, "Alpha", evidence), "Alpha")
    bounds = lung_row_bounds(lung_fields_blocks(gray))
    want = expected_zone_shares(evidence.astype(np.float64), bounds, IMAGE_NAMES)
    assert got is not None and set(got) == set(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-9)
    main = max(got, key=lambda k: got[k])
    assert main == {"upper-left": "image-left upper", "lower-right": "image-right lower"}.get(where, main)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["L", "F"], "right lower"),  # standard: image left = patient right
        (["R", "F"], "left lower"),  # mirrored film
        (["L", "H"], "right upper"),  # upside down: image bottom = head
        (["F", "L"], "left upper"),  # quarter turn: x toward the feet, y toward the patient's left
    ],
)
def test_patient_sides_follow_the_patient_orientation(values: list[str], expected: str) -> None:
    """Evidence in the image's lower-left corner region; a uniform film has no lung fields, so
    thirds are of the frame and the expected zone follows from the header alone."""
    pred = CxrEdge(ConstantBackend()).predict(np.full((128, 128), 128, np.uint8), steps=1)
    evidence = np.full((IMAGE_SIZE, IMAGE_SIZE), -1.0, dtype=np.float32)
    evidence[100:120, 10:30] = 5.0  # image rows 0.78..0.94, cols 0.08..0.23
    shares = finding_zones(with_map(pred, "Alpha", evidence, {"patient_orientation": values}), "Alpha")
    assert shares is not None and max(shares, key=lambda k: shares[k]) == expected
    assert shares[expected] == pytest.approx(1.0)


def test_sentences_follow_the_fixed_template() -> None:
    pred = CxrEdge(ConstantBackend(thresholds=(0.5, 0.5))).predict(synthetic_chest(), steps=1)
    evidence = np.full((IMAGE_SIZE, IMAGE_SIZE), -1.0, dtype=np.float32)
    evidence[80:88, 20:40] = 4.0
    pred = with_map(pred, "Alpha", evidence)
    alpha = rationale(pred, "Alpha")  # every patch logit +1 > 0 = t: positive, cannot be reversed
    p = pred.finding("Alpha").probability
    assert alpha.text == (
        f"Alpha: probability {p:.2f} (threshold 0.50), positive. Evidence lies mainly in the "
        f"image-left lower zone (100% of it); every patch is at or above the threshold, so no set "
        "of patches reverses the call."
    )
    beta = rationale(pred, "Beta")  # every patch -1: negative, its map holds no evidence
    k = decisive_patches(pred, "Beta").count
    assert k == 64
    assert beta.text == (
        f"Beta: probability {pred.finding('Beta').probability:.2f} (threshold 0.50), negative. Its map "
        f"has no positive values (no evidence above logit 0); {k} of 64 patches hold it below the threshold."
    )
    assert beta.zone is None and beta.zone_share is None
    entry = rationale_json(pred, ["Alpha", "Beta"])
    assert entry["sides"] == "image" and entry["basis"] == IMAGE_SIDES_NOTE
    assert [f["text"] for f in entry["findings"]] == [alpha.text, beta.text]

    no_thr = CxrEdge(ConstantBackend(thresholds=None)).predict(synthetic_chest(), steps=1)
    text = rationale(with_map(no_thr, "Beta", evidence), "Beta").text
    assert re.fullmatch(
        r"Beta: probability 0\.\d\d \(no decision threshold\)\. Evidence lies mainly in the image-left "
        r"lower zone \(100% of it\); 64 of 64 patches keep it below probability 0\.50\.",
        text,
    ), text


def test_dicom_orientation_reaches_the_rationale(tmp_path: Path) -> None:
    from test_io import make_dicom

    stored = synthetic_chest().astype(np.uint16) * 16
    path = make_dicom(tmp_path / "r.dcm", stored, extra={"PatientOrientation": ["R", "F"]})
    edge = CxrEdge(ConstantBackend())
    pred = edge.predict(path, steps=1)
    assert pred.info["patient_orientation"] == ["R", "F"]
    evidence = np.full((IMAGE_SIZE, IMAGE_SIZE), -1.0, dtype=np.float32)
    evidence[70:85, 15:45] = 3.0  # image-left, lower part of the lungs
    r = rationale(with_map(pred, "Alpha", evidence), "Alpha")
    assert r.patient_sides and r.zone == "left lower"  # mirrored film: image left = patient left
    assert rationale_json(with_map(pred, "Alpha", evidence), ["Alpha"])["basis"].endswith("R\\F")


def test_real_dicom_with_patient_orientation(shared_cxr: Path) -> None:
    from cxr_edge.io import load_xray

    info = load_xray(shared_cxr / "dicom" / "RG1_J2KI.dcm").info
    assert info["patient_orientation"] == ["L", "F"]
    assert orientation(info).patient_sides


def test_phantom_effusions_are_in_a_lower_zone() -> None:
    """Evidence = the planted effusion's own mask: its zone must be lower, on its side."""
    import cv2

    from cxr_edge.phantoms import render_phantom

    edge = CxrEdge(ConstantBackend())
    checked = 0
    for seed in range(40):
        ph = render_phantom(seed)
        if not ph.labels["Pleural Effusion"]:
            continue
        pred = edge.predict(ph.image, steps=1)
        mask = ph.masks["Pleural Effusion"].astype(np.float32)
        crop = pred.crop
        square = mask[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side]
        evidence = cv2.resize(square, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        r = rationale(with_map(pred, "Alpha", evidence), "Alpha")
        cols = np.flatnonzero(evidence.sum(axis=0) > 0)
        side = "left" if cols.mean() < IMAGE_SIZE / 2 else "right"
        assert r.zone == f"image-{side} lower", (seed, r.text)
        checked += 1
    assert checked >= 5
