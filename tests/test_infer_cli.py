"""``cxr-edge infer`` end to end: faithfulness against an independent reference, outputs, errors.

Reference (written apart from the product): the 8-bit image is derived in the test (PIL's luma
formula for RGBA, the high byte for 16-bit), preprocessing is torch's antialiased bilinear
``interpolate`` on the centre crop, the shift/average is tests/reference_math.py in float64, and
the PyTorch ``tiny_model`` computes the patch logits. The product runs the exported ONNX through
the CLI and its ``--save-maps`` output is compared.

Speed: most faithfulness cases use the tiny model's ONNX with a 128-pixel model frame
(2 x 2 patches of 64), so S = 8 is 256 patches; one case runs the real 512 frame.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference_math import reference_maps_from_logits, reference_pairs, reference_patches, reference_shifted
from typer.testing import CliRunner

from cxr_edge.cli import app

runner = CliRunner()


# --- helpers -----------------------------------------------------------------------------------


def invoke(*args: str) -> object:
    return runner.invoke(app, ["infer", *args], catch_exceptions=False)


def torch_preprocess(gray: np.ndarray, image_size: int) -> np.ndarray:
    """Centre square crop, ToTensor's /255, torch antialiased bilinear resize -> float64."""
    import torch

    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(gray[top : top + side, left : left + side].astype(np.float32) / np.float32(255))
    out = torch.nn.functional.interpolate(
        crop[None, None], size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].double().numpy()


def reference_for(model: object, gray: np.ndarray, image_size: int, steps: int) -> dict[str, np.ndarray]:
    """The reference maps: reference_math's literal shifted copies and patches, all classified in
    one PyTorch forward (batched only for speed), then reference_math's shift-back average."""
    import torch

    image = torch_preprocess(gray, image_size)
    patches = np.stack(
        [reference_patches(reference_shifted(image, dr, dc)) for dr, dc in reference_pairs(steps)]
    )
    with torch.no_grad():
        x = torch.from_numpy(patches.reshape(-1, 1, 64, 64).astype(np.float32))
        logits = model(x).double().numpy()  # type: ignore[operator]
    return reference_maps_from_logits(logits.reshape(len(patches), patches.shape[1], -1), steps, image_size)


def assert_maps_match(npz_path: Path, ref: dict[str, np.ndarray]) -> None:
    saved = np.load(npz_path)
    for kind in ("raw", "scaled"):
        got, want = saved[kind], ref[kind]
        assert got.dtype == np.float32 and got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= 1e-4, f"{kind}: max error {err:.2e} of the map's largest magnitude"
    assert saved["logits"].dtype == np.float32
    err = np.abs(saved["logits"] - ref["logits"]).max() / np.abs(ref["raw"]).max()
    assert err <= 1e-4, f"logits: max error {err:.2e}"


def xray_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    body = 150 - 90 * ((x - 0.5) ** 2 + (y - 0.5) ** 2) + 60 * np.sin(9 * x) * np.cos(6 * y)
    return np.clip(body + rng.normal(0, 12, size=(h, w)), 0, 255).astype(np.uint8)


def pil_luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's documented RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def write_input(kind: str, path: Path, seed: int) -> np.ndarray:
    """Write a test image of ``kind``; return the 8-bit "L" image the reference sees."""
    import cv2

    gray = xray_like(283, 367, seed)  # odd and non-square, above the 256-px minimum
    if kind == "gray8":
        cv2.imwrite(str(path), gray)
        return gray
    if kind == "rgba":
        rng = np.random.default_rng(seed)
        tint = rng.integers(-20, 21, size=(283, 367, 3))
        rgb = np.clip(gray[:, :, None].astype(np.int64) + tint, 0, 255).astype(np.uint8)
        alpha = rng.integers(0, 256, size=(283, 367, 1), dtype=np.uint8)  # ignored, as PIL does
        cv2.imwrite(str(path), np.concatenate([rgb[:, :, ::-1], alpha], axis=2))  # OpenCV: BGRA
        return pil_luma(rgb)
    if kind == "gray16":
        cv2.imwrite(str(path), gray.astype(np.uint16) * 257)  # 8-bit widened by bit replication
        return gray
    raise ValueError(kind)


