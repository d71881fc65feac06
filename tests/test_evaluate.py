"""Metrics against hand-computable cases and an independent brute-force reference; dataset loaders."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.datasets import Case, folder_cases, phantom_cases
from cxr_edge.evaluate.loop import evaluate_cases
from cxr_edge.evaluate.maps import ImageMaps
from cxr_edge.evaluate.metrics import auroc, binary_counts, youden_threshold
from cxr_edge.evaluate.protocols.base import MapCase
from cxr_edge.evaluate.protocols.chexlocalize import CheXlocalizeProtocol
from cxr_edge.evaluate.protocols.cxr_edge import (
    CxrEdgeProtocol,
    iou,
    map_hit,
    mask_to_model_frame,
    threshold_map,
)
from cxr_edge.preprocess import CropBox


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


def test_cxr_edge_protocol_counts_tp_fp_fn_and_skips_tn():
    truth = np.zeros((4, 4), bool)
    truth[0, 0:2] = True
    good = np.zeros((4, 4), np.float32)
    good[0, 0:2] = 1.0  # thresholded region == truth: IoU 1, hit
    bad = np.zeros((4, 4), np.float32)
    bad[3, 3] = 1.0
    crop = CropBox(0, 0, 4)
    protocol = CxrEdgeProtocol()

    def score(value_map, truth, positive, predicted):
        return protocol.score(MapCase("A", "raw", value_map, crop, (4, 4), positive, truth, predicted, 0.5))

    assert score(good, truth, True, True) == {"hit_rate": 1.0, "miou": 1.0}  # TP
    assert score(bad, truth, True, False) == {"hit_rate": 0.0, "miou": 0.0}  # FN
    fp = score(bad, None, False, True)  # FP: IoU 0, no hit figure
    assert np.isnan(fp["hit_rate"]) and fp["miou"] == 0.0
    assert all(np.isnan(v) for v in score(bad, None, False, False).values())  # TN
    assert all(np.isnan(v) for v in score(good, None, True, True).values())  # positive without region


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


def _fake_source(maps_for, size):
    def source(image):
        raw, prob = maps_for(image)
        return ImageMaps(prob, {"raw": raw, "scaled": raw * 2.0}, CropBox(0, 0, size), (size, size))

    return source


def test_evaluate_cases_with_an_oracle_predictor():
    """A predictor whose map is the ground-truth mask scores AUROC 1, hit rate 1, IoU 1 on TPs,
    under the cxr-edge protocol and CheXlocalize's (Otsu of a two-level map is the mask)."""
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
    protocols = [CxrEdgeProtocol(), CheXlocalizeProtocol()]
    [res], (edge, chex) = evaluate_cases(
        cases, _fake_source(maps_for, size), ["A"], [0.5], protocols, ("raw", "scaled"), 100, 0, seen.append
    )
    assert len(seen) == 8
    assert res.n == 8 and res.positives == 4 and res.auroc == 1.0
    assert res.counts.sensitivity == 1.0 and res.counts.specificity == 1.0
    for kind in ("raw", "scaled"):
        fig = edge.figures[kind]
        assert fig["hit_rate"][0][0].value == 1.0 and fig["hit_rate"][0][0].cases == 4
        assert fig["miou"][0][0].value == 1.0 and fig["miou"][0][0].cases == 4  # 4 TP, no FP/FN
        fig = chex.figures[kind]
        assert fig["hit_rate"][0][0].value == 1.0 and fig["miou_tp_only"][0][0].value == 1.0
        # negatives: constant (all-zero) maps give no region, so TP, FP, FN counts only the 4 TPs
        assert fig["miou_tp_fp_fn"][0][0].cases == 4
    d = edge.to_dict(["A"])
    assert d["maps"]["raw"]["classes"]["A"]["hit_rate"]["cases"] == 4


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
    assert set(report["localization"]) == {"chexlocalize"}  # the default protocol

    engine = CxrEdge.load(tiny_onnx, threads=1)
    phantoms = [render_phantom(s, size=128) for s in range(5, 9)]
    probs = np.array([engine.predict(p.image, steps=1).maps.probabilities for p in phantoms])
    chex = report["localization"]["chexlocalize"]["maps"]
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
            fig = chex[kind]["classes"][label]
            assert fig["hit_rate"]["cases"] == c["positives"]  # every phantom positive has a mask
            assert fig["miou_tp_only"]["cases"] <= c["positives"]
            # Otsu never leaves a non-constant map empty: every image counts for TP, FP, FN
            assert fig["miou_tp_fp_fn"]["cases"] == 4


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


# --- ROC curve, calibration ------------------------------------------------------------------


def test_roc_curve_area_is_the_auroc_with_ties():
    from cxr_edge.evaluate.metrics import roc_curve

    rng = np.random.default_rng(4)
    for _ in range(5):
        y = rng.integers(0, 2, 50)
        s = np.round(rng.random(50), 1)
        fpr, tpr, thr = roc_curve(y, s)
        assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0 and thr[0] == np.inf
        area = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(brute_force_auroc(y, s), abs=1e-12)
        # each point: the rates of "score >= threshold"
        for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
            assert t == pytest.approx(((s >= th) & (y == 1)).sum() / (y == 1).sum())
            assert f == pytest.approx(((s >= th) & (y == 0)).sum() / (y == 0).sum())


