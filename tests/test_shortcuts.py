"""Shortcut warnings (issue 17): planted evidence in synthetic maps, the body mask, and phantoms
with a planted border marker that a patch model keys on, end to end through predict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxr_edge.explain.body import body_mask, body_mask_blocks
from cxr_edge.explain.shortcuts import (
    BORDER_WARNING_SHARE,
    OUTSIDE_BODY_WARNING_SHARE,
    shortcut_json,
    shortcut_warnings,
)
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import CxrEdge
from cxr_edge.prediction import Prediction
from cxr_edge.preprocess import CropBox
from cxr_edge.report import build_report, evidence_summary

IMAGE_SIZE, PATCH = 128, 16


def synthetic_chest(size: int = 256) -> np.ndarray:
    """Black background, bright body (cols 0.1..0.9, rows from 0.05), two dark lungs."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = np.zeros((size, size))
    img[(x > 0.1) & (x < 0.9) & (y > 0.05)] = 200.0
    for cx in (0.3, 0.7):
        img[((x - cx) / 0.13) ** 2 + ((y - 0.45) / 0.25) ** 2 <= 1.0] = 70.0
    return img.astype(np.uint8)


class ConstantBackend:
    name = "constant-test"
    thread_safe = True

    def __init__(self) -> None:
        self.metadata = ModelMetadata(
            labels=("Alpha", "Beta"), image_size=IMAGE_SIZE, patch_size=PATCH, thresholds=(0.5, 0.5)
        )

    def run(self, patches: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[1.0, -1.0]], dtype=np.float32), (len(patches), 1))


def with_map(pred: Prediction, value_map: np.ndarray) -> Prediction:
    scaled = pred.maps.scaled.copy()
    scaled[0] = value_map
    return dataclasses.replace(pred, maps=dataclasses.replace(pred.maps, scaled=scaled))


def border_share_by_loop(value_map: np.ndarray, band: int) -> float:
    n = value_map.shape[0]
    inside = total = 0.0
    for i in range(n):
        for j in range(n):
            v = max(float(value_map[i, j]), 0.0)
            total += v
            if min(i, j) < band or max(i, j) >= n - band:
                inside += v
    return inside / total


def test_body_mask_of_a_synthetic_chest() -> None:
    gray = synthetic_chest()
    blocks = body_mask_blocks(gray)
    y, x = (np.mgrid[0:64, 0:64] + 0.5) / 64
    truth = (x > 0.1) & (x < 0.9) & (y > 0.05)
    iou = (blocks & truth).sum() / (blocks | truth).sum()
    assert iou > 0.95  # lungs (dark but enclosed) are body
    # a detached bright marker letter in the background is not body
    marked = gray.copy()
    marked[8:20, 4:14] = 255
    assert not body_mask_blocks(marked)[3:4, 2:4].any()
    # a flat film (cropped inside the body) has no background: all body
    assert body_mask_blocks(gray[190:256, 60:126]).all()
    # model-frame mask of a non-square image: its centre crop, repeated over pixels
    wide = np.zeros((256, 300), np.uint8)
    wide[:, 22:278] = gray
    mask = body_mask(wide, CropBox(0, 22, 256), IMAGE_SIZE)
    assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and np.array_equal(mask[::2, ::2], blocks)


