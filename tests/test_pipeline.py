"""The Python API end to end with a tiny linear patch model, against an independent reference.

The backend is a numpy linear map per patch, so the reference can classify patches itself
in float64; preprocessing is checked against torch's antialiased bilinear interpolate and the
shift/average against tests/reference_math.py (both written independently of cxr_edge).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fake_cuda
import numpy as np
import pytest
from reference_math import reference_saliency

from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pipeline import DEFAULT_CHUNK_PATCHES, CxrEdge
from cxr_edge.prediction import Prediction
from cxr_edge.tile import check_steps

IMAGE_SIZE, PATCH = 128, 16
LABELS = ("Alpha", "Beta", "Gamma", "Delta")


class LinearBackend:
    """Patch logits = flattened patch @ W + b (float64 inside, float32 out)."""

    name = "linear-test"
    thread_safe = True  # pure function of its input: lets the thread test run without a lock

    def __init__(self, thresholds: tuple[float, ...] | None = None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.metadata = ModelMetadata(
            labels=LABELS, image_size=IMAGE_SIZE, patch_size=PATCH, thresholds=thresholds
        )
        self.weight = rng.normal(0.0, 0.02, size=(PATCH * PATCH, len(LABELS)))
        self.bias = rng.normal(0.0, 0.5, size=len(LABELS))
        self.batch_sizes: list[int] = []

    def logits64(self, patches: np.ndarray) -> np.ndarray:
        return patches.reshape(len(patches), -1).astype(np.float64) @ self.weight + self.bias

    def run(self, patches: np.ndarray) -> np.ndarray:
        assert patches.dtype == np.float32 and patches.shape[1:] == (1, PATCH, PATCH)
        self.batch_sizes.append(len(patches))
        return self.logits64(patches).astype(np.float32)


def torch_preprocess(gray: np.ndarray) -> np.ndarray:
    """Centre square crop, /255, torch antialiased bilinear resize: (IMAGE_SIZE,)*2 float64."""
    import torch

    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(gray[top : top + side, left : left + side].astype(np.float32) / 255.0)
    out = torch.nn.functional.interpolate(
        crop[None, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].double().numpy()


def xray_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 120 + 80 * np.sin(7 * x) * np.cos(5 * y) + rng.normal(0, 20, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_matches_reference(pred: Prediction, ref: dict[str, np.ndarray]) -> None:
    for kind in ("raw", "scaled"):
        got, want = getattr(pred.maps, kind), ref[kind]
        assert got.shape == want.shape == (len(LABELS), IMAGE_SIZE, IMAGE_SIZE)
        tol = 1e-4 * np.abs(want).max()
        assert np.abs(got - want).max() <= tol, kind
    tol = 1e-4 * np.abs(ref["raw"]).max()
    assert np.abs(pred.maps.logits - ref["logits"]).max() <= tol
    assert np.allclose([f.logit for f in pred.findings], ref["logits"], atol=tol)
    assert np.allclose([f.probability for f in pred.findings], ref["probabilities"], atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_predict_matches_independent_reference(steps: int) -> None:
    backend = LinearBackend()
    edge = CxrEdge(backend)
    gray = xray_like(151, 203, seed=steps)  # odd, non-square: crop 151 wide, downsampled
    pred = edge.predict(gray, steps=steps)
    ref = reference_saliency(torch_preprocess(gray), backend.logits64, steps, PATCH)
    assert_matches_reference(pred, ref)
    assert pred.steps == steps and pred.original_shape == (151, 203)
    assert (pred.crop.top, pred.crop.left, pred.crop.side) == (0, 26, 151)
    assert set(pred.timings_ms) == {"decode", "preprocess", "tile", "backend", "postprocess"}


def test_upsampled_small_image_and_float_input() -> None:
    backend = LinearBackend(seed=3)
    edge = CxrEdge(backend)
    gray = xray_like(77, 60, seed=5)  # smaller than the model frame: bilinear upsampling
    pred = edge.predict(gray, steps=2)
    assert_matches_reference(pred, reference_saliency(torch_preprocess(gray), backend.logits64, 2, PATCH))
    as_float = edge.predict(gray.astype(np.float64) / 255.0, steps=2)
    assert np.array_equal(as_float.maps.raw, pred.maps.raw)


def test_chunking_does_not_change_results_and_bounds_batches() -> None:
    gray = xray_like(140, 140, seed=9)
    one_shift = LinearBackend()
    small = CxrEdge(one_shift, max_patches=(IMAGE_SIZE // PATCH) ** 2).predict(gray, steps=4)
    big = CxrEdge(LinearBackend(), max_patches=10_000).predict(gray, steps=4)
    assert max(one_shift.batch_sizes) == 64 and len(one_shift.batch_sizes) == 16
    for kind in ("raw", "scaled"):
        assert np.allclose(getattr(small.maps, kind), getattr(big.maps, kind), rtol=0, atol=1e-6)


def test_two_threads_get_the_same_results_as_one() -> None:
    edge = CxrEdge(LinearBackend())
    images = [xray_like(130 + 7 * i, 150, seed=i) for i in range(4)]
    sequential = [edge.predict(img, steps=4) for img in images]
    results: dict[int, Prediction] = {}
    errors: list[BaseException] = []

    def work(indices: list[int]) -> None:
        try:
            for i in indices:
                results[i] = edge.predict(images[i], steps=4)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=([0, 2],)), threading.Thread(target=work, args=([1, 3],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, want in enumerate(sequential):
        assert np.array_equal(results[i].maps.scaled, want.maps.scaled)
        assert np.array_equal(results[i].maps.logits, want.maps.logits)


def test_backend_that_is_not_thread_safe_is_serialised() -> None:
    class Unsafe(LinearBackend):
        thread_safe = False

        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.overlap = False

        def run(self, patches: np.ndarray) -> np.ndarray:
            self.inside += 1
            self.overlap |= self.inside > 1
            threading.Event().wait(0.002)  # widen the window a race would need
            out = super().run(patches)
            self.inside -= 1
            return out

    backend = Unsafe()
    edge = CxrEdge(backend, max_patches=64)
    threads = [threading.Thread(target=edge.predict, args=(xray_like(128, 128, i), 2)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(backend.batch_sizes) == 8 and not backend.overlap


def test_findings_thresholds_and_reported_labels() -> None:
    gray = xray_like(128, 128, seed=1)
    plain = CxrEdge(LinearBackend()).predict(gray, steps=1)
    assert all(f.threshold is None and f.positive is None for f in plain.findings)
    top3 = sorted(plain.findings, key=lambda f: -f.probability)[:3]
    assert plain.reported_labels() == [f.label for f in top3]

    probs = [f.probability for f in plain.findings]
    thresholds = tuple(p - 0.01 if i % 2 == 0 else p + 0.01 for i, p in enumerate(probs))
    thr = CxrEdge(LinearBackend(thresholds=thresholds)).predict(gray, steps=1)
    assert [f.positive for f in thr.findings] == [i % 2 == 0 for i in range(len(LABELS))]
    assert thr.reported_labels() == [LABELS[0], LABELS[2]]
    assert thr.finding("gamma").label == "Gamma"
    with pytest.raises(CxrEdgeError, match="unknown finding"):
        thr.finding("Epsilon")


def test_overlay_and_report_from_a_prediction() -> None:
    gray = xray_like(101, 143, seed=2)
    pred = CxrEdge(LinearBackend()).predict(gray, steps=2)
    from cxr_edge.render import finding_overlay
    from cxr_edge.report import build_report

    rgb = finding_overlay(pred, "Beta", map_kind="raw", legend=False)
    assert rgb.shape == (101, 143, 3) and rgb.dtype == np.uint8
    # Outside the centre square the X-ray is untouched.
    assert np.array_equal(rgb[:, : pred.crop.left, 0], gray[:, : pred.crop.left])
    report = json.loads(json.dumps(build_report(pred)))
    assert report["steps"] == 2 and report["map"] == "scaled" and report["backend"] == "linear-test"
    assert [f["label"] for f in report["findings"]] == list(LABELS)
    for f, finding in zip(report["findings"], pred.findings):
        assert f["logit"] == pytest.approx(finding.logit) and f["probability"] == pytest.approx(
            finding.probability
        )
        assert 1 / (1 + np.exp(-f["logit"])) == pytest.approx(f["probability"], abs=1e-6)
    assert report["original_shape"] == [101, 143] and report["crop"]["side"] == 101


def test_custom_accumulator_is_used() -> None:
    from cxr_edge.postprocess import SaliencyAccumulator

    made: list[tuple[int, ...]] = []

    def factory(steps: int, image_size: int, patch_size: int, num_classes: int) -> SaliencyAccumulator:
        made.append((steps, image_size, patch_size, num_classes))
        return SaliencyAccumulator(steps, image_size, patch_size, num_classes)

    CxrEdge(LinearBackend(), accumulator=factory).predict(xray_like(128, 128, 0), steps=2)
    assert made == [(2, IMAGE_SIZE, PATCH, len(LABELS))]


class FakeEngine(LinearBackend):
    """A DeviceBackend over tests/fake_cuda.py's memory: its input buffer holds
    ``chunk_patches`` patches; ``run_device_input`` writes float32 logits at ``out_ptr``."""

    thread_safe = False

    def __init__(self, chunk_patches: int, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.chunk_patches = chunk_patches
        self._input = fake_cuda.FakeBuffer(chunk_patches * PATCH * PATCH * 4)
        self.engine_rows: list[int] = []

    @property
    def stream_handle(self) -> int:
        return 7

    def input_address(self) -> int:
        return self._input.ptr

    def run(self, patches: np.ndarray) -> np.ndarray:
        raise AssertionError("host path used")

    def run_device_input(self, rows: int, out_ptr: int) -> None:
        assert rows <= self.chunk_patches
        patches = fake_cuda.MEMORY.floats(self._input.ptr, (rows, 1, PATCH, PATCH))
        logits = self.logits64(patches).astype(np.float32)
        fake_cuda.MEMORY.floats(out_ptr, logits.shape)[...] = logits
        self.engine_rows.append(rows)
        fake_cuda.LOG.append(("engine", self.stream_handle, rows))

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> None:
        assert out_ptr is not None
        logits = self.logits64(patches).astype(np.float32)
        fake_cuda.MEMORY.floats(out_ptr, logits.shape)[...] = logits
        fake_cuda.LOG.append(("engine_host_patches", self.stream_handle, len(patches)))

    def synchronize(self) -> None:
        fake_cuda.LOG.append(("sync", self.stream_handle))


def device_edge(monkeypatch: pytest.MonkeyPatch, chunk_patches: int, **kwargs: object) -> CxrEdge:
    """The real GpuPostprocess and CudaDeviceImage over fake CUDA, with a fake engine."""
    from cxr_edge.cuda.postprocess import GpuPostprocess
    from cxr_edge.cuda.tiling import CudaDeviceImage

    fake_cuda.install(monkeypatch)
    fake_cuda.LOG.clear()
    return CxrEdge(
        FakeEngine(chunk_patches), accumulator=GpuPostprocess, device_image=CudaDeviceImage, **kwargs
    )  # type: ignore[arg-type]


def image_ops(log: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The log entries that order one image's work (allocation-time events left out)."""
    keep = ("upload_pinned", "tile", "engine", "record", "wait", "postprocess", "download_pinned", "sync")
    return [entry for entry in log if entry[0] in keep]


