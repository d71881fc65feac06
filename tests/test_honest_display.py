"""Issue 13: overlays say which model drew them and whether it may be used clinically, centre
the colours on the decision threshold (a positive call is never all blue, a negative never all
red), and keep the legend in a strip outside the image."""

from __future__ import annotations

from pathlib import Path

import hostile_corpus as hc
import numpy as np
import pytest
from reference_math import reference_pairs

from cxr_edge.metadata import ModelMetadata, cleared_for_clinical_use
from cxr_edge.pipeline import CxrEdge
from cxr_edge.render import (
    Frame,
    centred_map,
    colour_scale,
    finding_image,
    finding_overlay,
    frame_overlay,
    shift_coverage,
)

#: Real films where the demo model's call sits just above its threshold and, centred at logit 0
#: as in the paper, the whole map is blue (found by scanning the 205 frontal PNGs at S = 4).
BORDERLINE_POSITIVES = (("00029865_000.png", "Lung Lesion"), ("00001528_000.png", "Lung Lesion"))


@pytest.fixture(scope="module")
def edge() -> CxrEdge:
    return CxrEdge.load()


class ConstantPatches:
    """Patch logits from a fixed (G, G, C) table by patch position in each shifted copy."""

    name = "table-test"
    thread_safe = True

    def __init__(self, table: np.ndarray, thresholds: tuple[float, ...]) -> None:
        self.table = table
        self.metadata = ModelMetadata(labels=("A", "B"), image_size=128, patch_size=32, thresholds=thresholds)

    def run(self, patches: np.ndarray) -> np.ndarray:
        # The mean pixel of a patch decides nothing here: the table's row is the patch index.
        g = self.table.shape[0]
        reps = len(patches) // (g * g)
        return np.tile(self.table.reshape(g * g, -1), (reps, 1)).astype(np.float32)


def test_centred_raw_map_is_the_shift_average_of_patch_logit_minus_t() -> None:
    """Independent float64: average over shifts of (patch logit - t), zero outside each copy."""
    rng = np.random.default_rng(3)
    table = rng.normal(-1.0, 2.0, size=(4, 4, 2))
    edge = CxrEdge(ConstantPatches(table, thresholds=(0.2, 0.7)))
    steps = 4
    pred = edge.predict(hc.xray_like(300, 300), steps=steps)
    t = np.log(0.2 / 0.8)
    want = np.zeros((128, 128))
    for dr, dc in reference_pairs(steps, 32):
        patchmap = np.kron(table[:, :, 0] - t, np.ones((32, 32)))
        back = np.zeros((128, 128))
        ys, xs = np.arange(128) - dr, np.arange(128) - dc
        inside_y, inside_x = (ys >= 0) & (ys < 128), (xs >= 0) & (xs < 128)
        back[np.ix_(inside_y, inside_x)] = patchmap[np.ix_(ys[inside_y], xs[inside_x])]
        want += back / steps**2
    got = centred_map(pred, "A", colour_scale(pred, "A", "raw", "threshold"))
    assert np.abs(got - want).max() < 1e-4
    cov = shift_coverage(steps, 128, 32)
    assert cov[60] == 1.0 and cov[0] < 1.0 and shift_coverage(1, 128, 32).min() == 1.0


def test_zero_centre_is_the_papers_map(edge: CxrEdge) -> None:
    pred = edge.predict(hc.xray_like(300, 320), steps=1)
    label = pred.labels[0]
    for kind in ("raw", "scaled"):
        scale = colour_scale(pred, label, kind, "zero")
        assert scale.centre_logit == 0.0
        assert np.array_equal(centred_map(pred, label, scale), pred.value_map(label, kind))


def test_real_borderline_positives_are_not_drawn_all_blue(shared_cxr: Path, edge: CxrEdge) -> None:
    for name, label in BORDERLINE_POSITIVES:
        pred = edge.predict(shared_cxr / "images" / "nih14" / name, steps=4)
        f = pred.finding(label)
        assert f.positive and f.probability - f.threshold < 0.01  # type: ignore[operator]
        for kind in ("raw", "scaled"):
            paper = centred_map(pred, label, colour_scale(pred, label, kind, "zero"))
            assert paper.max() < 0  # the complaint: a positive call drawn all blue
            ours = centred_map(pred, label, colour_scale(pred, label, kind, "threshold"))
            assert ours.max() > 0 and ours.min() < 0  # red where the evidence pushes toward the call
        rgb, _ = finding_image(pred, label, "raw")
        region = rgb[
            pred.crop.top : pred.crop.top + pred.crop.side, pred.crop.left : pred.crop.left + pred.crop.side
        ]
        red = (region[..., 0].astype(int) - region[..., 2].astype(int)) > 10
        assert red.any()


