"""Issue 13: every hostile input of the generated corpus is refused by ``cxr-edge infer`` with
exit code 2, one error line naming the file, no result file left; bombs, FIFOs and devices are
refused before anything is allocated or read (peak RSS measured in a child process)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import hostile_corpus as hc
import numpy as np
import pytest
from typer.testing import CliRunner

from cxr_edge.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
GOOD = hc.xray_like(320, 300, seed=1)
GOOD16 = GOOD.astype(np.uint16) * 257

#: name -> (bytes builder, fragment the one error line must hold)
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "half.jpg": (lambda: hc.cut_with_fake_end(hc.jpeg_bytes(GOOD), 0.5), "premature end of data"),
    "prog-half.jpg": (lambda: hc.cut_with_fake_end(hc.jpeg_bytes(GOOD, True), 0.5), "Corrupt JPEG data"),
    "prog-trunc.jpg": (lambda: hc.jpeg_bytes(GOOD, True)[:4000], "truncated JPEG"),
    "1x1.png": (lambda: hc.png_bytes(np.full((1, 1), 128, np.uint8)), "short side must be at least 256"),
    "1x5000.png": (lambda: hc.png_bytes(hc.xray_like(1, 5000)), "short side"),
    "3x60000.png": (lambda: hc.png_bytes(hc.xray_like(3, 60000)), "short side"),
    "wide.png": (lambda: hc.png_bytes(hc.xray_like(260, 900)), "aspect ratio 3.5:1"),
    "black.png": (lambda: hc.png_bytes(np.zeros((400, 400), np.uint8)), "near-constant"),
    "white.png": (lambda: hc.png_bytes(np.full((400, 400), 255, np.uint8)), "near-constant"),
    "noise.png": (
        lambda: hc.png_bytes(np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)),
        "noise-like",
    ),
    "ct-slice.png": (lambda: hc.png_bytes(hc.ct_like()), "not like a radiograph"),
    "crc.png": (
        lambda: hc.png_bytes(GOOD)[:200] + b"\x00" * 64 + hc.png_bytes(GOOD)[264:],
        "cannot decode PNG",
    ),
    "4x65535.dcm": (
        lambda: hc.dicom_bytes(hc.dicom_dataset(np.tile(GOOD16[:4, :1], (1, 65535)))),
        "short side",
    ),
    "pixels-third.dcm": (lambda: hc.dicom_truncated_pixels(GOOD16, 1 / 3), "PixelData holds 64000 bytes"),
    "nan-slope.dcm": (
        lambda: hc.dicom_bytes(hc.dicom_dataset(GOOD16, RescaleSlope="NaN")),
        "RescaleSlope nan",
    ),
    "zero-slope.dcm": (lambda: hc.dicom_bytes(hc.dicom_dataset(GOOD16, RescaleSlope="0")), "RescaleSlope 0"),
    "window-1e308.dcm": (
        lambda: hc.dicom_bytes(hc.dicom_dataset(GOOD16, WindowCenter="1e308", WindowWidth="1e308")),
        "constant image",
    ),
    "constant.dcm": (
        lambda: hc.dicom_bytes(hc.dicom_dataset(np.full((300, 300), 999, np.uint16))),
        "constant",
    ),
    "palette-missing.dcm": (lambda: hc.palette_dicom(with_palette=False), "PALETTE COLOR DICOM without"),
    "jpeg-third.dcm": (lambda: hc.dicom_jpeg(GOOD, keep=1 / 3), "no end marker"),
    "jpeg-third-eoi.dcm": (
        lambda: hc.dicom_jpeg(GOOD, keep=1 / 3, fake_end=True),
        "corrupt JPEG data in the DICOM",
    ),
    "tiff.png": (lambda: b"II*\x00" + b"\x00" * 400, "TIFF is not supported"),
}


def infer(*args: str) -> object:
    return runner.invoke(app, ["infer", *args], catch_exceptions=False)


def error_lines(result: object) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]  # type: ignore[attr-defined]


def result_files(out: Path) -> list[str]:
    """Everything in ``out`` but the batch index and the folder lock."""
    return sorted(p.name for p in out.iterdir() if p.name not in ("index.csv", ".cxr-edge.lock"))


def index_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_file_is_refused_with_one_line(name: str, tmp_path: Path) -> None:
    build, fragment = REFUSED[name]
    path = tmp_path / name
    path.write_bytes(build())
    out = tmp_path / "out"
    result = infer(str(path), "--overlay", "--save-maps", "-s", "1", "-o", str(out))
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    [line] = error_lines(result)[:1]
    assert str(path) in line and fragment in line, line
    assert [e for e in error_lines(result) if str(path) in e] == [line]  # named once, on one line
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]
    assert result_files(out) == []
    assert [(r["input"], r["status"]) for r in index_rows(out)] == [(str(path), "failed")]


def test_ct_like_png_passes_only_with_allow_non_chest(tmp_path: Path) -> None:
    path = tmp_path / "ct.png"
    path.write_bytes(hc.png_bytes(hc.ct_like()))
    result = infer(str(path), "--allow-non-chest", "-s", "1", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert any(
        line.startswith("warning:") and "not like a radiograph" in line for line in result.stderr.splitlines()
    )  # type: ignore[attr-defined]
    report = json.loads((tmp_path / "o" / "ct.json").read_text())
    assert (
        report["info"]["scope"] == "unverified" and "not like a radiograph" in report["info"]["scope_warning"]
    )


@pytest.mark.parametrize(
    ("name", "build", "scope"),
    [
        ("good.png", lambda: hc.png_bytes(GOOD), "unverified"),
        ("good.jpg", lambda: hc.jpeg_bytes(GOOD), "unverified"),
        ("good.dcm", lambda: hc.dicom_bytes(hc.dicom_dataset(GOOD16)), "header"),
        ("jpeg.dcm", lambda: hc.dicom_jpeg(GOOD), "header"),
        ("deflated.dcm", lambda: hc.dicom_deflated(320, 300, GOOD16), "header"),
        ("palette.dcm", lambda: hc.palette_dicom(with_palette=True), "header"),
    ],
)
def test_sound_files_still_load(name: str, build: Callable[[], bytes], scope: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(build())
    result = infer(str(path), "-s", "1", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    report = json.loads((tmp_path / "o" / f"{path.stem}.json").read_text())
    assert report["info"]["scope"] == scope


def test_palette_color_is_applied_like_pil(tmp_path: Path) -> None:
    from cxr_edge.io import load_xray

    path = tmp_path / "palette.dcm"
    path.write_bytes(hc.palette_dicom(with_palette=True))
    got = load_xray(path).pixels
    index = hc.xray_like(300, 320, seed=5).astype(np.int64)
    # palette entry i = (i, 0.9 i, 0.8 i) * 257 in 16 bits -> high byte; then PIL's luma.
    r, g, b = (
        ((np.arange(256) * 257 * s).astype(np.uint16) >> 8).astype(np.int64)[index] for s in (1.0, 0.9, 0.8)
    )
    want = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    assert np.array_equal(got, want.astype(np.uint8))


def test_deflated_dicom_equals_its_uncompressed_twin(tmp_path: Path) -> None:
    from cxr_edge.io import load_xray

    (tmp_path / "d.dcm").write_bytes(hc.dicom_deflated(320, 300, GOOD16))
    (tmp_path / "u.dcm").write_bytes(hc.dicom_bytes(hc.dicom_dataset(GOOD16)))
    assert np.array_equal(load_xray(tmp_path / "d.dcm").pixels, load_xray(tmp_path / "u.dcm").pixels)


# --- bombs, special files: refused before allocating, measured in a child process ---------------

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from typer.testing import CliRunner
    from cxr_edge.cli import app

    runner = CliRunner()
    out, cases = sys.argv[1], sys.argv[2:]
    rows = []
    for i, case in enumerate(cases):
        result = runner.invoke(app, ["infer", case, "--overlay", "-s", "1", "-o", f"{out}/{i}"])
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # high-water mark so far
        rows.append({"case": case, "code": result.exit_code, "stderr": result.stderr, "rss_mb": rss_mb})
    print(json.dumps(rows))
    """
)