def test_device_path_tiles_on_the_gpu_in_chunks_of_the_backends_batch(monkeypatch) -> None:
    """Upload once, then per chunk the tile kernel and the engine on the engine's stream (7),
    chunks of the backend's 3 shifts; an event recorded on 7 after the last chunk is waited for
    by the postprocess stream before it runs; one host sync for the image. Maps = reference."""
    per_shift = (IMAGE_SIZE // PATCH) ** 2
    edge = device_edge(monkeypatch, chunk_patches=3 * per_shift + 10)  # rounded down to 3 shifts
    gray = xray_like(140, 150, seed=4)
    pred = edge.predict(gray, steps=4)
    assert_matches_reference(
        pred, reference_saliency(torch_preprocess(gray), edge.backend.logits64, 4, PATCH)
    )
    ops = image_ops(fake_cuda.LOG)
    post = ops[-1][1]  # the postprocess's own stream: its sync ends the image
    assert post != 7
    assert ops[0][:2] == ("upload_pinned", 7)
    assert ops[1][:2] == ("record", 7)  # the staging copy's own event: the next upload waits on it
    chunks = ops[2:14]
    assert [op[0] for op in chunks] == ["tile", "engine"] * 6
    assert [op[2:] for op in chunks[0::2]] == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 3), (15, 1)]
    assert edge.backend.engine_rows == [3 * per_shift] * 5 + [per_shift]
    assert all(op[1] == 7 for op in chunks)
    record, wait = ops[14], ops[15]
    assert record[:2] == ("record", 7) and wait[:2] == ("wait", post) and record[2] == wait[2]
    assert ops[16:] == [("postprocess", post), ("download_pinned", post, ops[17][2]), ("sync", post)]
    assert sum(op[0] == "sync" for op in ops) == 1


