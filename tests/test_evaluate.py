"""Metrics against hand-computable cases and an independent brute-force reference; dataset loaders."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.datasets import Case, folder_cases, phantom_cases
from cxr_edge.evaluate.loop import evaluate_cases
from cxr_edge.evaluate.metrics import (
    LocalizationTally,
    auroc,
    binary_counts,
    iou,
    map_hit,
    mask_to_model_frame,
    threshold_map,
    youden_threshold,
)


def brute_force_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """P(s_pos > s_neg) + 0.5 P(tie) over all positive/negative pairs, float64."""
    pos, neg = s[y == 1].astype(np.float64), s[y == 0].astype(np.float64)
    total = 0.0
    for a, b in itertools.product(pos, neg):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def test_auroc_hand_case():
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) lose, (0.8 vs both) win -> 3/4
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert auroc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.0


def test_auroc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.random(60), 1)  # many ties
        assert auroc(y, s) == pytest.approx(brute_force_auroc(y, s), abs=1e-12)


def test_auroc_single_class_is_nan():
    assert np.isnan(auroc(np.ones(4), np.arange(4.0)))
    with pytest.raises(ValueError):
        auroc(np.ones(3), np.ones(4))


def test_binary_counts_and_rates():
    c = binary_counts(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.5, 0.2, 0.6, 0.1]), 0.5)
    assert (c.tp, c.fn, c.fp, c.tn) == (2, 1, 1, 1)
    assert c.sensitivity == pytest.approx(2 / 3)
    assert c.specificity == pytest.approx(1 / 2)
    assert c.accuracy == pytest.approx(3 / 5)


def test_youden_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.7
    c = binary_counts(y, p, t)
    assert c.sensitivity == 1.0 and c.specificity == 1.0


def test_map_hit_threshold_and_iou():
    m = np.zeros((8, 8), np.float32)
    m[2, 3] = 5.0
    m[2, 4] = 3.0
    m[6, 6] = 1.0
    truth = np.zeros((8, 8), bool)
    truth[2, 2:5] = True
    assert map_hit(m, truth)
    assert not map_hit(m, ~truth)
    region = threshold_map(m, 0.5)  # >= 2.5: the two pixels at row 2
    assert region.sum() == 2 and region[2, 3] and region[2, 4]
    assert iou(region, truth) == pytest.approx(2 / 3)
    assert not threshold_map(-np.ones((4, 4)), 0.5).any()
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_map_peak_is_the_centre_of_a_plateau_not_its_raster_first_corner():
    """An S = 8 map is constant on 8 x 8 blocks: its peak is the block's centre, so a thin
    ground-truth region through that centre is hit while one along the corner is not."""
    from cxr_edge.postprocess import map_peak

    m = np.zeros((32, 32), np.float32)
    m[8:16, 16:24] = 2.0
    m[0:8, 0:8] = 1.0
    assert map_peak(m) in {(11, 19), (11, 20), (12, 19), (12, 20)}
    line = np.zeros((32, 32), bool)
    line[12, :] = True  # a 1-pixel line through the block's middle rows
    line[11, :] = True
    assert map_hit(m, line)
    corner = np.zeros((32, 32), bool)
    corner[8, 16] = True  # what the raster-first maximum would have pointed at
    assert not map_hit(m, corner)
    single = np.zeros((5, 5), np.float32)
    single[3, 1] = 1.0
    assert map_peak(single) == (3, 1)


def test_localization_tally_counts_tp_fp_fn_and_skips_tn():
    truth = np.zeros((4, 4), bool)
    truth[0, 0:2] = True
    good = np.zeros((4, 4), np.float32)
    good[0, 0:2] = 1.0  # thresholded region == truth: IoU 1, hit
    bad = np.zeros((4, 4), np.float32)
    bad[3, 3] = 1.0
    t = LocalizationTally()
    t.add(good, truth, gt_positive=True, predicted=True)  # TP, IoU 1, hit
    t.add(bad, truth, gt_positive=True, predicted=False)  # FN, IoU 0, miss
    t.add(bad, None, gt_positive=False, predicted=True)  # FP, IoU 0
    t.add(bad, None, gt_positive=False, predicted=False)  # TN: not counted
    t.add(good, None, gt_positive=True, predicted=True)  # positive without region: not scorable
    assert t.kinds == {"tp": 1, "fp": 1, "fn": 1}
    assert t.pointed == 2 and t.hits == 1 and t.hit_rate == 0.5
    assert t.miou == pytest.approx(1 / 3)


def test_mask_to_model_frame_crops_and_resizes():
    mask = np.zeros((100, 140), bool)  # crop box: top 0, left 20, side 100
    mask[10:60, 20:70] = True  # top-left quarter of the crop
    mask[:, :20] = True  # outside the crop: dropped
    out = mask_to_model_frame(mask, (0, 20, 100), 50)
    expected = np.zeros((50, 50), bool)
    expected[5:30, 0:25] = True
    assert np.array_equal(out, expected)
    tiny = np.zeros((100, 100), bool)
    tiny[41, 41] = True  # a quarter of a model pixel: kept as its most covered pixel
    assert mask_to_model_frame(tiny, (0, 0, 100), 50).sum() == 1


def test_phantom_cases_give_masks_for_positives_only():
    cases = list(phantom_cases(3, seed=10, size=128))
    assert [c.name for c in cases] == ["phantom-10", "phantom-11", "phantom-12"]
    for c in cases:
        assert c.image.shape == (128, 128)
        assert set(c.masks) == {k for k, v in c.targets.items() if v}


def _fake_predict(maps_for, size):
    def predict(image):
        raw, prob = maps_for(image)
        maps = SimpleNamespace(probabilities=prob, raw=raw, scaled=raw * 2.0)
        return SimpleNamespace(maps=maps, crop=SimpleNamespace(top=0, left=0, side=size))

    return predict


def test_evaluate_cases_with_an_oracle_predictor():
    """A predictor whose map is the ground-truth mask scores AUROC 1, hit rate 1, IoU 1 on TPs."""
    size = 32
    rng = np.random.default_rng(1)
    cases = []
    for i in range(8):
        mask = np.zeros((size, size), bool)
        positive = i % 2 == 0
        if positive:
            r, c = rng.integers(0, 24, 2)
            mask[r : r + 8, c : c + 8] = True
        cases.append(
            Case(f"c{i}", mask.astype(np.uint8) * 255, {"A": int(positive)}, {"A": mask} if positive else {})
        )

    def maps_for(image):
        positive = image.any()
        value = image[None].astype(np.float32) / 255.0
        return value, np.array([0.9 if positive else 0.1])

    seen = []
    [res] = evaluate_cases(cases, _fake_predict(maps_for, size), ["A"], [0.5], size, on_case=seen.append)
    assert len(seen) == 8
    assert res.n == 8 and res.positives == 4 and res.auroc == 1.0
    assert res.counts.sensitivity == 1.0 and res.counts.specificity == 1.0
    for kind in ("raw", "scaled"):
        loc = res.localization[kind]
        assert loc.hit_rate == 1.0 and loc.miou == 1.0 and loc.kinds == {"tp": 4, "fp": 0, "fn": 0}
    d = res.to_dict()
    assert d["localization"]["raw"]["hits"] == 4 and d["tp"] == 4


def test_folder_cases_generic_layout(tmp_path: Path):
    img = np.full((40, 60), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.png"), img)
    (tmp_path / "labels.csv").write_text("file,Cardiomegaly,Lung Lesion\na.png,1,0\nb.png,0,\n")
    (tmp_path / "boxes.csv").write_text("file,label,x,y,w,h\na.png,Cardiomegaly,10,5,20,10\n")
    (tmp_path / "masks").mkdir()
    extra = np.zeros((40, 60), np.uint8)
    extra[30:35, 50:55] = 255
    cv2.imwrite(str(tmp_path / "masks" / "a__Cardiomegaly.png"), extra)
    cases = folder_cases(tmp_path, ["Cardiomegaly", "Lung Lesion"])
    assert [c.name for c in cases] == ["a.png", "b.png"]
    a, b = cases
    assert a.targets == {"Cardiomegaly": 1, "Lung Lesion": 0}
    assert b.targets == {"Cardiomegaly": 0}  # blank = not annotated
    m = a.masks["Cardiomegaly"]
    assert m.shape == (40, 60) and m.sum() == 20 * 10 + 25
    assert m[5:15, 10:30].all() and m[30:35, 50:55].all()


def test_folder_cases_errors(tmp_path: Path):
    with pytest.raises(CxrEdgeError, match="no such dataset folder"):
        folder_cases(tmp_path / "missing", ["A"])
    with pytest.raises(CxrEdgeError, match="no labels.csv"):
        folder_cases(tmp_path, ["A"])
    (tmp_path / "labels.csv").write_text("file,A\nnot_there.png,1\n")
    with pytest.raises(CxrEdgeError, match="missing"):
        folder_cases(tmp_path, ["A"])


def test_folder_cases_reads_the_shared_developer_set(shared_cxr: Path):
    labels = ["Cardiomegaly", "Lung Opacity", "Lung Lesion", "Pleural Effusion"]
    cases = {Path(c.name).name: c for c in folder_cases(shared_cxr, labels)}
    assert len(cases) >= 200  # frontal NIH + TBX11K with known labels
    assert "00001369_000.png" in cases and cases["00001369_000.png"].targets["Cardiomegaly"] == 1
    box = cases["00001369_000.png"].masks["Cardiomegaly"]
    # NIH box x=337.0, y=276.3, w=553.7, h=386.8 in 1024 px
    rows, cols = np.nonzero(box)
    assert (rows.min(), cols.min()) == (276, 336) and (rows.max(), cols.max()) == (663, 890)
    with_boxes = [c for c in cases.values() if c.masks]
    assert len(with_boxes) >= 8  # 6 NIH images with mapped findings + 2 TBX11K
    tb = cases["tb0007.png"]
    assert tb.targets["Lung Opacity"] == 1 and tb.masks["Lung Opacity"].shape == (512, 512)


# --- the `cxr-edge eval` command ------------------------------------------------------------


def test_eval_command_on_phantoms_writes_a_consistent_report(tiny_onnx: Path, tmp_path: Path):
    """End to end on 4 small phantoms with the tiny random model: the JSON's AUROC equals a
    brute-force AUROC of probabilities obtained independently from the pipeline, and the counts
    add up. (A random model's scores mean nothing; the bookkeeping must still be exact.)"""
    import json

    from typer.testing import CliRunner

    from cxr_edge.cli import app
    from cxr_edge.phantoms import PHANTOM_LABELS, render_phantom
    from cxr_edge.pipeline import CxrEdge

    out = tmp_path / "eval.json"
    args = [
        "eval",
        "--phantoms",
        "4",
        "--seed",
        "5",
        "--size",
        "128",
        "--steps",
        "1",
        "--model",
        str(tiny_onnx),
        "--json",
        str(out),
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output
    report = json.loads(out.read_text())
    assert report["dataset"]["seeds"] == [5, 8] and report["steps"] == 1
    by_label = {c["label"]: c for c in report["classes"]}
    assert set(by_label) == set(PHANTOM_LABELS)  # the other CheXpert classes have no phantom truth

    engine = CxrEdge.load(tiny_onnx, threads=1)
    phantoms = [render_phantom(s, size=128) for s in range(5, 9)]
    probs = np.array([engine.predict(p.image, steps=1).maps.probabilities for p in phantoms])
    for label, c in by_label.items():
        y = np.array([p.labels[label] for p in phantoms])
        s = probs[:, engine.metadata.labels.index(label)]
        assert c["n"] == 4 and c["positives"] == int(y.sum())
        assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == 4
        assert c["tp"] + c["fn"] == c["positives"]
        if 0 < y.sum() < 4:
            assert c["auroc"] == pytest.approx(brute_force_auroc(y, s), abs=1e-6)
        else:
            assert c["auroc"] is None
        for kind in ("raw", "scaled"):
            loc = c["localization"][kind]
            assert loc["pointed"] == c["positives"] and 0 <= loc["hits"] <= loc["pointed"]
            assert sum(loc["iou_cases"].values()) == c["tp"] + c["fp"] + c["fn"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--phantoms", "2", "--data", "."], "exactly one dataset"),
        ([], "exactly one dataset"),
        (["--phantoms", "2", "--steps", "3"], "power of two"),
        (["--phantoms", "2", "--map", "blurry"], "--map"),
        (["--data", "/nonexistent/folder"], "no such dataset folder"),
    ],
)
def test_eval_command_bad_input_is_one_line_and_exit_2(tiny_onnx: Path, tmp_path: Path, args, message):
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    out = tmp_path / "never.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_onnx), "--json", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()
