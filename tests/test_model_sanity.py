"""Issue 13: model metadata validated at load (one line naming the model) and non-finite
logits an error naming the model, never "negative"."""

from __future__ import annotations

import json
from pathlib import Path

import hostile_corpus as hc
import numpy as np
import pytest
from typer.testing import CliRunner

from cxr_edge.cli import app
from cxr_edge.errors import CxrEdgeError, ModelError
from cxr_edge.metadata import ModelMetadata

runner = CliRunner()


def demo_metadata() -> dict[str, object]:
    from cxr_edge.assets import default_model_path

    raw: dict[str, object] = json.loads(ModelMetadata.from_onnx(default_model_path()).to_json())
    return raw


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"labels": []}, "no labels"),
        ({"labels": ["A", "B", "a", "C", "D", "E"]}, "given more than once"),
        ({"labels": ["A", "", "C", "D", "E", "F"]}, "not a printable, non-empty name"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"patch_size": 48}, "not a multiple of patch_size"),
        ({"image_size": 2**20}, "over 2048 px"),
        ({"image_size": 2048, "patch_size": 16}, "over 64"),
        ({"thresholds": [0.5, 0.5]}, "2 thresholds for 6 labels"),
        ({"thresholds": ["NaN", 0.1, 0.1, 0.1, 0.1, 0.1]}, "threshold nan"),
        ({"thresholds": [1.5, 0.1, 0.1, 0.1, 0.1, 0.1]}, "strictly between 0 and 1"),
    ],
)
def test_broken_metadata_is_one_line_naming_the_model(
    change: dict[str, object], fragment: str, tmp_path: Path
) -> None:
    raw = {**demo_metadata(), **change}
    model = hc.nan_onnx_model(tmp_path / "broken.onnx", json.dumps(raw))
    image = tmp_path / "a.png"
    image.write_bytes(hc.png_bytes(hc.xray_like(300, 320)))
    result = runner.invoke(app, ["infer", str(image), "--model", str(model), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()  # type: ignore[attr-defined]
    assert line.startswith(f"error: {model}: invalid cxr-edge model metadata") and fragment in line, line
    with pytest.raises(CxrEdgeError, match="invalid cxr-edge model metadata"):
        ModelMetadata.from_json(json.dumps(raw), model)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_stop_the_batch_naming_the_model(value: float, tmp_path: Path) -> None:
    model = hc.nan_onnx_model(tmp_path / "nan.onnx", value=value)
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(hc.png_bytes(hc.xray_like(300, 320, seed=i)))
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["infer", *map(str, images), "--overlay", "-s", "1", "--model", str(model), "-o", str(out)]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # type: ignore[attr-defined]
    assert (
        errors[0].startswith(f"error: {model}: the model gave non-finite outputs")
        and str(images[0]) in errors[0]
    )
    assert "negative" not in result.stdout and "POSITIVE" not in result.stdout  # type: ignore[attr-defined]
    assert "1 failed, 1 not run" in result.stderr  # type: ignore[attr-defined]
    assert not list(out.glob("*.json")) and not list(out.glob("*.png"))


def test_non_finite_logits_raise_model_error_in_the_library(tmp_path: Path) -> None:
    from cxr_edge.pipeline import CxrEdge

    edge = CxrEdge.load(hc.nan_onnx_model(tmp_path / "nan.onnx"))
    with pytest.raises(ModelError, match="non-finite outputs") as info:
        edge.predict(hc.xray_like(300, 320), steps=1)
    assert info.value.path == str(tmp_path / "nan.onnx")


def test_non_finite_maps_of_another_postprocess_raise_model_error() -> None:
    """Finite logits, but a postprocess (e.g. float32 sums on a GPU) that overflows: the maps
    themselves are checked whenever the numpy accumulator did not build them."""
    import dataclasses
    from collections.abc import Sequence

    from cxr_edge.pipeline import CxrEdge
    from cxr_edge.postprocess import SaliencyAccumulator, SaliencyMaps

    class Overflowing:
        def __init__(self, steps: int, image_size: int, patch_size: int, num_classes: int) -> None:
            self.inner = SaliencyAccumulator(steps, image_size, patch_size, num_classes)

        def add(self, pairs: np.ndarray, logits: np.ndarray) -> None:
            self.inner.add(pairs, logits)

        def finish(self, labels: Sequence[str]) -> SaliencyMaps:
            maps = self.inner.finish(labels)
            scaled = maps.scaled.copy()
            scaled[0, 0, 0] = np.inf
            return dataclasses.replace(maps, scaled=scaled)

        def close(self) -> None:
            pass

    edge = CxrEdge.load(accumulator=Overflowing)
    with pytest.raises(ModelError, match="1 of .* scaled map"):
        edge.predict(hc.xray_like(300, 320), steps=1)


def test_a_sound_model_still_constructs() -> None:
    md = ModelMetadata(labels=("A", "B"), image_size=128, patch_size=64, thresholds=(0.2, 0.7))
    assert md.grid == 2 and md.num_classes == 2
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        ModelMetadata(patch_size=0)
    assert np.isfinite(md.thresholds).all()  # type: ignore[arg-type]