def test_expected_calibration_error_by_hand():
    from cxr_edge.evaluate.metrics import expected_calibration_error, reliability_bins

    # bins of width 0.1: [0.0, 0.1): p 0.05, 0.05 (y 0, 1) -> |0.5 - 0.05| = 0.45, weight 2/5
    # [0.9, 1.0]: p 0.95, 1.0, 0.9 (y 1, 1, 0) -> mean p 0.95, fraction 2/3 -> 0.28333, weight 3/5
    y = np.array([0, 1, 1, 1, 0])
    p = np.array([0.05, 0.05, 0.95, 1.0, 0.9])
    expected = 2 / 5 * 0.45 + 3 / 5 * abs(2 / 3 - 0.95)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    bins = reliability_bins(y, p)
    assert [b.count for b in bins] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 3]  # 1.0 falls in the last bin
    assert np.isnan(bins[1].mean_probability)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


# --- dataset labels through the one table ----------------------------------------------------


def test_dataset_labels_map_through_the_table_and_unmapped_ones_are_not_negatives():
    from cxr_edge.evaluate.datasets import ANNOTATED_LABELS, DATASET_TO_CHEXPERT, map_findings

    labels = ["Cardiomegaly", "Lung Opacity", "Pneumonia", "Support Devices"]
    # a "COVID-19;Pneumonia" film is a Lung Opacity (and Pneumonia) positive, not a negative
    covid = map_findings(["COVID-19", "Pneumonia"], labels)
    assert covid.targets == {"Cardiomegaly": 0, "Lung Opacity": 1, "Pneumonia": 1}
    # no dataset label names Support Devices: never scored (not silently negative)
    assert "Support Devices" not in ANNOTATED_LABELS
    assert map_findings(["normal"], labels).targets == {"Cardiomegaly": 0, "Lung Opacity": 0, "Pneumonia": 0}
    # an unknown finding: reported, the image keeps only its known positives
    odd = map_findings(["Effusion", "Fibrosis"], ["Pleural Effusion", "Lung Opacity"])
    assert odd.targets == {"Pleural Effusion": 1} and odd.unmapped == ("Fibrosis",)
    # known findings without a counterpart leave the others negative
    assert map_findings(["Emphysema"], ["Lung Opacity"]).targets == {"Lung Opacity": 0}
    # the CheXpert hierarchy: every parenchymal finding also makes Lung Opacity positive
    for finding in ("Nodule", "Mass", "Pneumonia", "Consolidation", "Edema", "Atelectasis"):
        assert "Lung Opacity" in DATASET_TO_CHEXPERT[finding]


def test_shared_set_label_report_names_what_is_not_scored(shared_cxr: Path):
    from cxr_edge.evaluate.datasets import open_dataset

    labels = ["Cardiomegaly", "Lung Opacity", "Support Devices"]
    d = open_dataset(labels, data=shared_cxr).description
    assert d["labels_not_annotated"] == ["Support Devices"]
    assert d["unmapped_findings"].get("Fibrosis", 0) >= 1
    assert set(d["labels_scored"]) == {"Cardiomegaly", "Lung Opacity"}


# --- maps: the public code's scaled map needs the patch logits of every copy -----------------