def test_one_postprocess_per_steps_lives_as_long_as_the_model(monkeypatch) -> None:
    """Images after the first reuse the S's GpuPostprocess (no new device buffers, reset per
    image); another S gets its own; ``close`` frees both, and results stay right."""
    from cxr_edge.cuda import postprocess as post_module

    made: list[object] = []
    original = post_module.GpuPostprocess

    def factory(*args: int) -> object:
        made.append(original(*args))
        return made[-1]

    edge = device_edge(monkeypatch, chunk_patches=256)
    edge._accumulator = factory  # type: ignore[assignment]
    images = [xray_like(128 + 9 * i, 140, seed=10 + i) for i in range(3)]
    for steps in (4, 4, 2, 4):
        gray = images[len(made) % 3]
        pred = edge.predict(gray, steps=steps)
        want = reference_saliency(torch_preprocess(gray), edge.backend.logits64, steps, PATCH)
        assert_matches_reference(pred, want)
    assert [m.steps for m in made] == [4, 2]  # type: ignore[attr-defined]
    assert all(m._buffers for m in made)  # type: ignore[attr-defined]
    with edge:
        pass  # the context manager closes
    assert not any(m._buffers for m in made)  # type: ignore[attr-defined]
    assert all(("stream_close", m.stream.handle) in fake_cuda.LOG for m in made)  # type: ignore[attr-defined]


