"""Against a real ``tritonserver`` (the ``nvidia-pytriton`` wheel's) on 127.0.0.1, free ports.

The server runs from the environment ``tools/make_triton_env.sh`` makes (``.venv-triton``, or
``CXR_EDGE_TRITON_ENV``); without it, or without tritonclient, these tests skip, except in CI
(``CI`` set), where .ci/run installs both and a skip would hide a broken install. The bundled demo
model keeps requests short. Same backend (ONNX Runtime, same version) in and out of the server,
so results must be equal bit for bit. Every server is stopped by its fixture, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ci_tools import require
from typer.testing import CliRunner

from cxr_edge.assets import default_model_path, sample_image_path
from cxr_edge.cli import app
from cxr_edge.errors import CxrEdgeError, ServiceUnavailableError
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import CxrEdge
from cxr_edge.prediction import Prediction
from cxr_edge.triton import protocol
from cxr_edge.triton.repository import export_repository
from cxr_edge.triton.server import LocalTritonServer, TritonEnvironment, find_triton_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = 2


@pytest.fixture(scope="module")
def triton_env() -> TritonEnvironment:
    prefix = Path(os.environ.get("CXR_EDGE_TRITON_ENV", REPO_ROOT / ".venv-triton"))
    env = find_triton_environment(prefix)
    require(f"a Triton server environment at {prefix} (tools/make_triton_env.sh)", env is not None)
    for module in ("tritonclient.http", "tritonclient.grpc"):
        try:
            __import__(module)
        except ImportError:
            require(f"{module} (pip install -e '.[triton]')", False)
    assert env is not None
    return env


@pytest.fixture(scope="module")
def local() -> CxrEdge:
    return CxrEdge.load(default_model_path(), backend="onnxruntime")


def _repository(tmp: Path, layout: str) -> Path:
    out = tmp / layout
    # split: patchnet on the Python backend (the wheel has no onnxruntime backend); four image-model
    # instances, each with one patch request in flight: with three or more, requests queue up in
    # patchnet while it runs one, and the batcher merges them.
    instances = 4 if layout == "split" else 1
    export_repository(default_model_path(), out, layout=layout, patchnet="python", instances=instances)
    return out


@pytest.fixture(scope="module", params=["whole", "split"])
def server(
    request: pytest.FixtureRequest, triton_env: TritonEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalTritonServer]:
    tmp = tmp_path_factory.mktemp(f"triton-{request.param}")
    srv = LocalTritonServer(_repository(tmp, request.param), triton_env, workdir=tmp / "work")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
    assert not srv.shared_memory_regions()


def _url(server: LocalTritonServer, scheme: str) -> str:
    return server.http_url if scheme == "http" else server.grpc_url


def assert_same_prediction(remote: Prediction, ref: Prediction) -> None:
    assert remote.findings == ref.findings
    for name in ("logits", "probabilities", "raw", "scaled"):
        got, want = getattr(remote.maps, name), getattr(ref.maps, name)
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), name
    assert remote.maps.labels == ref.maps.labels and remote.steps == ref.steps
    assert remote.crop == ref.crop and np.array_equal(remote.gray, ref.gray)
    assert remote.metadata == ref.metadata
    assert (remote.image, remote.source, remote.info) == (ref.image, ref.source, ref.info)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_same_prediction_as_in_process(server: LocalTritonServer, local: CxrEdge, scheme: str) -> None:
    from cxr_edge.triton.client import TritonCxrEdge

    with TritonCxrEdge(_url(server, scheme)) as remote:
        assert remote.metadata == local.metadata == ModelMetadata.from_onnx(default_model_path())
        assert remote.model_info["sha256"] == local.model_info["sha256"]
        path = str(sample_image_path())
        assert_same_prediction(remote.predict(path, steps=STEPS), local.predict(path, steps=STEPS))
        # An array input, not square (the crop is the client's), another S.
        rng = np.random.default_rng(7)
        gray = rng.integers(0, 256, size=(300, 420), dtype=np.uint8)
        assert_same_prediction(remote.predict(gray, steps=4), local.predict(gray, steps=4))
        pred = remote.predict(gray, steps=1)
        assert pred.backend.startswith("triton:") and pred.timings_ms["round_trip"] > 0
        assert pred.model["server"] == remote.url and pred.model["layout"] in protocol.LAYOUTS


def test_server_refuses_bad_steps(server: LocalTritonServer) -> None:
    """The server's own check (the client checks first; here it is bypassed): one-line error."""
    from cxr_edge.triton.client import TritonCxrEdge

    remote = TritonCxrEdge(server.grpc_url)
    gray = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(CxrEdgeError) as info:
        remote._infer(gray, 3, "odd.png")
    assert not isinstance(info.value, ServiceUnavailableError)
    assert str(info.value).startswith(f"odd.png: Triton server {remote.url}: ")
    assert "steps must be a power of two in 1..64, got 3" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CxrEdgeError, match="steps must be a power of two"):
        remote.predict(gray, steps=5)


