"""The bundled demo model on the bundled sample: the README's main job finds the planted
finding and its map peaks on it (ground truth from the phantom renderer, not stored numbers)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tool_modules import load_tool

from cxr_edge.assets import ASSETS_DIR, DEMO_MODEL_NAME, SAMPLE_IMAGE_NAME


def load_train_demo():
    return load_tool("train_demo")


@pytest.fixture(scope="module")
def sample_prediction():
    if not (ASSETS_DIR / DEMO_MODEL_NAME).is_file():
        pytest.skip("no bundled demo model in this checkout")
    from cxr_edge.pipeline import CxrEdge

    return CxrEdge.load().predict(ASSETS_DIR / SAMPLE_IMAGE_NAME, steps=8)


def test_demo_model_says_what_it_is(sample_prediction) -> None:
    md = sample_prediction.metadata
    assert "not for clinical use" in md.intended_use and "phantoms" in md.training_data
    assert md.thresholds is not None and len(md.thresholds) == len(md.labels)
    assert (ASSETS_DIR / DEMO_MODEL_NAME).stat().st_size <= 25 * 2**20


def test_sample_is_the_documented_phantom_and_its_finding_is_found(sample_prediction) -> None:
    from cxr_edge.phantoms import PHANTOM_LABELS, render_phantom
    from cxr_edge.report import build_report

    train_demo = load_train_demo()
    finding = train_demo.SAMPLE_FINDING
    phantom = render_phantom(
        train_demo.SAMPLE_SEED,
        size=1024,
        vary_shape=True,
        findings={k: int(k == finding) for k in PHANTOM_LABELS},
    )
    assert np.array_equal(
        cv2.imread(str(ASSETS_DIR / SAMPLE_IMAGE_NAME), cv2.IMREAD_UNCHANGED), phantom.image
    )
    assert sample_prediction.finding(finding).positive
    # The scaled map's strongest evidence, in original pixels, lies on the planted finding
    # (its mask grown by one pixel, for the rounding of the peak's position).
    peak = build_report(sample_prediction)["evidence"]
    peak = next(e["peak"] for e in peak if e["label"] == finding)
    near = cv2.dilate(phantom.masks[finding].astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert near[round(peak["y"]), round(peak["x"])]
