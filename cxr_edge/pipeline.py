"""The Python API for embedding, and the one place where the stages are chained.

    edge = CxrEdge.load()                      # bundled demo model, ONNX Runtime on the CPU
    pred = edge.predict("chest.png", steps=8)  # or an (h, w) uint8 / float array
    pred.findings, pred.maps.scaled            # a plain Prediction (cxr_edge.prediction)
    for pred in edge.predict_progressive("chest.png", steps=8):  # S = 1, 2, 4, 8 in turn
        ...

Stages: decode -> preprocess (``prepare_image``) -> tile (chunks of the backend's batch) ->
backend -> postprocess. The backend and the postprocess are chosen at load time, so a GPU backend
(TensorRT) and a GPU postprocess (CUDA accumulator) plug in without touching ``predict``; the
pipeline finds them through the ``ChunkedBackend`` / ``DeviceBackend`` / ``DeviceAccumulator``
protocols.

Device path (a ``DeviceBackend``, a ``DeviceAccumulator`` and a ``DeviceImage``): the model-frame
image is uploaded once; per chunk the CUDA tile kernel writes the patches into the engine's
input buffer and the engine writes the logits into the postprocess's buffer, all on the engine's
stream; the postprocess stream waits for an event recorded there; one host sync per image (the
download of the maps). Patches and patch logits never touch the host.

Threads: concurrent ``predict`` calls never share mutable state: each takes its own postprocess
from a pool (reusable ones, e.g. GPU buffers, are kept per S for the model's life and freed by
``close``). A backend that declares ``thread_safe = False``, and every device backend, is guarded
by a lock around enqueueing an image's (or a chunk's) work.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cxr_edge.backends.base import (
    DEFAULT_CHUNK_PATCHES,
    PLAN_SUFFIXES,
    ChunkedBackend,
    Closeable,
    DeviceBackend,
    DeviceImage,
    DeviceImageFactory,
    PatchBackend,
)
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError, ModelError
from cxr_edge.io.budget import InputBudget
from cxr_edge.io.plausibility import PlausibilityLimits
from cxr_edge.metadata import ModelMetadata
from cxr_edge.pool import Pool
from cxr_edge.postprocess import (
    Accumulator,
    AccumulatorFactory,
    DeviceAccumulator,
    ReusableAccumulator,
    SaliencyAccumulator,
    SaliencyMaps,
)
from cxr_edge.prediction import Prediction, findings_from
from cxr_edge.preprocess import CropBox, preprocess
from cxr_edge.tile import PatchBatch, check_steps, iter_patch_batches, level_pairs, progressive_levels

__all__ = [
    "DEFAULT_CHUNK_PATCHES",
    "CxrEdge",
    "DecodedImage",
    "PreparedImage",
    "decode_image",
    "open_backend",
    "prepare_image",
]


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded (and checked) but not preprocessed: ``gray (h, w) uint8``, the
    reference's "L" image at its own resolution; name, source, info: as in ``PreparedImage``;
    decode_ms: wall time of the decode and the pixel checks."""

    gray: np.ndarray
    name: str | None
    source: str
    info: dict[str, Any]
    decode_ms: float


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and preprocessed for one model.

    gray: ``(h, w) uint8`` (the reference's "L" image, original resolution); model_input:
    ``(N, N) float32 in [0, 1]`` (N = image_size); crop: where ``model_input`` came from;
    name: the path as given (None for arrays); source: decoder ("png", "dicom", "array", ...);
    info: non-identifying header facts; timings_ms: ``decode`` and ``preprocess`` wall time.
    """

    gray: np.ndarray
    model_input: np.ndarray
    crop: CropBox
    name: str | None
    source: str
    info: dict[str, Any]
    timings_ms: dict[str, float]


def _as_gray(image: np.ndarray) -> np.ndarray:
    """(h, w) uint8 from a uint8 array or a float array in [0, 1] (rounded to 8 bits like
    the reference's "L" image)."""
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise CxrEdgeError("<array>", f"expected a 2-D (h, w) grayscale array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise CxrEdgeError("<array>", "float images must hold finite values in [0, 1]")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise CxrEdgeError(
        "<array>",
        f"unsupported dtype {arr.dtype}: pass uint8, or float in [0, 1] (16-bit files: pass the path)",
    )


def check_pixels(
    gray: np.ndarray,
    info: dict[str, Any],
    name: str,
    allow_non_chest: bool = False,
    limits: PlausibilityLimits | None = None,
) -> dict[str, Any]:
    """Refuse decoded pixels that cannot be a frontal chest radiograph; return ``info`` with
    ``scope``: "header" (a DICOM header says chest radiograph) or "unverified" (PNG/JPEG, or a
    silent header: only the pixel check of ``cxr_edge.io.plausibility`` stands behind it)."""
    from cxr_edge.io.plausibility import chest_tone_problem, image_problem

    problem = image_problem(gray, limits)
    if problem:
        raise CxrEdgeError(name, f"refused, {problem}")
    info = dict(info)
    if info.get("scope") != "header":
        info["scope"] = "unverified"
        tone = chest_tone_problem(gray, limits)
        if tone and not allow_non_chest:
            raise CxrEdgeError(name, f"refused, {tone}; override with allow_non_chest / --allow-non-chest")
        if tone:
            info["scope_warning"] = tone
    return info


def decode_image(
    image: str | Path | np.ndarray,
    allow_non_chest: bool = False,
    budget: InputBudget | None = None,
    limits: PlausibilityLimits | None = None,
) -> DecodedImage:
    """Decode a path (PNG/JPEG/DICOM) or take an (h, w) uint8 / float [0, 1] array as the 8-bit
    grayscale image. Raises CxrEdgeError for unreadable or unsuitable input.

    Files are read within ``budget`` (bytes and header pixels, before decoding). With ``limits``
    (``CxrEdge.prepare`` / ``predict`` always pass them) the decoded pixels are checked by
    ``check_pixels`` (size, aspect, near-constant, noise, and for files no header vouches for,
    the chest-tone check that ``allow_non_chest`` overrides); without, they are only decoded
    (calibration sets). Arrays are the caller's: they are not checked
    (``cxr_edge.io.plausibility.image_problem`` is public).
    """
    t0 = time.perf_counter()
    name: str | None = None
    source, info = "array", {}
    if isinstance(image, (str, Path)):
        from cxr_edge.io import load_xray

        xray = load_xray(image, allow_non_chest=allow_non_chest, budget=budget)
        gray, name, source = xray.pixels, str(image), xray.source
        info = dict(xray.info)
        if limits is not None:
            info = check_pixels(gray, info, name, allow_non_chest, limits)
    else:
        gray = _as_gray(image)
    return DecodedImage(gray, name, source, info, (time.perf_counter() - t0) * 1e3)


def prepare_image(
    image: str | Path | np.ndarray,
    metadata: ModelMetadata,
    allow_non_chest: bool = False,
    budget: InputBudget | None = None,
    limits: PlausibilityLimits | None = None,
) -> PreparedImage:
    """Decode (``decode_image``, with the same arguments) and preprocess for ``metadata``'s
    model frame. Raises CxrEdgeError for unreadable or unsuitable input."""
    decoded = decode_image(image, allow_non_chest, budget, limits)
    t0 = time.perf_counter()
    pre = preprocess(decoded.gray, metadata.image_size, path=decoded.name)
    timings = {"decode": decoded.decode_ms, "preprocess": (time.perf_counter() - t0) * 1e3}
    return PreparedImage(
        decoded.gray, pre.image, pre.crop, decoded.name, decoded.source, decoded.info, timings
    )


def describe_model(metadata: ModelMetadata, path: str | None, sha256: str | None) -> dict[str, Any]:
    """What a report says about the model: its file (path, sha256) and a metadata summary."""
    md = metadata
    return {
        "path": path,
        "sha256": sha256,
        "variant": md.variant.name,
        "precision": md.precision,
        "image_size": md.image_size,
        "patch_size": md.patch_size,
        "labels": list(md.labels),
        "has_thresholds": md.thresholds is not None,
        "checkpoint_sha256": md.checkpoint_sha256 or None,
        "preprocessing": md.preprocessing,
        "package_version": md.package_version,
        "intended_use": md.intended_use,
    }


@runtime_checkable
class Predictor(Protocol):
    """What ``infer`` and a cart's software need of a model: ``CxrEdge`` in this process, or
    ``cxr_edge.triton.client.TritonCxrEdge`` on a Triton server."""

    metadata: ModelMetadata
    #: Limits on each input file and the pixel plausibility checks (see ``CxrEdge``).
    input_budget: InputBudget
    plausibility: PlausibilityLimits

    @property
    def model_info(self) -> dict[str, Any]: ...

    def predict(
        self, image: str | Path | np.ndarray, steps: int = 8, allow_non_chest: bool = False
    ) -> Prediction: ...


def open_backend(kind: str, model: Path, threads: int | None = None, device: int = 0) -> PatchBackend:
    """The backend for a model file. kind: "auto" (TensorRT for a plan, ``PLAN_SUFFIXES``, else
    ONNX Runtime), "onnxruntime" (on ``threads`` CPU threads, None: all) or "tensorrt" (on GPU
    ``device``). CxrEdgeError for another kind or a TensorRT that is not installed."""
    if kind == "auto":
        kind = "tensorrt" if model.suffix.lower() in PLAN_SUFFIXES else "onnxruntime"
    if kind == "onnxruntime":
        from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, threads=threads)
    if kind == "tensorrt":
        try:
            from cxr_edge.backends.tensorrt import TensorRtBackend
        except ImportError as exc:
            raise CxrEdgeError(model, f"the TensorRT backend is not available here ({exc})") from exc
        return TensorRtBackend(model, device=device)
    raise CxrEdgeError(None, f"backend must be 'auto', 'onnxruntime' or 'tensorrt', got {kind!r}")


def _cuda_kernels_usable() -> bool:
    """True when the CUDA kernel library (tools/build_cuda.sh), cuda-python and a GPU are all
    present: then the CUDA postprocess and tile kernel are the defaults."""
    from cxr_edge.cuda.kernels import find_library

    if find_library() is None:  # cheap file check: a CPU-only install never loads CUDA
        return False
    from cxr_edge.cuda.postprocess import gpu_postprocess_available

    return gpu_postprocess_available()


def _default_accumulator(cuda: bool) -> AccumulatorFactory:
    """The CUDA postprocess when ``cuda`` (``_cuda_kernels_usable``), else the numpy
    ``SaliencyAccumulator`` (same results; the CUDA one's oracle)."""
    if cuda:
        from cxr_edge.cuda.postprocess import GpuPostprocess

        return GpuPostprocess
    return SaliencyAccumulator


def _default_device_image(cuda: bool) -> DeviceImageFactory | None:
    """The CUDA tile kernel's ``CudaDeviceImage`` when ``cuda`` (``_cuda_kernels_usable``),
    else None (patches are tiled on the host)."""
    if not cuda:
        return None
    from cxr_edge.cuda.tiling import CudaDeviceImage

    return CudaDeviceImage


def _close(resource: Accumulator | DeviceImage) -> None:
    resource.close()


class CxrEdge:
    """A loaded model, ready to ``predict`` on images. Create it once with ``CxrEdge.load``."""

    def __init__(
        self,
        backend: PatchBackend,
        model_path: str | Path | None = None,
        accumulator: AccumulatorFactory | None = None,
        max_patches: int | None = None,
        device_image: DeviceImageFactory | None = None,
        tile_on_device: bool = True,
    ) -> None:
        """backend: any PatchBackend; model_path: the file it came from (for reports);
        accumulator: the postprocess factory (default: the CUDA postprocess when usable, else
        numpy ``SaliencyAccumulator``); max_patches: patches per tile/backend chunk (None: the
        backend's ``chunk_patches``, else ``DEFAULT_CHUNK_PATCHES``); device_image: how a device
        backend gets its patches tiled on the GPU (default: the CUDA tile kernel when usable);
        tile_on_device=False tiles on the host even for a device backend."""
        if not isinstance(backend, PatchBackend):
            raise CxrEdgeError(
                None, f"{type(backend).__name__} is not a PatchBackend (metadata, name, thread_safe, run)"
            )
        self.backend = backend
        self.metadata: ModelMetadata = backend.metadata
        self.model_path = None if model_path is None else Path(model_path)
        device = isinstance(backend, DeviceBackend)
        want_device_image = tile_on_device and device_image is None and device
        # Probed once, and only when a default needs it (a CPU-only install never loads CUDA).
        cuda = (accumulator is None or want_device_image) and _cuda_kernels_usable()
        self._accumulator = accumulator or _default_accumulator(cuda)
        per_shift = self.metadata.patches_per_image
        if max_patches is None:
            max_patches = (
                backend.chunk_patches if isinstance(backend, ChunkedBackend) else DEFAULT_CHUNK_PATCHES
            )
        self.max_patches = max(int(max_patches), per_shift)
        self._backend_lock = threading.Lock() if device or not backend.thread_safe else None
        self._model_info: dict[str, Any] | None = None
        self._owns_backend = False
        md = self.metadata
        self._accumulators: Pool[int, Accumulator] = Pool(
            lambda steps: self._accumulator(steps, md.image_size, md.patch_size, md.num_classes), _close
        )
        factory = None
        if tile_on_device:
            factory = device_image if device_image is not None else _default_device_image(cuda and device)
        self._device_images: Pool[int, DeviceImage] | None = None
        if factory is not None and isinstance(backend, DeviceBackend):
            if backend.chunk_patches < per_shift:
                raise CxrEdgeError(
                    None,
                    f"{backend.name} takes {backend.chunk_patches} patches per call, fewer than one "
                    f"shifted copy ({per_shift}): it cannot run tiled on the device",
                )
            self._device_images = Pool(lambda _key: factory(md.image_size, md.patch_size), _close)
        #: Limits on each input file, checked before decoding (``cxr_edge.io.budget``).
        self.input_budget = InputBudget()
        #: Numbers of the pixel plausibility checks (``cxr_edge.io.plausibility``).
        self.plausibility = PlausibilityLimits()

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        backend: str | PatchBackend = "auto",
        threads: int | None = None,
        accumulator: AccumulatorFactory | None = None,
        max_patches: int | None = None,
        device: int = 0,
    ) -> CxrEdge:
        """Open a model. model: an ONNX file (default: the bundled demo model) or a TensorRT
        engine (.plan/.engine); backend: "auto" (TensorRT for an engine, else ONNX Runtime),
        "onnxruntime", "tensorrt", or a ready PatchBackend; threads: CPU threads (None: all);
        device: the GPU a TensorRT engine runs on (``open_backend``)."""
        if not isinstance(backend, str):
            return cls(backend, model, accumulator, max_patches)
        if model is None:
            from cxr_edge.assets import default_model_path

            model = default_model_path()
        model = Path(model)
        if not model.is_file():
            raise CxrEdgeError(model, "no such model file")
        edge = cls(open_backend(backend, model, threads, device), model, accumulator, max_patches)
        edge._owns_backend = True  # opened here, so closed by close()
        _ = edge.model_info  # hash the model file now, not inside the first predict
        return edge

    def with_accumulator(self, accumulator: AccumulatorFactory) -> CxrEdge:
        """This model with another postprocess (e.g. one that records patch logits): the same
        backend (not owned: closing the result leaves it open), input checks, chunking and model
        facts (the file is not hashed again)."""
        edge = CxrEdge(self.backend, self.model_path, accumulator, self.max_patches)
        edge.input_budget, edge.plausibility = self.input_budget, self.plausibility
        edge._model_info = self._model_info
        return edge

    @property
    def model_info(self) -> dict[str, Any]:
        """What the report says about the model: path, sha256, metadata summary, intended use."""
        if self._model_info is None:
            path = self.model_path
            sha256 = sha256_file(path) if path is not None and path.is_file() else None
            info = describe_model(self.metadata, None if path is None else str(path), sha256)
            self._model_info = info  # idempotent, so a race between threads is harmless
        return dict(self._model_info)

    def _check_finite(self, maps: SaliencyMaps, image: str | None) -> None:
        """Non-finite outputs mean a broken model (or engine), never a "negative" finding."""
        for what, values in (("logits", maps.logits), ("raw map", maps.raw), ("scaled map", maps.scaled)):
            if not np.all(np.isfinite(values)):
                self._raise_non_finite(what, values, image)

    def _raise_non_finite(self, what: str, values: np.ndarray, image: str | None) -> None:
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ModelError(
            self.model_path or self.backend.name,
            f"the model gave non-finite outputs (NaN or infinity: {bad} of {np.size(values)} {what}) "
            f"on {image or 'the image'}; its results cannot be used",
        )

    def prepare(self, image: str | Path | np.ndarray, allow_non_chest: bool = False) -> PreparedImage:
        """Decode and preprocess ``image`` for this model (``prepare_image``)."""
        return prepare_image(image, self.metadata, allow_non_chest, self.input_budget, self.plausibility)

    def predict(
        self, image: str | Path | np.ndarray, steps: int = 8, allow_non_chest: bool = False
    ) -> Prediction:
        """Classify one image and compute its shift-averaged saliency maps.

        image: a file path (PNG/JPEG/DICOM) or an (h, w) array, uint8 or float in [0, 1].
        steps: shifts per patch side S (power of two, 1..64); S*S shifted copies are run.
        allow_non_chest: accept files whose DICOM header says they are not a frontal chest
        radiograph. Raises CxrEdgeError for unreadable or unsuitable input.
        Timings (ms): decode, preprocess, tile, backend, postprocess; on a GPU "tile" and
        "backend" are the host's enqueue times and "postprocess" includes the wait for the GPU.
        """
        md = self.metadata
        steps = check_steps(steps, md.patch_size)
        prepared = self.prepare(image, allow_non_chest)
        timings = dict(prepared.timings_ms)

        acc = self._accumulators.take(steps)
        try:
            if isinstance(acc, ReusableAccumulator):
                acc.reset()
            if self._device_images is not None and isinstance(acc, DeviceAccumulator):
                maps, stage_ms = self._run_on_device(prepared.model_input, steps, acc)
            else:
                maps, stage_ms = self._run_on_host(prepared.model_input, steps, acc, prepared.name)
        except BaseException:
            self._accumulators.discard(acc)  # half-used: never hand it to the next image
            raise
        if isinstance(acc, ReusableAccumulator):
            self._accumulators.give(steps, acc)
        else:
            self._accumulators.discard(acc)
        # Host logits were checked chunk by chunk (``_run_host_batches``) and the numpy
        # accumulator's float64 arithmetic keeps finite logits finite; logits that never reached
        # the host (a device accumulator) or another postprocess's arithmetic (float32 on a GPU)
        # are checked in the maps.
        if not isinstance(acc, SaliencyAccumulator):
            self._check_finite(maps, prepared.name)
        timings.update(stage_ms)
        return self._prediction(prepared, maps, timings)

    def _prediction(
        self, prepared: PreparedImage, maps: SaliencyMaps, timings: dict[str, float]
    ) -> Prediction:
        return Prediction(
            findings=findings_from(maps, self.metadata),
            maps=maps,
            gray=prepared.gray,
            crop=prepared.crop,
            metadata=self.metadata,
            backend=self.backend.name,
            model=self.model_info,
            image=prepared.name,
            source=prepared.source,
            info=prepared.info,
            timings_ms=timings,
        )

    def _run_on_host(
        self, model_input: np.ndarray, steps: int, acc: Accumulator, image: str | None = None
    ) -> tuple[SaliencyMaps, dict[str, float]]:
        """Tile on the host in chunks of ``max_patches``; logits to the accumulator via the host,
        or straight into a device accumulator's buffer when the backend is a device backend."""
        md = self.metadata
        clock = time.perf_counter
        device = None
        if isinstance(self.backend, DeviceBackend) and isinstance(acc, DeviceAccumulator):
            device = (self.backend, acc)
        spent = _StageSeconds()
        batches = iter_patch_batches(model_input, steps, md.patch_size, self.max_patches)
        self._run_host_batches(batches, acc, spent, image, device)
        t0 = clock()
        if device is not None:
            device_backend, device_acc = device
            with self._backend_lock or contextlib.nullcontext():
                device_acc.wait_for(device_backend.stream_handle)  # an event, not a host sync
        maps = acc.finish(md.labels)
        spent.postprocess += clock() - t0
        return maps, spent.as_ms()

    def _run_host_batches(
        self,
        batches: Iterator[PatchBatch],
        acc: Accumulator,
        spent: _StageSeconds,
        image: str | None,
        device: tuple[DeviceBackend, DeviceAccumulator] | None = None,
    ) -> None:
        """Run host-tiled chunks and hand their logits to ``acc``: via the host, or, with
        ``device`` (this CxrEdge's device backend and ``acc`` as a device accumulator), straight
        into the accumulator's buffer. Adds each stage's time to ``spent``."""
        clock = time.perf_counter
        while True:
            t0 = clock()
            batch = next(batches, None)
            spent.tile += clock() - t0
            if batch is None:
                break
            # The lock (backends that are not thread-safe) spans run + add: a GPU backend's
            # logits may live in buffers the next run overwrites.
            with self._backend_lock or contextlib.nullcontext():
                t0 = clock()
                if device is not None:
                    device_backend, device_acc = device
                    device_backend.run_device(batch.patches, device_acc.logits_address(batch.first_shift))
                    t1 = clock()
                    device_acc.mark_written(batch.first_shift, len(batch.pairs))
                else:
                    logits = self.backend.run(batch.patches)
                    t1 = clock()
                    if not np.all(np.isfinite(logits)):  # before the postprocess does arithmetic on them
                        self._raise_non_finite("logits", logits, image)
                    acc.add(batch.pairs, logits)
                t2 = clock()
            spent.backend += t1 - t0
            spent.postprocess += t2 - t1

    def predict_progressive(
        self, image: str | Path | np.ndarray, steps: int = 8, allow_non_chest: bool = False
    ) -> Iterator[Prediction]:
        """Yield the prediction at S' = 1, 2, 4, ..., ``steps`` in turn, refining one set of runs.

        Every shifted copy of S runs exactly once in all: level S' adds only the shifts that
        level S'/2 lacks (powers of two nest, ``tile.level_pairs``), and each yielded
        Prediction equals ``predict(image, steps=S')`` (same patch logits, same arithmetic).
        The first comes right after the backend's first chunk (the one unshifted copy).
        ``timings_ms`` are cumulative up to that level (``decode`` .. ``postprocess``).

        Levels are built by the numpy ``SaliencyAccumulator`` from the logits the backend's
        ``run`` returns (patches tiled on the host), whatever postprocess this CxrEdge was given:
        the CUDA postprocess and the device tiling build one final level only. Stopping early
        (closing the generator) is fine.
        """
        md = self.metadata
        steps = check_steps(steps, md.patch_size)
        prepared = self.prepare(image, allow_non_chest)
        clock = time.perf_counter
        acc = SaliencyAccumulator(steps, md.image_size, md.patch_size, md.num_classes)
        spent = _StageSeconds()
        for level in progressive_levels(steps):
            pairs = level_pairs(level, md.patch_size)
            batches = iter_patch_batches(prepared.model_input, steps, md.patch_size, self.max_patches, pairs)
            self._run_host_batches(batches, acc, spent, prepared.name)
            t0 = clock()
            maps = acc.finish_level(md.labels, level)
            spent.postprocess += clock() - t0
            yield self._prediction(prepared, maps, {**prepared.timings_ms, **spent.as_ms()})

    def _run_on_device(
        self, model_input: np.ndarray, steps: int, acc: DeviceAccumulator
    ) -> tuple[SaliencyMaps, dict[str, float]]:
        """Upload once, tile each chunk on the GPU into the engine's input, engine logits into
        the postprocess's buffer; all on the engine's stream, then the postprocess after an event."""
        backend = self.backend
        assert isinstance(backend, DeviceBackend) and self._device_images is not None
        md = self.metadata
        clock = time.perf_counter
        per_shift = md.patches_per_image
        shifts_per_chunk = min(self.max_patches, backend.chunk_patches) // per_shift
        total = steps * steps
        spent = _StageSeconds()
        image = self._device_images.take(0)
        try:
            with self._backend_lock or contextlib.nullcontext():
                stream = backend.stream_handle
                t0 = clock()
                image.upload(model_input, stream)
                spent.tile += clock() - t0
                for first in range(0, total, shifts_per_chunk):
                    count = min(shifts_per_chunk, total - first)
                    t0 = clock()
                    image.tile(steps, first, count, backend.input_address(), stream)
                    t1 = clock()
                    backend.run_device_input(count * per_shift, acc.logits_address(first))
                    acc.mark_written(first, count)
                    spent.tile += t1 - t0
                    spent.backend += clock() - t1
                acc.wait_for(stream)
            t0 = clock()
            maps = acc.finish(md.labels)
            spent.postprocess += clock() - t0
        except BaseException:
            self._device_images.discard(image)
            raise
        self._device_images.give(0, image)
        return maps, spent.as_ms()

    def close(self) -> None:
        """Free what the model keeps between images: pooled postprocess buffers (GPU memory,
        streams), device images, and the backend if ``load`` opened it. Idempotent; do not
        ``predict`` afterwards."""
        self._accumulators.close()
        if self._device_images is not None:
            self._device_images.close()
        if self._owns_backend and isinstance(self.backend, Closeable):
            self.backend.close()
        self._owns_backend = False

    def __enter__(self) -> CxrEdge:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _StageSeconds:
    """Wall time spent per stage of one prediction, in seconds (summed over chunks)."""

    tile: float = 0.0
    backend: float = 0.0
    postprocess: float = 0.0

    def as_ms(self) -> dict[str, float]:
        return {"tile": self.tile * 1e3, "backend": self.backend * 1e3, "postprocess": self.postprocess * 1e3}