def test_infer_command_outputs_equal(server: LocalTritonServer, tmp_path: Path) -> None:
    """``cxr-edge infer --server`` writes the same report, maps and overlays as in-process."""
    runner = CliRunner()
    image = str(sample_image_path())
    common = ["infer", image, "--steps", str(STEPS), "--overlay", "--save-maps", "--json"]
    scheme = "http" if "whole" in str(server.repository) else "grpc"
    remote = runner.invoke(app, [*common, "--out", str(tmp_path / "r"), "--server", _url(server, scheme)])
    here = runner.invoke(app, [*common, "--out", str(tmp_path / "l")])
    assert remote.exit_code == 0 and here.exit_code == 0, remote.output + here.output
    names = sorted(p.name for p in (tmp_path / "l").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "r").iterdir()) and len(names) >= 3
    for name in names:
        a, b = tmp_path / "r" / name, tmp_path / "l" / name
        if name.endswith(".npz"):
            with np.load(a) as ra, np.load(b) as rb:
                assert sorted(ra.files) == sorted(rb.files)
                for key in ra.files:
                    assert np.array_equal(ra[key], rb[key]), key
        elif name.endswith(".png"):
            assert a.read_bytes() == b.read_bytes(), name
        elif name == "index.csv":  # the batch's index: same input, status and files
            assert a.read_text() == b.read_text()
        elif name == ".cxr-edge.lock":  # the output folder's (empty) lock file
            assert a.read_bytes() == b.read_bytes() == b""
        else:
            ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
            for report in (ra, rb):
                report.pop("timings_ms")
                report.pop("backend")
            model_a, model_b = ra.pop("model"), rb.pop("model")
            assert ra == rb
            assert model_a["sha256"] == model_b["sha256"] and model_a["labels"] == model_b["labels"]
    assert json.loads(remote.stdout)[0]["findings"] == json.loads(here.stdout)[0]["findings"]