@pytest.mark.parametrize("border_part", [0.2, 0.45, 0.55, 0.9])
def test_border_warning_on_planted_evidence(border_part: float) -> None:
    pred = CxrEdge(ConstantBackend()).predict(synthetic_chest(), steps=1)
    value_map = np.full((IMAGE_SIZE, IMAGE_SIZE), -2.0, dtype=np.float32)
    # inside: a 20 x 20 block in the lung; border: a 4-pixel strip along the bottom edge
    value_map[50:70, 30:50] = (1 - border_part) / 400
    value_map[124:128, 30:80] = border_part / 200
    planted = with_map(pred, value_map)
    want = border_share_by_loop(value_map, band=8)
    assert want == pytest.approx(border_part, rel=1e-5)
    warnings = shortcut_warnings(planted, ["Alpha"])
    border = [w for w in warnings if w.kind == "border"]
    assert bool(border) == (want >= BORDER_WARNING_SHARE)
    if border:
        assert border[0].share == pytest.approx(want, rel=1e-9) and border[0].label == "Alpha"
        assert border[0].area_share == pytest.approx(1 - (112 / 128) ** 2)
        assert "border band" in border[0].message
    # one definition: the report's evidence summary says the same share
    assert evidence_summary(planted, "Alpha")["border_share"] == pytest.approx(want, rel=1e-9)


def test_outside_body_warning_on_planted_evidence() -> None:
    gray = synthetic_chest()
    pred = CxrEdge(ConstantBackend()).predict(gray, steps=1)
    body = body_mask(pred.gray, pred.crop, IMAGE_SIZE)
    value_map = np.full((IMAGE_SIZE, IMAGE_SIZE), -1.0, dtype=np.float32)
    value_map[40:60, 30:50] = 1.0  # in the left lung: 400 units
    assert not shortcut_warnings(with_map(pred, value_map), ["Alpha"])
    value_map[30:70, 8:12] = 1.5  # background strip beside the body (x < 0.1), not in the band
    planted = with_map(pred, value_map)
    positive = np.clip(value_map.astype(np.float64), 0, None)
    want = positive[~body].sum() / positive.sum()
    assert want >= OUTSIDE_BODY_WARNING_SHARE
    warnings = shortcut_warnings(planted, ["Alpha"])
    assert [w.kind for w in warnings] == ["outside_body"]
    assert warnings[0].share == pytest.approx(want, rel=1e-12)
    entry = shortcut_json(warnings)[0]
    assert entry["kind"] == "outside_body" and entry["limit"] == OUTSIDE_BODY_WARNING_SHARE


class BrightSpotBackend:
    """A patch model that keys on saturated pixels: logit = 4000 * (share of pixels >= 0.99) - 3
    for "Marker", a constant -3 for "Other", in the real 512 / 64 geometry. Stands in for a
    shortcut learner."""

    name = "bright-spot-test"
    thread_safe = True

    def __init__(self) -> None:
        self.metadata = ModelMetadata(labels=("Marker", "Other"), thresholds=(0.5, 0.5))  # 512 frame, 64 px

    def run(self, patches: np.ndarray) -> np.ndarray:
        bright = (patches.reshape(len(patches), -1) >= 0.99).mean(axis=1)
        return np.stack([4000.0 * bright - 3.0, np.full(len(patches), -3.0)], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantom_with_a_planted_border_marker_is_flagged(seed: int) -> None:
    import cv2

    from cxr_edge.phantoms import render_phantom

    edge = CxrEdge(BrightSpotBackend())
    image = render_phantom(seed, size=512).image.copy()
    # a clean phantom: the Marker finding is negative, nothing reported, nothing flagged
    clean = edge.predict(image, steps=4)
    assert not clean.finding("Marker").positive and not build_report(clean)["shortcut_warnings"]

    # legitimate evidence: a saturated nodule in the middle of a lung, far from the border
    inner = image.copy()
    cv2.circle(inner, (170, 250), 22, 255, -1)
    pred = edge.predict(inner, steps=4)
    assert pred.finding("Marker").positive and not shortcut_warnings(pred, ["Marker"])

    # a radiographer's marker in the top-left corner of the film: border band and background
    marked = image.copy()
    cv2.putText(marked, "R", (6, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 5, cv2.LINE_8)
    pred = edge.predict(marked, steps=4)
    assert pred.finding("Marker").positive
    kinds = {w.kind for w in shortcut_warnings(pred, ["Marker"])}
    assert "border" in kinds
    report = build_report(pred)
    assert {w["label"] for w in report["shortcut_warnings"]} == {"Marker"}