def test_bombs_and_special_files_are_refused_before_allocating(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.png").write_bytes(hc.png_bytes(GOOD))
    (corpus / "bomb-16384.png").write_bytes(hc.png_bomb(16384, 16384))  # 32 KB, 268 MP
    (corpus / "bomb-32768.png").write_bytes(hc.png_bomb(32768, 32768, rows_written=64))
    (corpus / "bomb.jpg").write_bytes(hc.jpeg_with_size(hc.jpeg_bytes(GOOD), 65000, 65000))
    (corpus / "bomb-deflated.dcm").write_bytes(hc.dicom_deflated(12000, 12000))  # 280 KB, 288 MB inflated
    os.mkfifo(corpus / "fifo.png")
    os.symlink("loop.png", corpus / "loop.png")
    assert (corpus / "bomb-16384.png").stat().st_size < 64_000
    cases = {
        "good.png": None,
        "bomb-16384.png": "16384 x 16384 = 268.4 MP, over the input budget of 100 MP",
        "bomb-32768.png": "32768 x 32768",
        "bomb.jpg": "65000 x 65000",
        "bomb-deflated.dcm": "12000 x 12000 = 144.0 MP",
        "fifo.png": "is a FIFO (named pipe), not a regular file",
        "loop.png": "symbolic link loop",
        "/dev/zero": "is a character device, not a regular file",
    }
    paths = [c if c.startswith("/") else str(corpus / c) for c in cases]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "out"), *paths],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    rows = json.loads(child.stdout.splitlines()[-1])
    baseline = rows[0]
    assert baseline["code"] == 0, baseline["stderr"]  # a real image, with an overlay, sets the mark
    for row, (case, fragment) in zip(rows[1:], list(cases.items())[1:]):
        errors = [line for line in row["stderr"].splitlines() if line.startswith("error:")]
        assert row["code"] == 2 and len(errors) == 1 and fragment in errors[0], (case, row["stderr"])
        assert case.split("/")[-1] in errors[0]
    # Decoding the smallest bomb would take 268 MB (1 byte/pixel); refusing it costs nothing.
    growth = rows[-1]["rss_mb"] - baseline["rss_mb"]
    assert growth < 40, f"peak RSS grew by {growth:.0f} MB over the bombs ({[r['rss_mb'] for r in rows]})"
    for i in range(1, len(rows)):
        out = tmp_path / "out" / str(i)
        assert sorted(p.name for p in out.iterdir()) == [".cxr-edge.lock", "index.csv"]


