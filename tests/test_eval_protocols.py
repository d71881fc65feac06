"""Localization protocols against values written from their definitions.

Every expected value here is computed by hand (small maps) or by an independent float64 /
library oracle (torch's ``F.interpolate`` and PIL's polygon fill, the calls the official
CheXlocalize code makes; numpy's legacy ``np.random.choice``, the official bootstrap's draws).
Cases: ties, constant maps, negative maps, empty masks, non-square images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_edge.evaluate.bootstrap import bootstrap_indices, interval, summarize
from cxr_edge.evaluate.geometry import bilinear_resize, crop_placed, stretched
from cxr_edge.evaluate.protocols import PROTOCOLS, make_protocol, parse_protocols
from cxr_edge.evaluate.protocols.base import MapCase
from cxr_edge.evaluate.protocols.chexlocalize import (
    TUNING_GRID,
    CheXlocalizeProtocol,
    IouCurve,
    case_iou,
    grid_threshold,
    hit,
    normalise,
    otsu_region,
    region_iou,
)
from cxr_edge.evaluate.protocols.cxr_edge import CxrEdgeProtocol
from cxr_edge.evaluate.protocols.medicalpatchnet import (
    MedicalPatchNetProtocol,
    clip_to_unit,
    search_threshold,
)
from cxr_edge.preprocess import CropBox, center_crop_box

nan = math.nan


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --- geometry ------------------------------------------------------------------------------


def test_bilinear_resize_by_hand():
    """2x2 -> 4x4: source rows/cols (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
    (past the last: the last value), weights 0, 0.25, 0.75, 0 between entries 0 and 1."""
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    row = np.array([0.0, 0.25, 0.75, 1.0])  # along a row from 0 to 1
    col = np.array([0.0, 0.5, 1.5, 2.0])  # down a column from 0 to 2
    expected = col[:, None] + row[None, :]
    assert np.allclose(bilinear_resize(m, 4, 4), expected, atol=0, rtol=0)
    # down to 1x1: the source coordinate 0.5 sits halfway between all four
    assert bilinear_resize(m, 1, 1)[0, 0] == 1.5
    # same size: untouched
    assert np.array_equal(bilinear_resize(m, 2, 2), m)


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    for h, w, oh, ow in [(64, 64, 300, 700), (16, 24, 97, 53), (512, 512, 1024, 1024), (512, 512, 200, 260)]:
        m = rng.standard_normal((h, w)).astype(np.float32)
        ref = F.interpolate(
            torch.from_numpy(m)[None, None], size=(oh, ow), mode="bilinear", align_corners=False
        )
        ref = ref[0, 0].numpy()
        ours = bilinear_resize(m, oh, ow)
        # torch computes source coordinates in float32 (offsets of ~1e-5 px at these sizes)
        assert np.abs(ours - ref).max() < 2e-3
        assert np.argmax(ours) == np.argmax(ref)


def test_resized_plateau_stays_a_tie_and_first_argmax_is_its_raster_first_pixel():
    m = np.zeros((8, 8))
    m[2:4, 3:6] = 0.7  # a plateau
    native = crop_placed(m, CropBox(0, 0, 40), (40, 40))
    v = native.values
    assert v.max() == 0.7  # exactly: a + t * (b - a) keeps equal neighbours equal
    ties = np.argwhere(v == 0.7)
    # the plateau's interior: source coordinates within [2, 3] x [3, 5] -> native rows
    # (r + 0.5) / 5 - 0.5 in [2, 3] -> r in 12..17, cols 17..27
    assert ties[:, 0].min() == 12 and ties[:, 0].max() == 17
    assert ties[:, 1].min() == 17 and ties[:, 1].max() == 27
    assert native.first_argmax() == (12, 17)


def test_crop_placed_and_stretched_on_a_non_square_image():
    """A 100x140 image: the model saw columns 20..119. Crop placement puts the map there;
    the published geometry stretches it over all 140 columns."""
    crop = center_crop_box(100, 140)
    assert (crop.top, crop.left, crop.side) == (0, 20, 100)
    m = np.zeros((50, 50))
    m[10, 40] = 5.0  # peak at model pixel (10, 40)
    placed = crop_placed(m, crop, (100, 140))
    assert placed.values.shape == (100, 100) and (placed.top, placed.left) == (0, 20)
    r, c = placed.first_argmax()
    # resize x2: model pixel 40 covers native crop columns 80, 81 (equal weight at 80.5 -> 80 first
    # of the two 0.75-weighted pixels); plus the crop's left margin 20
    assert (r, c) == (20, 100)
    out = stretched(m, (100, 140))
    assert out.values.shape == (100, 140) and (out.top, out.left) == (0, 0)
    # stretch x2.8 along columns: native column c samples (c + 0.5) / 2.8 - 0.5; nearest to 40 is c = 113
    assert out.first_argmax() == (20, 113)
    region = np.ones((100, 100), bool)
    assert placed.embed(region).sum() == 100 * 100 and not placed.embed(region)[:, :20].any()


# --- CheXlocalize ingredients ----------------------------------------------------------------


def test_normalise_negative_and_constant_maps():
    m = np.array([[-300.0, -135.0], [30.0, -300.0]])
    n = normalise(m)
    assert n is not None and n.dtype == np.float32
    assert np.allclose(n, [[0.0, 0.5], [1.0, 0.0]])
    assert normalise(np.full((3, 3), -2.0)) is None  # constant: no region
    neg = normalise(np.array([[-5.0, -1.0]]))
    assert neg is not None and neg.tolist() == [[0.0, 1.0]]


def _otsu_level(levels: np.ndarray) -> int:
    """Otsu's threshold on uint8 levels, by brute force: the first t maximising w0 w1 (m0 - m1)^2."""
    hist = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    best, best_t = -1.0, 0
    for t in range(256):
        w0 = p[: t + 1].sum()
        w1 = 1.0 - w0
        if w0 <= 0 or w1 <= 0:
            continue
        m0 = (np.arange(t + 1) * p[: t + 1]).sum() / w0
        m1 = (np.arange(t + 1, 256) * p[t + 1 :]).sum() / w1
        var = w0 * w1 * (m0 - m1) ** 2
        if var > best * (1 + 1e-12):
            best, best_t = var, t
    return best_t


def _official_style_region(norm: np.ndarray) -> np.ndarray:
    """CheXlocalize's segmentation through the libraries it calls: uint8(255 m), Otsu (brute force
    here), cv2 contours, PIL polygons drawn filled with outline."""
    import cv2

    pil = pytest.importorskip("PIL.Image")
    draw = pytest.importorskip("PIL.ImageDraw")
    levels = (255 * norm).astype(np.uint8)
    binary = np.where(levels > _otsu_level(levels), 255, 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    img = pil.new("1", (norm.shape[1], norm.shape[0]))
    for cnt in contours:
        if len(cnt) > 1:
            draw.Draw(img).polygon([(int(p[0][0]), int(p[0][1])) for p in cnt], outline=1, fill=1)
    return np.array(img, dtype=bool)


def test_otsu_region_matches_the_official_libraries_on_random_maps():
    import cv2

    rng = np.random.default_rng(11)
    for trial in range(40):
        h, w = (int(x) for x in rng.integers(12, 70, 2))
        m = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.0 + trial % 4)
        norm = normalise(m)
        assert norm is not None
        assert np.array_equal(otsu_region(norm), _official_style_region(norm)), trial


def test_otsu_region_fills_holes_and_drops_single_pixels():
    ring = np.zeros((20, 20), np.float32)
    ring[4:15, 4:15] = 1.0
    ring[7:12, 7:12] = 0.0  # a hole
    ring[18, 1] = 1.0  # an isolated pixel: a one-point contour, dropped
    region = otsu_region(ring)
    expected = np.zeros((20, 20), bool)
    expected[4:15, 4:15] = True
    assert np.array_equal(region, expected)
    assert not otsu_region(np.zeros((5, 5), np.float32)).any()


def test_hit_first_argmax_ties_negative_maps_and_empty_masks():
    m = np.full((6, 6), -3.0)
    m[1, 4] = m[3, 2] = -1.0  # tie between (1, 4) and (3, 2): raster order picks (1, 4)
    native = crop_placed(m, CropBox(0, 0, 6), (6, 6))
    truth = np.zeros((6, 6), bool)
    truth[3, 2] = True
    assert hit(native, truth) == 0.0
    truth[1, 4] = True
    assert hit(native, truth) == 1.0
    assert math.isnan(hit(native, np.zeros((6, 6), bool)))  # empty mask: not counted
    assert math.isnan(hit(native, None))
    const = crop_placed(np.full((6, 6), 2.0), CropBox(0, 0, 6), (6, 6))
    first = np.zeros((6, 6), bool)
    first[0, 0] = True
    assert hit(const, first) == 1.0  # a constant map's first argmax is pixel (0, 0)


def test_region_iou_inclusion_rules():
    # (predicted, truth, intersection) -> (TP only, TP FP FN): calculate_iou's definitions
    assert same(region_iou(4, 6, 2, True), 2 / 8) and same(region_iou(4, 6, 2, False), 2 / 8)
    assert math.isnan(region_iou(0, 6, 0, True)) and region_iou(0, 6, 0, False) == 0.0  # FN
    assert math.isnan(region_iou(5, 0, 0, True)) and region_iou(5, 0, 0, False) == 0.0  # FP
    assert math.isnan(region_iou(0, 0, 0, True)) and math.isnan(region_iou(0, 0, 0, False))  # empty union


def test_map_from_minus_300_to_30_and_an_all_negative_map():
    """The two maps of the issue's comparison, made hand-computable (10 x 10, truth = rows 0-1):

    A: rows 0-1 at 30, rows 2-4 at -100, rows 5-9 at -300. cxr-edge keeps >= 15 (half the max):
    rows 0-1, IoU 1. CheXlocalize normalises: (m + 300) / 330 -> 1, 0.606, 0; Otsu on levels
    255 (20 px), 154 (30 px), 0 (50 px) splits 0 | 154, 255: region rows 0-4, IoU 20/50 = 0.4;
    a tuned threshold 0.7 gives rows 0-1 again, IoU 1.
    B: all negative, rows 0-1 at -1, the rest at -5: cxr-edge's region is empty (IoU 0 for a
    TP); CheXlocalize's min-max normalised map is 1 on rows 0-1: IoU 1.
    """
    truth = np.zeros((10, 10), bool)
    truth[0:2] = True
    a = np.full((10, 10), -300.0, np.float32)
    a[0:2] = 30.0
    a[2:5] = -100.0
    b = np.full((10, 10), -5.0, np.float32)
    b[0:2] = -1.0
    crop = CropBox(0, 0, 10)

    def case(value_map):
        return MapCase("A", "raw", value_map, crop, (10, 10), True, truth, True, 0.9)

    edge = CxrEdgeProtocol()
    assert edge.score(case(a))["miou"] == 1.0
    assert edge.score(case(b))["miou"] == 0.0
    chex = CheXlocalizeProtocol()
    assert chex.score(case(a))["miou_tp_only"] == pytest.approx(0.4)
    assert chex.score(case(b))["miou_tp_only"] == 1.0
    assert CheXlocalizeProtocol(0.7).score(case(a))["miou_tp_only"] == 1.0
    assert CheXlocalizeProtocol(0.6).score(case(a))["miou_tp_only"] == pytest.approx(0.4)  # 0.606 > 0.6


def test_iou_curve_equals_direct_thresholding():
    rng = np.random.default_rng(5)
    for _ in range(10):
        norm = normalise(np.round(rng.random((30, 40)), 2))  # many ties
        truth_in = rng.random((30, 40)) < 0.3
        outside = int(rng.integers(0, 50))  # truth pixels off the map (outside the crop)
        curve = IouCurve.of(norm, truth_in, int(truth_in.sum()) + outside)
        for t in [0.0, 0.1, 0.2, 0.25, 0.5, 0.73, 0.99, 1.0]:
            pred = norm > t
            inter = int((pred & truth_in).sum())
            union = int(pred.sum()) + int(truth_in.sum()) + outside - inter
            direct = inter / union if union else nan
            tp_only = direct if pred.any() and (truth_in.sum() + outside) else nan
            assert same(curve.iou(t, False), direct) and same(curve.iou(t, True), tp_only)
    empty = IouCurve.of(None, None, 7)
    assert math.isnan(empty.iou(0.3, True)) and empty.iou(0.3, False) == 0.0


def test_grid_threshold_follows_tune_heatmap_threshold():
    assert len(TUNING_GRID) == 7 and TUNING_GRID[0] == 0.2 and round(TUNING_GRID[-1], 1) == 0.8
    # One case, values 0.1 .. 0.9 in 9 columns, truth = the top 4 columns (>= 0.6):
    # t in [0.5, 0.6) keeps exactly the truth. Grid value 0.5 (0.5000000000000001 > 0.5) keeps
    # 0.6..0.9 -> IoU 1: the winner, reported rounded to 0.5.
    norm = np.tile(np.arange(1, 10, dtype=np.float32) / 10, (3, 1))
    truth = norm >= np.float32(0.6)
    curve = IouCurve.of(norm, truth, int(truth.sum()))
    assert grid_threshold([curve]) == 0.5
    # nothing counts (no truth): the official picks the first candidate
    assert grid_threshold([IouCurve.of(norm, None, 0)]) == 0.2
    # ties: the first of equal maxima (a two-level map: every t in [0.2, 0.8] gives the same IoU)
    two = np.zeros((4, 4), np.float32)
    two[:2] = 1.0
    assert grid_threshold([IouCurve.of(two, two > 0, 8)]) == 0.2


def test_search_threshold_rounds_ties_and_nan():
    # a flat mIoU: every round keeps the largest tied candidate, t + step: 0.5 + 0.25 (1 + ... + 2^-9)
    assert search_threshold(lambda t: 0.3) == 0.5 + 0.5 * (1 - 2**-10)
    assert search_threshold(lambda t: nan) == 0.5  # nothing counts: the start
    # a unimodal one converges to its peak within the last step
    t = search_threshold(lambda t: -((t - 0.3) ** 2))
    assert abs(t - 0.3) <= 0.25 / 2**9
    # NaN candidates are dropped, not chosen
    assert search_threshold(lambda t: nan if t > 0.5 else t) == pytest.approx(0.5)


def test_clip_to_unit():
    m = np.array([-300.0, -200.0, 0.0, 100.0, 200.0, 500.0], np.float32)
    assert clip_to_unit(m).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


# --- the protocols on one non-square case ---------------------------------------------------


def _non_square_case(positive: bool = True) -> MapCase:
    """A 40x60 image: the crop is columns 10..49, the model frame 20x20 (2 px per model pixel).
    The map is 1 on model columns 0-4 (native crop columns 10..19), 0 elsewhere. Truth: native
    rows 0-39, columns 0-19 (half outside the crop)."""
    m = np.zeros((20, 20), np.float32)
    m[:, 0:5] = 1.0
    truth = np.zeros((40, 60), bool)
    truth[:, 0:20] = True
    crop = center_crop_box(40, 60)
    assert (crop.top, crop.left, crop.side) == (0, 10, 40)
    return MapCase("A", "raw", m, crop, (40, 60), positive, truth if positive else None, True, 0.8)


def test_chexlocalize_protocol_on_a_non_square_image():
    """Crop placement: the resized map is 1 on crop columns 0..8, 0.75 at 9, 0.25 at 10, 0 beyond
    (source (c + 0.5) / 2 - 0.5). Its first argmax, native (0, 10), lies in the truth: hit. Otsu
    on levels 255 (9 cols), 191 (1), 63 (1), 0 (29) keeps 255 and 191: native columns 10..19,
    IoU = 400 / 800 (truth 40 x 20 = 800 px, half outside the crop, never predicted)."""
    p = CheXlocalizeProtocol()
    out = p.score(_non_square_case())
    assert out["hit_rate"] == 1.0
    assert out["miou_tp_only"] == pytest.approx(0.5) and out["miou_tp_fp_fn"] == pytest.approx(0.5)
    neg = p.score(_non_square_case(positive=False))
    assert math.isnan(neg["hit_rate"]) and math.isnan(neg["miou_tp_only"])
    assert neg["miou_tp_fp_fn"] == 0.0  # a region against empty truth


def test_medicalpatchnet_protocol_stretches_the_crop_map_over_the_whole_image():
    """Stretched over 60 columns (x3): clip_to_unit maps 1 -> 0.5025, 0 -> 0.5 (min-max
    normalised back to 1 and 0). Native column c samples (c + 0.5) / 3 - 0.5: columns 0..13 see
    1 (source <= 4), column 14: 2/3, 15: 1/3, 16 onwards 0. Threshold 0.5: columns 0..14 ->
    600 px, all inside the truth: IoU 600 / 800; the peak (0, 0) is a hit. Under crop placement
    (chexlocalize) the same truth scored 0.5."""
    p = MedicalPatchNetProtocol(0.5)
    out = p.score(_non_square_case())
    assert out["hit_rate"] == 1.0
    assert out["miou_tp_only"] == pytest.approx(600 / 800) and out["miou_tp_fp_fn"] == pytest.approx(
        600 / 800
    )
    d = p.describe(8, ("raw", "scaled"))
    assert any("stretched" in line for line in d["deviations"])
    assert any("S=8" in line for line in d["deviations"]) and any(
        "scaled-published" in x for x in d["deviations"]
    )


def test_medicalpatchnet_tuning_picks_the_threshold_from_the_tuning_split():
    """On the stretched case IoU(t) is 640/800 for t in [0, 1/3) (columns 0..15), 600/800 on
    [1/3, 2/3), 560/800 on [2/3, 1). The search: .25 beats .5, .75; then ties keep the largest
    candidate below 1/3 each round: .25, .3125, .3125, .328125, .328125, .33203125, .33203125,
    .3330078125, .3330078125."""
    p = MedicalPatchNetProtocol()
    assert p.needs_tuning()
    p.tune("raw", "A", [p.tuning_sample(_non_square_case())])
    assert p.thresholds[("raw", "A", "miou_tp_only")] == 0.3330078125
    assert p.thresholds[("raw", "A", "miou_tp_fp_fn")] == 0.3330078125
    assert p.score(_non_square_case())["miou_tp_only"] == pytest.approx(640 / 800)


def test_cxr_edge_protocol_on_the_non_square_case():
    """Model frame: truth columns 0..19 of 60 -> crop columns 0..9 -> model columns 0..4. The
    map is 1 there: hit, and the region (>= 0.5) is exactly model columns 0..4: IoU 1."""
    out = CxrEdgeProtocol().score(_non_square_case())
    assert out == {"hit_rate": 1.0, "miou": 1.0}


def test_case_iou_counts_truth_outside_the_map():
    native = crop_placed(np.ones((4, 4)), CropBox(0, 2, 4), (4, 8))
    truth = np.zeros((4, 8), bool)
    truth[:, 0:4] = True  # half off the crop
    region = np.zeros((4, 4), bool)
    region[:, 0:2] = True  # native columns 2..3
    assert case_iou(native, region, truth, True) == pytest.approx(8 / 16)
    assert math.isnan(case_iou(native, None, truth, True)) and case_iou(native, None, truth, False) == 0.0


def test_protocol_names():
    assert parse_protocols("all") == PROTOCOLS
    assert parse_protocols("cxr-edge,chexlocalize") == ("chexlocalize", "cxr-edge")
    from cxr_edge.errors import CxrEdgeError

    with pytest.raises(CxrEdgeError, match="--protocol"):
        parse_protocols("gradcam")
    assert make_protocol("chexlocalize").rule == "otsu"  # type: ignore[attr-defined]
    assert make_protocol("medicalpatchnet").rule == "tuned"  # type: ignore[attr-defined]


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_draws_are_the_official_ones():
    np.random.seed(0)  # what CheXlocalize's eval.py does, then np.random.choice per replicate
    official = np.stack([np.random.choice(7, size=7, replace=True) for _ in range(50)])
    assert np.array_equal(bootstrap_indices(7, 50, 0), official)


def test_summarize_against_a_plain_loop():
    rng = np.random.default_rng(2)
    table = rng.random((25, 3))
    table[rng.random((25, 3)) < 0.3] = np.nan  # images that do not count
    table[:, 2] = np.nan
    table[0, 2] = 0.25  # one image counts for the third column
    idx = bootstrap_indices(25, 200, 4)
    per, avg = summarize(table, idx)
    for c in range(3):
        reps = []
        for row in idx:
            vals = [v for v in table[row, c] if not np.isnan(v)]
            reps.append(sum(vals) / len(vals) if vals else nan)
        ordered = sorted(reps, key=lambda v: (np.isnan(v), v))  # NaN last, as pandas sorts
        kept = [v for v in reps if not np.isnan(v)]
        assert same(per[c].value, float(np.nanmean(table[:, c])))
        assert same(per[c].mean, sum(kept) / len(kept))
        assert same(per[c].lower, ordered[int(0.025 * 200) - 1]) and same(
            per[c].upper, ordered[int(0.975 * 200) - 1]
        )
        assert per[c].cases == int((~np.isnan(table[:, c])).sum())
    assert math.isnan(per[2].upper)  # most replicates miss the one image: NaN sorts last
    assert same(avg.value, float(np.mean([p.value for p in per])))
    mean, lower, upper = interval(np.array([3.0] * 100))
    assert (mean, lower, upper) == (3.0, 3.0, 3.0)
    point, _ = summarize(table, None)
    assert math.isnan(point[0].lower) and same(point[0].value, per[0].value)