def test_real_films_calls_and_colours_agree(shared_cxr: Path, edge: CxrEdge) -> None:
    films = sorted((shared_cxr / "images" / "nih14").glob("*.png"))[::25] + sorted(
        (shared_cxr / "images" / "tbx11k").glob("*.png")
    )
    positives = negatives = 0
    for path in films:
        pred = edge.predict(path, steps=2)
        for f in pred.findings:
            for kind in ("raw", "scaled"):
                m = centred_map(pred, f.label, colour_scale(pred, f.label, kind))
                if f.positive:
                    assert m.max() >= 0, (path.name, f.label, kind)
                else:
                    assert m.min() < 0, (path.name, f.label, kind)
            positives += bool(f.positive)
            negatives += not f.positive
    assert positives > 5 and negatives > 5


def test_legend_and_banner_sit_outside_the_image(edge: CxrEdge) -> None:
    gray = hc.xray_like(300, 520)
    pred = edge.predict(gray, steps=1)
    label = pred.reported_labels()[0] if pred.reported_labels() else pred.labels[0]
    bare, _ = finding_image(pred, label)
    framed = finding_overlay(pred, label)
    h, w = gray.shape
    assert framed.shape[1] == w and framed.shape[0] > h + 40  # larger, never drawn over
    # The X-ray appears unchanged between the strips, exactly once, below the banner.
    top = next(y for y in range(framed.shape[0] - h + 1) if np.array_equal(framed[y : y + h], bare))
    banner = framed[:top]
    assert (
        top > 0 and (banner[..., 0].astype(int) > banner[..., 2].astype(int) + 80).mean() > 0.5
    )  # red strip
    legend = framed[top + h :]
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert tuple(np.asarray(scale_lut_end(0))) in colours and tuple(np.asarray(scale_lut_end(255))) in colours


def scale_lut_end(index: int) -> np.ndarray:
    from cxr_edge.render import DIVERGING_LUT

    return DIVERGING_LUT[index]


def test_a_clinical_model_has_no_banner(edge: CxrEdge) -> None:
    from dataclasses import replace

    pred = edge.predict(hc.xray_like(300, 320), steps=1)
    label = pred.labels[0]
    cleared = replace(
        pred, metadata=pred.metadata.with_(intended_use="Clinical use: adult frontal CXR triage")
    )
    assert cleared_for_clinical_use(cleared.metadata.intended_use)
    assert not cleared_for_clinical_use(pred.metadata.intended_use) and not cleared_for_clinical_use("")
    with_banner, without = finding_overlay(pred, label), finding_overlay(cleared, label)
    assert with_banner.shape[0] > without.shape[0]
    assert not cleared_for_clinical_use("Clinical use: none; not for clinical use")


def test_legend_text_scales_with_the_image() -> None:
    small, large = np.full((512, 512, 3), 90, np.uint8), np.full((2048, 2048, 3), 90, np.uint8)
    frame = Frame(banner="NOT FOR CLINICAL USE", lines=("model: m", "A: p = 0.5"), scale=None)
    grow_small = frame_overlay(small, frame).shape[0] - 512
    grow_large = frame_overlay(large, frame).shape[0] - 2048
    assert 3.0 < grow_large / grow_small < 5.0  # strips follow the width (4x here)
    footer = Frame(banner=None, lines=("x",), scale=None, footer=("Rationale: one extra line.",))
    assert frame_overlay(small, footer).shape[0] > frame_overlay(small, Frame(None, ("x",), None)).shape[0]


def test_table_names_the_model_and_says_not_for_clinical_use(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    image = tmp_path / "a.png"
    image.write_bytes(hc.png_bytes(hc.xray_like(300, 320)))
    result = CliRunner().invoke(app, ["infer", str(image), "-s", "1", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0
    assert "model: demo_model.onnx (tiny, fp32, sha256 " in result.stdout  # type: ignore[attr-defined]
    assert "NOT FOR CLINICAL USE" in result.stdout  # type: ignore[attr-defined]


def test_center_option_is_threaded_to_the_overlays(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    image = tmp_path / "a.png"
    image.write_bytes(hc.png_bytes(hc.xray_like(300, 320)))
    args = ["infer", str(image), "--overlay", "--findings", "Cardiomegaly", "-s", "1"]
    a = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "t")])
    b = CliRunner().invoke(app, [*args, "--center", "zero", "-o", str(tmp_path / "z")])
    bad = CliRunner().invoke(app, [*args, "--center", "middle", "-o", str(tmp_path / "x")])
    assert a.exit_code == b.exit_code == 0 and bad.exit_code == 2 and "--center" in bad.stderr  # type: ignore[attr-defined]
    assert (tmp_path / "t" / "a.cardiomegaly.png").read_bytes() != (
        tmp_path / "z" / "a.cardiomegaly.png"
    ).read_bytes()