def test_budget_option_raises_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(hc.png_bytes(hc.xray_like(600, 700)))  # 0.42 MP
    refused = infer(str(big), "--max-megapixels", "0.4", "-s", "1", "-o", str(tmp_path / "a"))
    assert refused.exit_code == 2 and "over the input budget of 0.4 MP" in refused.stderr  # type: ignore[attr-defined]
    ok = infer(str(big), "--max-megapixels", "0.5", "-s", "1", "-o", str(tmp_path / "b"))
    assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]


def test_decoder_chatter_never_reaches_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """libjpeg's own stderr line is caught (fd level) and becomes the refusal's cause."""
    from cxr_edge.errors import CxrEdgeError
    from cxr_edge.io import load_xray

    path = tmp_path / "half.jpg"
    path.write_bytes(hc.cut_with_fake_end(hc.jpeg_bytes(GOOD), 0.5))
    with pytest.raises(CxrEdgeError, match="premature end of data segment"):
        load_xray(path)
    captured = capfd.readouterr()
    assert "Corrupt JPEG" not in captured.err and "Corrupt JPEG" not in captured.out


def test_another_threads_line_during_a_decode_is_given_back_not_a_refusal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fd 2 is redirected process-wide while a file decodes: a line another thread prints then
    (here one full of the words libjpeg uses) is no decoder message; libjpeg's own still is."""
    import cv2

    from cxr_edge.errors import CxrEdgeError
    from cxr_edge.io import load_xray

    imdecode = cv2.imdecode
    foreign = "OpenCV JPEG scan: marker SOS/DHT found, Huffman tables bogus? premature? (a log line)"

    def chatty(buf, flags):  # type: ignore[no-untyped-def]
        os.write(2, (foreign + "\n").encode())
        return imdecode(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", chatty)
    good = tmp_path / "good.jpg"
    good.write_bytes(hc.jpeg_bytes(GOOD))
    xray = load_xray(good)
    assert xray.pixels.shape == GOOD.shape and "decoder_warnings" not in xray.info
    assert foreign in capfd.readouterr().err
    half = tmp_path / "half.jpg"
    half.write_bytes(hc.cut_with_fake_end(hc.jpeg_bytes(GOOD), 0.5))
    with pytest.raises(CxrEdgeError, match="premature end of data segment"):
        load_xray(half)


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    name = "evil\x1b[31mred\u202e.png"
    path = tmp_path / name
    path.write_bytes(b"not an image at all")
    result = infer(str(path), "-s", "1", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr  # type: ignore[attr-defined]
    [line] = error_lines(result)
    assert "evil\\x1b[31mred\\u202e.png" in line


def test_threads_are_bounded_by_the_cores(tmp_path: Path) -> None:
    path = tmp_path / "good.png"
    path.write_bytes(hc.png_bytes(GOOD))
    result = infer(str(path), "--threads", "2000", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "--threads must be 1.." in line and "2000" in line


def test_a_harmless_png_warning_is_kept_not_printed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """libpng warns about a broken colour profile (an ancillary chunk): the pixels are fine."""
    import struct
    import zlib

    from cxr_edge.io import load_xray

    data = hc.png_bytes(GOOD)
    body = b"bogus\x00\x00" + zlib.compress(b"not a profile")
    iccp = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    path = tmp_path / "profile.png"
    path.write_bytes(data[:33] + iccp + data[33:])  # right after IHDR
    xray = load_xray(path)
    assert np.array_equal(xray.pixels, GOOD)
    assert any("iCCP" in w for w in xray.info["decoder_warnings"])
    assert "libpng" not in capfd.readouterr().err