@pytest.fixture(scope="module")
def tiny128(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_onnx`` with a 128-pixel model frame in its metadata (same weights, 2 x 2 patches)."""
    import onnx

    from cxr_edge.metadata import ModelMetadata, write_onnx_metadata

    model = onnx.load(str(tiny_onnx))
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    write_onnx_metadata(model, metadata.with_(image_size=128))
    path = tmp_path_factory.mktemp("tiny128") / "tiny128.onnx"
    onnx.save(model, str(path))
    return path


# --- faithfulness ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gray8", "rgba", "gray16"])
def test_infer_reproduces_the_reference(kind: str, tiny_model: object, tiny128: Path, tmp_path: Path) -> None:
    image = tmp_path / f"case-{kind}.png"
    gray = write_input(kind, image, seed=len(kind))
    for steps in (1, 2, 4, 8):
        out = tmp_path / f"s{steps}"
        result = invoke(
            str(image), "--steps", str(steps), "--save-maps", "--model", str(tiny128), "--out", str(out)
        )
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert_maps_match(out / f"{image.stem}.maps.npz", reference_for(tiny_model, gray, 128, steps))
        report = json.loads((out / f"{image.stem}.json").read_text())
        assert report["steps"] == steps and report["original_shape"] == [283, 367]


def test_infer_reproduces_the_reference_in_the_512_frame(
    tiny_model: object, tiny_onnx: Path, tmp_path: Path
) -> None:
    image = tmp_path / "odd.png"
    gray = write_input("gray8", image, seed=11)
    for steps in (1, 2):
        out = tmp_path / f"s{steps}"
        result = invoke(
            str(image), "-s", str(steps), "--save-maps", "--model", str(tiny_onnx), "-o", str(out)
        )
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        maps = np.load(out / "odd.maps.npz")
        assert maps["raw"].shape == (14, 512, 512) and len(maps["labels"]) == 14
        assert_maps_match(out / "odd.maps.npz", reference_for(tiny_model, gray, 512, steps))


def test_dicom_monochrome1_reproduces_the_reference(
    shared_cxr: Path, tiny_model: object, tiny128: Path, tmp_path: Path
) -> None:
    import pydicom

    from cxr_edge.io import load_xray

    dcm = shared_cxr / "dicom" / "CR-MONO1-10-chest.dcm"
    ds = pydicom.dcmread(dcm, force=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # this old sample has no file meta
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else pydicom.uid.ExplicitVRLittleEndian
        )
    gray = load_xray(dcm).pixels  # DICOM windowing is io's contract (tested there); start from it
    # MONOCHROME1 stores bright = low values: the 8-bit image must be inverted relative to them.
    assert np.corrcoef(gray.ravel().astype(float), ds.pixel_array.ravel().astype(float))[0, 1] < -0.5
    for steps in (1, 4):
        out = tmp_path / f"s{steps}"
        result = invoke(str(dcm), "-s", str(steps), "--save-maps", "--model", str(tiny128), "-o", str(out))
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert_maps_match(out / f"{dcm.stem}.maps.npz", reference_for(tiny_model, gray, 128, steps))


# --- outputs and options -----------------------------------------------------------------------


def test_overlays_json_and_maps_files(tiny128: Path, tmp_path: Path) -> None:
    import cv2

    image = tmp_path / "chest.png"
    write_input("gray8", image, seed=3)
    out = tmp_path / "out"
    result = invoke(
        str(image), "--overlay", "--save-maps", "--model", str(tiny128), "-o", str(out), "-s", "2"
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    report = json.loads((out / "chest.json").read_text())
    for key in ("image", "model", "steps", "map", "findings", "backend", "timings_ms"):
        assert key in report
    assert report["model"]["sha256"] and report["model"]["path"] == str(tiny128)
    assert report["backend"] == "onnxruntime-cpu" and report["map"] == "scaled"
    for f in report["findings"]:
        assert set(f) == {"label", "logit", "probability", "threshold", "positive", "decisive_patches"}
        assert f["probability"] == pytest.approx(1 / (1 + np.exp(-f["logit"])), abs=1e-6)
    # No thresholds in this model: the top 3 by probability get overlays.
    top3 = sorted(report["findings"], key=lambda f: -f["probability"])[:3]
    assert report["reported"] == [f["label"] for f in top3]
    pngs = sorted(p.name for p in out.glob("chest.*.png"))
    assert len(pngs) == 3 and sorted(report["overlays"]) == pngs
    for name in pngs:
        overlay = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        # The X-ray at its original resolution, framed: a legend strip below (and a banner).
        assert overlay.shape[1] == 480 and overlay.shape[0] > 283 and overlay.shape[2] == 3
    assert not list(out.glob("*.part")) and [p.name for p in out.glob(".*")] == [".cxr-edge.lock"]
    table = result.stdout  # type: ignore[attr-defined]
    assert "chest.png" in table and top3[0]["label"] in table


def test_findings_option_and_raw_map(tiny128: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    write_input("gray8", image, seed=4)
    out = tmp_path / "out"
    args = [
        "--overlay",
        "--findings",
        "pleural effusion,Cardiomegaly",
        "--map",
        "raw",
        "--model",
        str(tiny128),
    ]
    result = invoke(str(image), *args, "-o", str(out), "-s", "1")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in out.glob("*.png")) == ["x.cardiomegaly.png", "x.pleural-effusion.png"]
    assert json.loads((out / "x.json").read_text())["map"] == "raw"


def test_json_flag_prints_only_json(tiny128: Path, tmp_path: Path) -> None:
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        write_input("gray8", images[-1], seed=20 + i)
    result = invoke(
        *map(str, images), "--json", "--model", str(tiny128), "-o", str(tmp_path / "o"), "-s", "1"
    )
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    reports = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert [Path(r["image"]).name for r in reports] == ["img0.png", "img1.png"]
    assert reports[0] == json.loads((tmp_path / "o" / "img0.json").read_text())


def test_folders_expand_and_one_bad_file_fails_alone(tiny128: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_input("gray8", folder / "good.png", seed=5)
    write_input("gray8", folder / "sub" / "deep.png", seed=6)
    write_input("gray8", folder / "sub" / "good.png", seed=8)  # same name, other folder
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    result = invoke(str(folder), "--overlay", "--model", str(tiny128), "-o", str(out), "-s", "1")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # type: ignore[attr-defined]
    assert any("broken.png" in line for line in errors)
    assert (out / "deep.json").is_file() and not (out / "good.json").exists()
    # Same name from two folders: each gets a stable hash of its path, neither is overwritten.
    goods = sorted(json.loads(p.read_text())["image"] for p in out.glob("good-*.json"))
    assert goods == sorted([str(folder / "good.png"), str(folder / "sub" / "good.png")])
    assert not list(out.glob("broken*")) and not list(out.glob("*.part"))
    as_json = invoke(str(folder), "--json", "--model", str(tiny128), "-o", str(out), "-s", "1")
    reports = json.loads(as_json.stdout)  # type: ignore[attr-defined]
    entries = {str(Path(r["image"]).relative_to(folder)): r for r in reports}
    assert as_json.exit_code == 1 and len(reports) == 4 and "broken.png" in entries["broken.png"]["error"]
    assert "findings" in entries["sub/deep.png"] and "findings" in entries["sub/good.png"]


def test_exit_codes_for_usage_errors_and_all_failed(tiny128: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    write_input("gray8", image, seed=7)
    model = ["--model", str(tiny128), "-o", str(tmp_path / "o")]
    bad_steps = invoke(str(image), "-s", "3", *model)
    assert bad_steps.exit_code == 2 and "power of two" in bad_steps.stderr  # type: ignore[attr-defined]
    bad_finding = invoke(str(image), "--findings", "Unicorn", *model)
    assert bad_finding.exit_code == 2 and "Unicorn" in bad_finding.stderr  # type: ignore[attr-defined]
    bad_map = invoke(str(image), "--map", "fancy", *model)
    assert bad_map.exit_code == 2  # type: ignore[attr-defined]
    missing = invoke(str(tmp_path / "nope.png"), *model)
    assert missing.exit_code == 2 and "nope.png" in missing.stderr  # type: ignore[attr-defined]
    no_model = invoke(str(image), "--model", str(tmp_path / "none.onnx"))
    assert no_model.exit_code == 2 and "none.onnx" in no_model.stderr  # type: ignore[attr-defined]
    # No result files; only the batch index (which lists the missing file) and the folder lock.
    assert {p.name for p in (tmp_path / "o").iterdir()} <= {"index.csv", ".cxr-edge.lock"}


# --- real X-rays -------------------------------------------------------------------------------


def test_real_xrays_with_overlays(shared_cxr: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    import cv2

    pngs = [
        shared_cxr / "images" / "nih14" / "00000075_000.png",  # 8-bit L
        shared_cxr / "images" / "nih14" / "00000100_000.png",  # stored as RGBA
        shared_cxr
        / "images"
        / "tbx11k"
        / min(p.name for p in (shared_cxr / "images" / "tbx11k").glob("*.png")),
    ]
    dcm = shared_cxr / "dicom" / "RG1_J2KI.dcm"  # MONOCHROME1, JPEG 2000, 1955 x 1841
    inputs = [*pngs, dcm]
    out = tmp_path / "out"
    result = invoke(
        *map(str, inputs), "--overlay", "--save-maps", "--model", str(tiny_onnx), "-o", str(out), "-s", "1"
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    for path in inputs:
        report = json.loads((out / f"{path.stem}.json").read_text())
        h, w = report["original_shape"]
        assert len(report["findings"]) == 14 and len(report["overlays"]) == 3
        for name in report["overlays"]:
            overlay = cv2.imread(str(out / name), cv2.IMREAD_COLOR)
            assert overlay.shape[0] > h and overlay.shape[1] == max(w, 480)  # framed, never covered
        maps = np.load(out / f"{path.stem}.maps.npz")
        assert np.isfinite(maps["scaled"]).all() and np.abs(maps["raw"]).max() > 0
    assert json.loads((out / f"{dcm.stem}.json").read_text())["original_shape"] == [1955, 1841]


def test_real_out_of_scope_dicom_is_refused(shared_cxr: Path, tiny128: Path, tmp_path: Path) -> None:
    tibia = shared_cxr / "dicom" / "out_of_scope" / "RG3_J2KR_tibia.dcm"
    copy = tmp_path / tibia.name
    shutil.copy(tibia, copy)
    result = invoke(str(copy), "--model", str(tiny128), "-o", str(tmp_path / "o"), "-s", "1")
    assert result.exit_code == 2
    assert tibia.name in result.stderr and len(result.stderr.strip().splitlines()) == 2  # type: ignore[attr-defined]
    forced = invoke(
        str(copy), "--allow-non-chest", "--model", str(tiny128), "-o", str(tmp_path / "o"), "-s", "1"
    )
    assert forced.exit_code == 0 and "warning:" in forced.stderr  # type: ignore[attr-defined]