def test_dynamic_batching_merges_concurrent_requests(server: LocalTritonServer, local: CxrEdge) -> None:
    """Concurrent requests from several clients: the batcher hands the model several at once
    (whole: images; split: patchnet's patch requests), and every answer is still exact."""
    from concurrent.futures import ThreadPoolExecutor

    from cxr_edge.triton.client import TritonCxrEdge

    remote = TritonCxrEdge(server.grpc_url)
    split = "split" in str(server.repository)
    # split: S=4 is 4 patch requests of 256 per image.
    steps = 4 if split else 2
    watched = protocol.PATCH_MODEL if split else protocol.IMAGE_MODEL
    before = remote.batch_statistics(watched)
    images = [np.random.default_rng(i).integers(0, 256, size=(256, 256), dtype=np.uint8) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        preds = list(pool.map(lambda g: remote.predict(g, steps=steps), images))
    after = remote.batch_statistics(watched)
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    # Triton counts patchnet's inferences in patches: S*S shifts of 64 per image.
    assert requests == (8 * steps * steps * 64 if split else 8)
    assert executions < (8 * 4 if split else 8), after  # fewer executions than requests: merged
    for gray, pred in zip(images, preds):
        assert np.array_equal(pred.maps.scaled, local.predict(gray, steps=steps).maps.scaled)


# --- the server goes away mid-request, comes back -----------------------------------------------


@pytest.fixture()
def split_server(triton_env: TritonEnvironment, tmp_path: Path) -> Iterator[LocalTritonServer]:
    srv = LocalTritonServer(_repository(tmp_path, "split"), triton_env, workdir=tmp_path / "work")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def _infer_process(url: str, out: Path, steps: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", "from cxr_edge.cli import app; app()", "infer", str(sample_image_path())]
    command += ["--steps", str(steps), "--server", url, "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_patch_requests(watcher: object, deadline_s: float = 60.0) -> None:
    """Until patchnet has answered a patch request: the image request is then in flight."""
    from cxr_edge.triton.client import TritonCxrEdge

    assert isinstance(watcher, TritonCxrEdge)
    start = watcher.batch_statistics(protocol.PATCH_MODEL)["execution_count"]
    end = time.monotonic() + deadline_s
    while watcher.batch_statistics(protocol.PATCH_MODEL)["execution_count"] == start:
        assert time.monotonic() < end, "no patch request reached patchnet"
        time.sleep(0.02)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_server_killed_mid_request_then_recovers(
    split_server: LocalTritonServer, tmp_path: Path, scheme: str
) -> None:
    from cxr_edge.triton.client import TritonCxrEdge

    url = _url(split_server, scheme)
    remote = TritonCxrEdge(url)  # connected before the server dies, used again after the restart
    watcher = TritonCxrEdge(split_server.grpc_url)
    out = tmp_path / "out"
    # S=32: 1024 shifted copies, 256 patch requests of 256; seconds, long enough to be cut short.
    process = _infer_process(url, out, steps=32)
    try:
        _wait_for_patch_requests(watcher)
        assert split_server.shared_memory_regions()  # the live server's, in /dev/shm
        split_server.kill()
        assert not split_server.shared_memory_regions()  # a killed server's are removed too
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert process.returncode == 2, stderr
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"error: {url}: Triton server unavailable ("), errors[0]
    assert "0 ok, 1 failed, 0 not run (stopped at a model or service error)" in stderr
    # nothing written but the batch's index (the input listed as failed) and the folder's lock
    assert sorted(p.name for p in out.iterdir()) == [".cxr-edge.lock", "index.csv"]
    assert ",failed," in (out / "index.csv").read_text()
    with pytest.raises(ServiceUnavailableError):
        remote.predict(np.zeros((64, 64), np.uint8), steps=1)

    split_server.start()  # same ports
    gray = np.random.default_rng(3).integers(0, 256, size=(200, 240), dtype=np.uint8)
    assert_same_prediction(
        remote.predict(gray, steps=2), CxrEdge.load(default_model_path()).predict(gray, steps=2)
    )
    again = _infer_process(url, out, steps=1)
    try:
        _, stderr = again.communicate(timeout=120)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    assert again.returncode == 0, stderr
    assert (out / f"{sample_image_path().stem}.json").is_file()


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    """No server at all: ``infer --server`` fails at once with one line and exit 2."""
    pytest.importorskip("tritonclient.grpc")
    from cxr_edge.triton.server import free_port

    url = f"grpc://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["infer", str(sample_image_path()), "--server", url, "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: Triton server unavailable"), result.stderr
    bad = CliRunner().invoke(
        app, ["infer", str(sample_image_path()), "--server", "ftp://x:1", "--out", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "server URL must start with http:// or grpc://" in bad.stderr
