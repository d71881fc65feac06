"""Runs docs/api_example.py, the README's Python API example, exactly as written."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "api_example.py"


def check_example_results(namespace: dict, capsys: pytest.CaptureFixture[str]) -> None:
    pred = namespace["pred"]
    h, w = pred.gray.shape
    rgb = namespace["rgb"]  # framed: banner strip above, legend strip below, never over the image
    assert rgb.shape[0] > h and rgb.shape[1] == max(w, 480) and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    size = pred.metadata.image_size
    assert namespace["heat"].shape == (size, size) and namespace["heat"].dtype == np.float32
    report = json.loads(json.dumps(namespace["report"]))
    assert report["steps"] == 4 and len(report["findings"]) == len(pred.metadata.labels)
    printed = capsys.readouterr().out.splitlines()
    top = max(pred.findings, key=lambda f: f.probability)
    assert len(printed) == 3 and printed[0].startswith(top.label)


def test_example_with_the_bundled_assets(capsys: pytest.CaptureFixture[str]) -> None:
    from cxr_edge.assets import ASSETS_DIR, DEMO_MODEL_NAME, SAMPLE_IMAGE_NAME

    if not (ASSETS_DIR / DEMO_MODEL_NAME).is_file() or not (ASSETS_DIR / SAMPLE_IMAGE_NAME).is_file():
        pytest.skip("the bundled demo model / sample image are not in this checkout yet")
    check_example_results(runpy.run_path(str(EXAMPLE)), capsys)


def test_example_runs_with_any_model(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same file, with the bundled assets swapped for the tiny test model and a made-up image."""
    import cv2

    import cxr_edge.assets

    image = tmp_path / "chest.png"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:260] / 300.0  # smooth, radiograph-like: passes the input checks
    made_up = 140 + 70 * np.sin(8 * x) * np.cos(5 * y) + rng.normal(0, 8, size=(300, 260))
    cv2.imwrite(str(image), np.clip(made_up, 0, 255).astype(np.uint8))
    monkeypatch.setattr(cxr_edge.assets, "default_model_path", lambda: tiny_onnx)
    monkeypatch.setattr(cxr_edge.assets, "sample_image_path", lambda: image)
    check_example_results(runpy.run_path(str(EXAMPLE)), capsys)


def test_missing_assets_give_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cxr_edge.assets
    from cxr_edge.errors import CxrEdgeError

    monkeypatch.setattr(cxr_edge.assets, "ASSETS_DIR", tmp_path)
    with pytest.raises(CxrEdgeError, match="demo model is missing"):
        cxr_edge.assets.default_model_path()
    with pytest.raises(CxrEdgeError, match="sample image is missing"):
        cxr_edge.assets.sample_image_path()


def test_readme_shows_the_example_verbatim() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in readme


def test_ci_runs_the_readme_test_command() -> None:
    root = EXAMPLE.parents[1]
    readme = (root / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("python3 -m pytest -q"))
    assert command in (root / ".ci" / "run").read_text().splitlines()