def test_concurrent_predicts_never_share_a_postprocess(monkeypatch) -> None:
    """Two threads at the same S: both are inside ``finish`` at once (a barrier), so each must
    hold its own GpuPostprocess; the pool made exactly two and both results are right."""
    from cxr_edge.cuda.postprocess import GpuPostprocess

    barrier = threading.Barrier(2, timeout=20)
    in_use: set[int] = set()
    original_finish = GpuPostprocess.finish

    def finish(self, labels):  # type: ignore[no-untyped-def]
        assert id(self) not in in_use, "one postprocess serves two images at once"
        in_use.add(id(self))
        barrier.wait()
        try:
            return original_finish(self, labels)
        finally:
            in_use.discard(id(self))

    monkeypatch.setattr(GpuPostprocess, "finish", finish)
    edge = device_edge(monkeypatch, chunk_patches=256)
    images = [xray_like(130, 150, seed=21), xray_like(150, 130, seed=22)]
    results: dict[int, Prediction] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = edge.predict(images[i], steps=2)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert edge._accumulators.made == 2 and edge._accumulators.idle(2) == 2
    for i, gray in enumerate(images):
        want = reference_saliency(torch_preprocess(gray), edge.backend.logits64, 2, PATCH)
        assert_matches_reference(results[i], want)
    edge.close()


