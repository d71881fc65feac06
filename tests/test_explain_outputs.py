"""Explanations in the outputs (issue 17): overlay outlines and footer, report fields, the
findings table and ``infer --progressive``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxr_edge.assets import sample_image_path
from cxr_edge.cli import app
from cxr_edge.explain.decisive import decisive_patches
from cxr_edge.explain.rationale import rationale
from cxr_edge.explain.shortcuts import shortcut_warnings
from cxr_edge.pipeline import CxrEdge
from cxr_edge.preprocess import CropBox
from cxr_edge.render import (
    OUTLINE_RGB,
    draw_patch_outlines,
    explanation_lines,
    finding_frame,
    finding_image,
    finding_overlay,
    frame_overlay,
)
from cxr_edge.report import build_report, report_json

runner = CliRunner()


@pytest.fixture(scope="module")
def sample_prediction():  # type: ignore[no-untyped-def]
    return CxrEdge.load().predict(sample_image_path(), steps=2)


def test_patch_outlines_sit_on_the_patch_squares() -> None:
    rgb = np.full((300, 340, 3), 90, dtype=np.uint8)
    crop = CropBox(top=0, left=20, side=300)
    out = draw_patch_outlines(rgb.copy(), crop, [(2, 5)], grid=8)
    # patch (2, 5): rows 2*300/8 = 75 .. 3*300/8 = 112.5 -> 112 (half to even), last row 111;
    # cols 20 + 187.5 -> 208 .. 20 + 225 - 1 = 244
    top, bottom, left, right = 75, 111, 208, 244
    amber = np.all(out == np.array(OUTLINE_RGB, np.uint8), axis=2)
    assert (
        amber[top, left + 10]
        and amber[bottom, left + 10]
        and amber[top + 10, left]
        and amber[top + 10, right]
    )
    assert np.array_equal(
        out[top + 5 : bottom - 4, left + 5 : right - 4], rgb[top + 5 : bottom - 4, left + 5 : right - 4]
    )
    changed = np.argwhere(np.any(out != rgb, axis=2))
    assert changed[:, 0].min() >= top - 2 and changed[:, 0].max() <= bottom + 2
    assert changed[:, 1].min() >= left - 2 and changed[:, 1].max() <= right + 2
    assert np.array_equal(draw_patch_outlines(rgb.copy(), crop, [], grid=8), rgb)


def test_finding_overlay_adds_outlines_and_footer_lines_only(sample_prediction) -> None:  # type: ignore[no-untyped-def]
    pred = sample_prediction
    label = "Pleural Effusion"
    plain_image, scale = finding_image(pred, label, explain=False)
    image, _ = finding_image(pred, label)
    # the image part differs only on the decisive patches' outlines (amber inside dark)
    d = decisive_patches(pred, label)
    outlines = draw_patch_outlines(plain_image.copy(), pred.crop, d.patches, pred.metadata.grid)
    assert np.array_equal(image, outlines) and not np.array_equal(image, plain_image)
    changed = np.any(image != plain_image, axis=2)
    assert changed.mean() < 0.05
    # the frame: the same strips plus the explanation lines in the footer
    lines = explanation_lines(pred, label)
    assert lines[0] == rationale(pred, label).text + " Decisive patches outlined in amber."
    assert lines[1:] == [f"Warning: {w.message}" for w in shortcut_warnings(pred, [label])]
    want = frame_overlay(image, finding_frame(pred, label, scale, lines))
    assert np.array_equal(finding_overlay(pred, label), want)
    plain = finding_overlay(pred, label, explain=False)
    assert np.array_equal(plain, frame_overlay(plain_image, finding_frame(pred, label, scale)))
    assert want.shape[0] > plain.shape[0]  # the footer strip


def test_report_carries_the_explanations(sample_prediction) -> None:  # type: ignore[no-untyped-def]
    report = build_report(sample_prediction)
    json.loads(report_json(report))  # strict JSON
    for f in report["findings"]:
        d = f["decisive_patches"]
        assert set(d) == {
            "count",
            "patches",
            "share",
            "call",
            "reference",
            "reference_probability",
            "reverses",
        }
        assert d["call"] == ("positive" if f["positive"] else "negative")
    effusion = next(f for f in report["findings"] if f["label"] == "Pleural Effusion")
    assert effusion["positive"] and 1 <= effusion["decisive_patches"]["count"] <= 10
    assert report["reported"] == ["Pleural Effusion"]
    rationale = report["rationale"]
    assert rationale["sides"] == "image" and [r["label"] for r in rationale["findings"]] == [
        "Pleural Effusion"
    ]
    text = rationale["findings"][0]["text"]
    assert text.startswith("Pleural Effusion: probability 1.00 (threshold 0.056), positive.")
    assert "lower zone" in text and f"rests on {effusion['decisive_patches']['count']} of 64 patches" in text
    assert report["shortcut_warnings"] == []


def test_infer_progressive_writes_the_final_level(tmp_path: Path) -> None:
    out_p, out_d = tmp_path / "p", tmp_path / "d"
    args = [str(sample_image_path()), "--overlay", "--steps", "4", "--save-maps"]
    result = runner.invoke(app, ["infer", *args, "--progressive", "-o", str(out_p)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "S=4 of 4" in result.stdout and "rests on" in result.stdout and "decisive" in result.stdout
    direct = runner.invoke(app, ["infer", *args, "-o", str(out_d)], catch_exceptions=False)
    assert direct.exit_code == 0, direct.output
    rp = json.loads((out_p / "sample_chest.json").read_text())
    rd = json.loads((out_d / "sample_chest.json").read_text())
    assert rp["steps"] == rd["steps"] == 4
    for a, b in zip(rp["findings"], rd["findings"]):
        assert a["label"] == b["label"] and a["positive"] == b["positive"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
        assert a["decisive_patches"]["patches"] == b["decisive_patches"]["patches"]
    assert rp["overlays"] == rd["overlays"] and (out_p / rp["overlays"][0]).is_file()
    mp, md = np.load(out_p / "sample_chest.maps.npz"), np.load(out_d / "sample_chest.maps.npz")
    assert int(mp["steps"]) == 4
    assert np.abs(mp["scaled"] - md["scaled"]).max() <= 1e-4 * np.abs(md["scaled"]).max()


def test_progressive_table_is_redrawn_in_place_on_a_terminal(sample_prediction) -> None:  # type: ignore[no-untyped-def]
    import io

    from rich.console import Console

    from cxr_edge.commands.infer import LevelDisplay
    from cxr_edge.outputs import ImageResult

    buf = io.StringIO()
    display = LevelDisplay(Console(file=buf, force_terminal=True, width=120), "scaled", 2)
    edge = CxrEdge.load()
    for pred in edge.predict_progressive(sample_image_path(), steps=2):
        display.level(ImageResult(pred, {}, ("Pleural Effusion",), ()))
    assert display.done() and not display.done()
    text = buf.getvalue()
    assert "S=1 of 2" in text and "S=2 of 2" in text and "\x1b[" in text  # cursor moves: one table, redrawn
    quiet = LevelDisplay(Console(file=io.StringIO(), force_terminal=False), "scaled", 2)
    quiet.level(ImageResult(sample_prediction, {}, (), ()))
    assert not quiet.done()


def test_explanations_reduce_the_image_once_and_match_each_function(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One block reduction of the crop per image (shared by the overlays, the report, the table
    and a progressive run's levels), and the same explanations as each function alone."""
    import dataclasses

    from cxr_edge.commands.infer import findings_table
    from cxr_edge.explain import body
    from cxr_edge.explain.explanations import explain
    from cxr_edge.explain.rationale import rationale_json
    from cxr_edge.outputs import OutputOptions, infer_progressive_to_files, write_result_set

    calls = []
    original = body._blocks
    monkeypatch.setattr(body, "_blocks", lambda square: calls.append(1) or original(square))
    edge = CxrEdge.load()
    pred = edge.predict(sample_image_path(), steps=2)
    shown = ("Pleural Effusion", "Cardiomegaly", "Pneumothorax")
    result = write_result_set(pred, "x", OutputOptions(tmp_path / "a", overlays=True, findings=shown))
    findings_table(result.prediction, result.shown, "scaled", None, result.explanations)
    assert len(calls) == 1
    calls.clear()
    levels = list(
        infer_progressive_to_files(edge, sample_image_path(), "x", OutputOptions(tmp_path / "b"), 4)
    )
    assert len(levels) == 3 and len(calls) == 1
    # a turned frame: the body mask and the lung fields each from their own orientation
    turned = dataclasses.replace(pred, info={**pred.info, "patient_orientation": ["R", "F"]})
    for p in (pred, turned):
        calls.clear()
        ex = explain(p, list(shown))
        assert len(calls) == (1 if p is pred else 2)
        assert ex.rationale_json(list(shown)) == rationale_json(p, list(shown))
        assert ex.shortcut_warnings(list(shown)) == shortcut_warnings(p, list(shown))
        assert all(ex.decisive_of(f.label) == decisive_patches(p, f.label) for f in p.findings)
        assert explanation_lines(p, shown[1], explanations=ex) == explanation_lines(p, shown[1])
