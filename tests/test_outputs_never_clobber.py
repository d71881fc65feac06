"""Issue 13: ``--out`` checked before any compute, unique stable names, all-or-nothing result
sets (JSON last), recovery of interrupted sets and stale ``.part`` files, the batch index."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import hostile_corpus as hc
import pytest
from typer.testing import CliRunner

from cxr_edge.cli import app
from cxr_edge.errors import CxrEdgeError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def infer(*args: str) -> object:
    return runner.invoke(app, ["infer", *args], catch_exceptions=False)


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hc.png_bytes(hc.xray_like(300, 320, seed=seed)))
    return path


def index_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_out_inside_the_input_folder_is_refused_before_compute(tmp_path: Path) -> None:
    folder = tmp_path / "xrays"
    write_png(folder / "a.png")
    for out in (folder, folder / "results"):
        result = infer(str(folder), "--overlay", "-o", str(out))
        assert result.exit_code == 2
        assert "lies inside the input folder" in result.stderr  # type: ignore[attr-defined]
        assert "infer:" not in result.stderr  # type: ignore[attr-defined]  # no batch ran
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png"]  # nothing written, nothing created


@pytest.mark.parametrize("kind", ["file", "proc"])
def test_bad_out_is_one_line_before_the_model_loads(kind: str, tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png")
    out = tmp_path / "taken" if kind == "file" else Path("/proc/cxr-edge-test/x")
    if kind == "file":
        out.write_text("a file")
    result = infer(str(image), "--model", str(tmp_path / "no-model.onnx"), "-o", str(out))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # type: ignore[attr-defined]
    # The --out problem is found first: the (missing) model is never reached.
    assert result.exit_code == 2 and len(errors) == 1 and str(out) in errors[0] and "--out" in errors[0]
    assert "no-model" not in result.stderr and "FileExistsError" not in result.stderr  # type: ignore[attr-defined]


def test_same_stems_from_different_folders_get_distinct_stable_names(tmp_path: Path) -> None:
    inputs = [write_png(tmp_path / "a" / "chest.png", 1), write_png(tmp_path / "b" / "chest.png", 2),
              write_png(tmp_path / "c" / "chest-2.png", 3)]  # fmt: skip
    out = tmp_path / "out"
    first = infer(*map(str, inputs), "-s", "1", "-o", str(out))
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    reports = {json.loads(p.read_text())["image"]: p.name for p in out.glob("*.json")}
    assert sorted(reports) == sorted(map(str, inputs))  # 3 inputs, 3 reports
    assert reports[str(inputs[2])] == "chest-2.json"
    # Stable: the same inputs get the same names again (and overwrite only their own results).
    again = infer(*map(str, inputs), "-s", "1", "-o", str(out))
    assert again.exit_code == 0
    assert {json.loads(p.read_text())["image"]: p.name for p in out.glob("*.json")} == reports
    assert [r["status"] for r in index_rows(out)] == ["ok", "ok", "ok"]


def test_an_overlay_never_overwrites_an_input(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    p = write_png(folder / "p.png", 1)
    victim = write_png(folder / "p.lung-opacity.png", 2)
    before = victim.read_bytes()
    result = infer(
        str(p), str(victim), "--overlay", "--findings", "Lung Opacity", "-s", "1", "-o", str(folder)
    )
    assert result.exit_code == 1  # p refused, the other input done
    [line] = [e for e in result.stderr.splitlines() if e.startswith("error:")]  # type: ignore[attr-defined]
    assert "p.lung-opacity.png" in line and "refusing to overwrite" in line
    assert victim.read_bytes() == before
    assert not (folder / "p.json").exists() and (folder / "p.lung-opacity.json").exists()


def test_long_names_fit_the_file_system(tmp_path: Path) -> None:
    stem = "x" * 250
    image = write_png(tmp_path / "in" / f"{stem}.png")
    out = tmp_path / "out"
    result = infer(str(image), "--overlay", "--save-maps", "-s", "1", "-o", str(out))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    names = [p.name for p in out.iterdir()]
    assert len(names) >= 4 and all(len(n.encode()) <= 255 for n in names)
    [report] = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert report["image"] == str(image)


def test_stale_part_files_and_incomplete_sets_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".old.json.abcd1234.part").write_text("half")
    (out / "lost.cardiomegaly.png").write_bytes(b"overlay without its json")
    (out / ".lost.pending").write_text("lost.json\nlost.cardiomegaly.png\n")
    (out / "keep.json").write_text("{}")
    (out / "keep.cardiomegaly.png").write_bytes(b"committed")
    (out / ".keep.pending").write_text("keep.json\nkeep.cardiomegaly.png\n")  # died after the JSON
    image = write_png(tmp_path / "a.png")
    assert infer(str(image), "-s", "1", "-o", str(out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".cxr-edge.lock", "a.json", "index.csv", "keep.cardiomegaly.png", "keep.json",
    ]  # fmt: skip


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import cxr_edge.outputs as outputs
    from cxr_edge.pipeline import CxrEdge

    out, image, after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    real = outputs.write_bytes_atomic
    written = []

    def dying_write(path, data):
        if len(written) == after:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-set, as kill -9 would
        real(path, data)
        written.append(path)

    outputs.write_bytes_atomic = dying_write
    edge = CxrEdge.load()
    options = outputs.OutputOptions(out, overlays=True, findings=("Cardiomegaly", "Pneumothorax"), maps=True)
    outputs.write_result_set(edge.predict(image, steps=1), "chest", options)
    """
)