def test_a_failed_image_never_hands_its_postprocess_on(monkeypatch) -> None:
    edge = device_edge(monkeypatch, chunk_patches=256)
    gray = xray_like(128, 128, seed=3)
    edge.predict(gray, steps=2)
    assert edge._accumulators.idle(2) == 1
    backend = edge.backend

    def broken(rows: int, out_ptr: int) -> None:
        raise CxrEdgeError(None, "engine failed")

    backend.run_device_input = broken  # type: ignore[method-assign]
    with pytest.raises(CxrEdgeError, match="engine failed"):
        edge.predict(gray, steps=2)
    assert edge._accumulators.idle(2) == 0  # discarded (closed), not pooled
    del backend.run_device_input  # the class's method again
    edge.predict(gray, steps=2)
    assert edge._accumulators.made == 2


def test_classes_beyond_shared_memory_are_refused_when_the_postprocess_is_made(monkeypatch) -> None:
    from cxr_edge.cuda.postprocess import GpuPostprocess

    fake_cuda.install(monkeypatch, fake_cuda.FakeKernels(shared_limit=4 * 4 * 9 * 4 - 1))
    with pytest.raises(CxrEdgeError, match=r"4 classes at S=4 need 576 bytes .*allows 575 "):
        GpuPostprocess(4, IMAGE_SIZE, PATCH, 4)