def test_patch_logit_recorder_keeps_every_copy_in_shift_pairs_order():
    from cxr_edge.evaluate.maps import PatchLogitRecorder
    from cxr_edge.postprocess import SaliencyAccumulator
    from cxr_edge.tile import shift_pairs

    steps, size, patch, classes = 4, 128, 32, 3
    pairs = shift_pairs(steps, patch)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((len(pairs), (size // patch) ** 2, classes))
    recorder = PatchLogitRecorder()
    acc = recorder(steps, size, patch, classes)
    order = rng.permutation(len(pairs))
    for chunk in np.array_split(order, 3):  # chunks in any order, as the pipeline may deliver
        acc.add(pairs[chunk], logits[chunk].reshape(-1, classes))
    assert recorder.last is acc and np.array_equal(acc.by_copy, logits)
    reference = SaliencyAccumulator(steps, size, patch, classes)
    reference.add(pairs, logits.reshape(-1, classes))
    a, b = acc.finish(("a", "b", "c")), reference.finish(("a", "b", "c"))
    assert np.array_equal(a.scaled, b.scaled) and np.array_equal(a.raw, b.raw)


def test_map_kind_names():
    from cxr_edge.evaluate.maps import parse_map_kinds

    assert parse_map_kinds("both") == ("raw", "scaled")
    assert parse_map_kinds("scaled-published,raw") == ("raw", "scaled-published")
    assert parse_map_kinds("all") == ("raw", "scaled", "scaled-published")
    with pytest.raises(CxrEdgeError, match="--map"):
        parse_map_kinds("blurry")


# --- all protocols from one pass, plots ------------------------------------------------------


def test_eval_all_protocols_in_one_pass_with_tuning_and_plots(tiny_onnx: Path, tmp_path: Path):
    """--protocol all scores every protocol from one pass; medicalpatchnet's thresholds come
    from the --tune-on split; ECE per class equals an independent ECE of the pipeline's
    probabilities; the plots are PNG files, one ROC and one reliability diagram per class."""
    import json

    from typer.testing import CliRunner

    from cxr_edge.cli import app
    from cxr_edge.phantoms import render_phantom
    from cxr_edge.pipeline import CxrEdge

    out = tmp_path / "eval.json"
    plots = tmp_path / "plots"
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
    ]
    args += ["--protocol", "all", "--tune-on", "phantoms:2:40", "--plots", str(plots), "--json", str(out)]
    args += ["--bootstrap", "100", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("chexlocalize", "medicalpatchnet", "cxr-edge"):
        assert f"protocol {name}" in result.output
    report = json.loads(out.read_text())
    assert list(report["localization"]) == ["chexlocalize", "medicalpatchnet", "cxr-edge"]
    assert report["tuning"]["seeds"] == [40, 41] and report["tuning"]["protocols"] == ["medicalpatchnet"]
    assert report["bootstrap"]["replicates"] == 100 and "CheXlocalize" in report["bootstrap"]["method"]
    mpn = report["localization"]["medicalpatchnet"]
    assert mpn["threshold_rule"] == "tuned" and set(mpn["thresholds"]) == {"raw", "scaled"}
    assert any("S=1" in d for d in mpn["deviations"])
    for name, protocol in report["localization"].items():
        assert "source" in protocol and "definition" in protocol, name
        for kind in ("raw", "scaled"):
            assert set(protocol["maps"][kind]["mean"]) == set(protocol["metrics"])

    engine = CxrEdge.load(tiny_onnx, threads=1)
    phantoms = [render_phantom(s, size=128) for s in range(5, 9)]
    probs = np.array([engine.predict(p.image, steps=1).maps.probabilities for p in phantoms], np.float64)
    for c in report["classes"]:
        y = np.array([p.labels[c["label"]] for p in phantoms])
        p = probs[:, engine.metadata.labels.index(c["label"])]
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum((bins == b).sum() / 4 * abs(y[bins == b].mean() - p[bins == b].mean()) for b in set(bins))
        assert c["ece"] == pytest.approx(ece, abs=1e-6)
        slug = c["label"].lower().replace(" ", "-")
        assert (plots / f"reliability-{slug}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (plots / f"roc-{slug}.png").is_file() == (0 < c["positives"] < 4)
    assert sorted(report["plots"]) == sorted(str(p) for p in plots.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--phantoms", "2", "--protocol", "gradcam"], "--protocol"),
        (["--phantoms", "2", "--protocol", "medicalpatchnet"], "--tune-on"),
        (["--phantoms", "2", "--iou-threshold", "1.5"], "--iou-threshold"),
        (["--phantoms", "2", "--bootstrap", "5"], "--bootstrap"),
        (["--phantoms", "2", "--tune-on", "phantoms:x"], "phantoms:N"),
    ],
)
def test_eval_protocol_options_bad_input(tiny_onnx: Path, tmp_path: Path, args, message):
    from typer.testing import CliRunner

    from cxr_edge.cli import app

    out = tmp_path / "never.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_onnx), "--json", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_eval_scores_the_public_codes_scaled_map_by_name(tiny_onnx: Path):
    """``scaled-published`` is the public code's batched scaled map of the very patch logits the
    run produced (recomputed here from a direct backend run); at S = 1 it is the scaled map."""
    from cxr_edge.evaluate.maps import MapSource
    from cxr_edge.phantoms import render_phantom
    from cxr_edge.pipeline import CxrEdge
    from cxr_edge.postprocess_published import published_scaled_map
    from cxr_edge.tile import iter_patch_batches

    edge = CxrEdge.load(tiny_onnx, threads=1)
    md = edge.metadata
    image = render_phantom(3, size=128).image
    two = MapSource(edge, 2, ("scaled", "scaled-published"))(image)
    model_input = edge.prepare(image).model_input
    logits = np.concatenate(
        [edge.backend.run(b.patches) for b in iter_patch_batches(model_input, 2, md.patch_size, 256)]
    )
    grid = md.image_size // md.patch_size
    expected = published_scaled_map(logits.reshape(4, grid * grid, -1), 2, md.image_size, md.patch_size)
    assert np.allclose(two.maps["scaled-published"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(two.maps["scaled-published"], two.maps["scaled"], rtol=1e-3)  # the batching shows
    one = MapSource(edge, 1, ("scaled", "scaled-published"))(image)
    assert np.allclose(one.maps["scaled-published"], one.maps["scaled"], rtol=1e-5, atol=1e-6)