@pytest.mark.parametrize("after", [0, 1, 2])
def test_kill_9_inside_a_write_leaves_all_or_nothing(after: int, tmp_path: Path) -> None:
    from cxr_edge.outputs import locked_directory, recover_directory

    out = tmp_path / "out"
    out.mkdir()
    image = write_png(tmp_path / "chest.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", KILLER, str(out), str(image), str(after)], env=env, timeout=120, check=False
    )
    assert child.returncode == -signal.SIGKILL
    assert not (out / "chest.json").exists()  # never committed
    with locked_directory(out):
        recover_directory(out)
    assert sorted(p.name for p in out.iterdir()) == [".cxr-edge.lock"]  # nothing of the set survives


def test_a_rerun_replaces_a_set_whole(tmp_path: Path) -> None:
    image = write_png(tmp_path / "chest.png")
    out = tmp_path / "out"
    assert (
        infer(
            str(image), "--overlay", "--findings", "Cardiomegaly,Pneumothorax", "-s", "1", "-o", str(out)
        ).exit_code
        == 0
    )
    assert (
        infer(str(image), "--overlay", "--findings", "Pneumothorax", "-s", "1", "-o", str(out)).exit_code == 0
    )
    report = json.loads((out / "chest.json").read_text())
    assert report["result_files"] == ["chest.pneumothorax.png"]
    assert sorted(p.name for p in out.glob("chest*")) == ["chest.json", "chest.pneumothorax.png"]


def test_index_and_summary_list_every_input(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = infer(str(good), str(bad), str(tmp_path / "missing.png"), "--overlay", "-s", "1", "-o", str(out))
    assert result.exit_code == 1
    summary = [line for line in result.stderr.splitlines() if line.startswith("infer:")]  # type: ignore[attr-defined]
    assert summary == [f"infer: 3 input(s): 1 ok, 2 failed, 0 not run; index {out / 'index.csv'}"]
    rows = index_rows(out)
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [
        ("good.png", "ok"), ("bad.png", "failed"), ("missing.png", "failed"),
    ]  # fmt: skip
    assert "good.json" in rows[0]["outputs"].split(";") and "file not found" in rows[2]["error"]


def test_a_second_writer_to_the_same_folder_is_refused(tmp_path: Path) -> None:
    from cxr_edge.batch import run_batch
    from cxr_edge.outputs import OutputOptions, locked_directory
    from cxr_edge.pipeline import CxrEdge

    out = tmp_path / "out"
    out.mkdir()
    image = write_png(tmp_path / "a.png")
    with locked_directory(out), pytest.raises(CxrEdgeError, match="another cxr-edge run"):
        run_batch(CxrEdge.load(), [image], OutputOptions(out), steps=1)
    assert not (out / "a.json").exists()


def test_exclusive_lock_refuses_a_second_holder_with_the_callers_message(tmp_path: Path) -> None:
    import os

    from cxr_edge.locking import exclusive_lock, try_lock

    lock = tmp_path / ".lock"
    with exclusive_lock(lock, "busy here", tmp_path):
        with pytest.raises(CxrEdgeError, match="busy here") as caught:
            try_lock(lock, "busy here", tmp_path)
        assert caught.value.path == str(tmp_path)
    fd = try_lock(lock, "busy here")  # released with the block
    assert fd is not None
    os.close(fd)


def test_output_stems_are_unique_and_stable() -> None:
    from cxr_edge.outputs import max_stem_bytes, output_stems

    labels = ("Enlarged Cardiomediastinum", "Edema")
    files = [Path("/d1/Chest.png"), Path("/d2/chest.png"), Path("/d3/chest-2.png"), Path("/e/\x1bbad.png")]
    stems = output_stems(files, labels)
    assert len({s.casefold() for s in stems}) == 4 and stems[2] == "chest-2" and stems[3] == "_bad"
    assert output_stems(files, labels) == stems and output_stems(files[:2], labels) == stems[:2]
    long = output_stems([Path("/d/" + "é" * 200 + ".png")], labels)[0]
    assert len(long.encode()) <= max_stem_bytes(labels)