def test_device_backend_without_a_device_image_writes_logits_into_the_postprocess(monkeypatch) -> None:
    """Host tiling (no tile kernel here), but the engine writes the logits at the postprocess's
    address from host patches and the postprocess waits for the engine's stream by an event."""
    from cxr_edge.cuda.postprocess import GpuPostprocess

    fake_cuda.install(monkeypatch)
    fake_cuda.LOG.clear()
    per_shift = (IMAGE_SIZE // PATCH) ** 2
    backend = FakeEngine(3 * per_shift)
    edge = CxrEdge(backend, accumulator=GpuPostprocess, tile_on_device=False)  # type: ignore[arg-type]
    gray = xray_like(140, 150, seed=4)
    pred = edge.predict(gray, steps=4)
    assert_matches_reference(pred, reference_saliency(torch_preprocess(gray), backend.logits64, 4, PATCH))
    ops = [op for op in fake_cuda.LOG if op[0] in ("engine_host_patches", "record", "wait", "sync")]
    assert [op[2] for op in ops[:6]] == [3 * per_shift] * 5 + [per_shift]
    assert [op[0] for op in ops[6:]] == ["record", "wait", "sync"] and ops[6][1] == 7 and ops[7][1] != 7


def test_chunk_size_comes_from_the_backend() -> None:
    class Chunked(LinearBackend):
        chunk_patches = 2 * 64 + 5  # whole shifted copies: 2

    backend = Chunked()
    CxrEdge(backend).predict(xray_like(128, 128, seed=1), steps=4)
    assert backend.batch_sizes == [128] * 8
    plain = LinearBackend()  # declares nothing: the pipeline's default
    CxrEdge(plain).predict(xray_like(128, 128, seed=1), steps=4)
    assert plain.batch_sizes == [DEFAULT_CHUNK_PATCHES] * 4
    explicit = Chunked()  # an explicit max_patches still wins
    CxrEdge(explicit, max_patches=64).predict(xray_like(128, 128, seed=1), steps=2)
    assert explicit.batch_sizes == [64] * 4


def test_onnxruntime_backend_keeps_its_cpu_chunk() -> None:
    """ORT declares the 256-patch chunk the pipeline always used on the CPU, so host-path
    results are what they were (same batches, same arithmetic)."""
    edge = CxrEdge.load()
    assert edge.backend.chunk_patches == DEFAULT_CHUNK_PATCHES == edge.max_patches == 256


@pytest.mark.parametrize("bad", [0, 3, 128, -2, 2.0, True])
def test_bad_steps_are_refused(bad: object) -> None:
    with pytest.raises(CxrEdgeError, match="power of two"):
        check_steps(bad)  # type: ignore[arg-type]


def test_bad_inputs_raise_one_line_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    edge = CxrEdge(LinearBackend())
    with pytest.raises(CxrEdgeError, match="2-D"):
        edge.predict(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CxrEdgeError, match=r"\[0, 1\]"):
        edge.predict(np.full((40, 40), 2.0))
    with pytest.raises(CxrEdgeError, match="unsupported dtype"):
        edge.predict(np.zeros((40, 40), np.int32))
    with pytest.raises(CxrEdgeError, match="exceeds the model's patch size"):
        edge.predict(np.zeros((40, 40), np.uint8), steps=32)  # 16-pixel patches: at most 16 shifts
    with pytest.raises(CxrEdgeError, match="no such model file"):
        CxrEdge.load(tmp_path / "missing.onnx")


def test_bench_cpu_smoke(tiny_model: object, tiny_onnx: Path, tmp_path: Path) -> None:
    """tools/bench_cpu.py end to end on the tiny model, one run (a smoke run, not a timing)."""
    import subprocess
    import sys

    from cxr_edge.model.checkpoint import save_checkpoint

    weights = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    bench = Path(__file__).resolve().parents[1] / "tools" / "bench_cpu.py"
    cmd = [sys.executable, str(bench), "--model", str(tiny_onnx), "--weights", str(weights), "--steps", "1"]
    cmd += ["--eager-steps", "1", "--runs", "1", "--threads", "1", "--workdir", str(tmp_path), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (row,) = result["rows"]
    assert row["steps"] == 1 and row["patches"] == 64
    assert set(row["median_ms"]) == {
        "decode",
        "preprocess",
        "tile",
        "backend",
        "postprocess",
        "render",
        "total",
    }
    assert all(v >= 0 for v in row["median_ms"].values()) and 0 < row["peak_rss_mb"] < 4096
    eager = row["eager"]
    assert eager["kind"] == "pytorch-eager" and set(eager["median_ms"]) == {
        "total",
        "one_map",
        "one_map_no_grad",
    }
    assert eager["median_ms"]["total"] > eager["median_ms"]["one_map"] > 0


@pytest.mark.parametrize("steps", [1, 4])
def test_bench_eager_reference_computes_the_same_maps(steps: int) -> None:
    """The bench's PyTorch eager pipeline must compute what it is compared against."""
    import torch
    from tool_modules import load_tool

    bench = load_tool("bench_cpu")

    backend = LinearBackend(seed=steps)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(backend.logits64(x.numpy())).float()

    gray = xray_like(149, 171, seed=steps)
    logits, raw, scaled = bench.eager_reference_maps(model, gray, steps, IMAGE_SIZE, PATCH)
    ref = reference_saliency(torch_preprocess(gray), backend.logits64, steps, PATCH)
    for got, want in ((raw, ref["raw"]), (scaled, ref["scaled"])):
        assert np.abs(got.numpy() - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(logits.numpy() - ref["logits"]).max() <= 1e-4 * np.abs(ref["raw"]).max()


def test_evidence_summary_locates_the_peak_in_original_pixels() -> None:
    from cxr_edge.report import evidence_summary

    gray = xray_like(300, 200, seed=4)  # crop: rows 50..249, all columns, side 200
    pred = CxrEdge(LinearBackend()).predict(gray, steps=1)
    scaled = pred.maps.scaled
    scaled[0] = 0.0
    scaled[0, 70:74, 100:104] = 5.0  # one hot spot in the model frame (128 px for 200 px)
    scaled[0, 0:2, 0:2] = 1.0  # a little evidence in the corner
    ev = evidence_summary(pred, LABELS[0], "scaled")
    assert ev["peak"]["value"] == 5.0
    # the hot spot's centre (71.5, 101.5) lies between pixels: its nearest tied pixel (71, 101)
    assert ev["peak"]["x"] == pytest.approx((101 + 0.5) * 200 / 128 - 0.5, abs=0.05)
    assert ev["peak"]["y"] == pytest.approx(50 + (71 + 0.5) * 200 / 128 - 0.5, abs=0.05)
    assert not ev["peak_in_border"]
    assert ev["border_share"] == pytest.approx(4.0 / (16 * 5.0 + 4.0))
    assert ev["border_area_share"] == pytest.approx(1 - (112 / 128) ** 2, abs=1e-4)
