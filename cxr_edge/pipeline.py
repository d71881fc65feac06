"""The Python API for embedding: load a model once, then ``predict`` per image, no disk writes.

    edge = CxrEdge.load()                      # bundled demo model, ONNX Runtime on the CPU
    pred = edge.predict("chest.png", steps=8)  # or an (h, w) uint8 / float array
    pred.findings, pred.maps.scaled, pred.overlay("Cardiomegaly"), pred.to_report()

Stages: decode -> preprocess -> tile (bounded chunks) -> backend -> postprocess. The backend
and the postprocess are chosen at load time, so a GPU backend (TensorRT) and a GPU
postprocess (CUDA accumulator) plug in without touching ``predict``.

Threads: ``predict`` keeps no shared mutable state (each call has its own accumulator and
timings); the ONNX Runtime session is safe to run from several threads. Any other backend,
unless it declares ``thread_safe = True``, is guarded by a lock (around run + accumulate), so
concurrent calls are always safe.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cxr_edge.backends.base import PatchBackend
from cxr_edge.digest import sha256_file
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata

if TYPE_CHECKING:
    from cxr_edge.postprocess import SaliencyMaps
    from cxr_edge.preprocess import CropBox

#: Largest number of patches tiled and sent to the backend at once. 256 patches = 4 shifted
#: images, 16 MiB of input; keeps peak memory bounded for any S (S = 64 is 262,144 patches).
DEFAULT_MAX_PATCHES = 256

#: Steps per patch must nest (powers of two) and stay within one patch of 64 px.
VALID_STEPS = (1, 2, 4, 8, 16, 32, 64)

MAP_KINDS = ("raw", "scaled")

#: How many findings get an overlay by default when the model carries no thresholds.
TOP_K_WITHOUT_THRESHOLDS = 3


class Accumulator(Protocol):
    """Turns patch logits into maps; ``SaliencyAccumulator`` (numpy) or a GPU twin."""

    def add(self, pairs: np.ndarray, logits: np.ndarray) -> None: ...

    def finish(self, labels: tuple[str, ...]) -> SaliencyMaps: ...


class DeviceBackend(Protocol):
    """A GPU backend that can leave logits on the device (``TensorRtBackend``)."""

    def run_device(self, patches: np.ndarray, out_ptr: int | None = None) -> Any: ...

    def synchronize(self) -> None: ...


class DeviceAccumulator(Protocol):
    """A GPU accumulator the engine can write into (``GpuPostprocess``)."""

    def logits_address(self, first_shift: int = 0) -> int: ...

    def mark_written(self, first_shift: int, count: int) -> None: ...


#: ``factory(steps, image_size, patch_size, num_classes) -> Accumulator``.
AccumulatorFactory = Callable[[int, int, int, int], Accumulator]


def check_steps(steps: int) -> int:
    """Return ``steps`` if it is a power of two in 1..64, else raise CxrEdgeError."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) not in VALID_STEPS:
        raise CxrEdgeError(None, f"steps must be a power of two in 1..64, got {steps!r}")
    return int(steps)


@dataclass(frozen=True)
class Finding:
    """One class of the model for one image.

    ``logit``: image logit (mean of the 64 patch logits of the unshifted image);
    ``probability``: sigmoid(logit); ``threshold``: the model's decision threshold on the
    probability, or None; ``positive``: probability >= threshold, or None without threshold.
    """

    label: str
    logit: float
    probability: float
    threshold: float | None
    positive: bool | None


@dataclass(frozen=True)
class Prediction:
    """Everything ``predict`` found for one image. Nothing here touches the disk.

    gray: (h, w) uint8, the 8-bit image the model's input was made from (original
    resolution). crop: the centre square (original pixels) resized to the model frame.
    maps: logits, probabilities and raw/scaled (C, N, N) float32 maps in the model frame.
    timings_ms: per-stage wall time of this call.
    """

    findings: tuple[Finding, ...]
    maps: SaliencyMaps
    gray: np.ndarray
    crop: CropBox
    metadata: ModelMetadata
    backend: str
    model: dict[str, Any]
    image: str | None = None
    source: str = "array"
    info: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.maps.steps)

    @property
    def original_shape(self) -> tuple[int, int]:
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f.label for f in self.findings)

    def finding(self, label: str) -> Finding:
        """The finding named ``label`` (exact label, case-insensitive)."""
        return self.findings[self._index(label)]

    def _index(self, label: str) -> int:
        folded = [f.label.casefold() for f in self.findings]
        try:
            return folded.index(label.casefold())
        except ValueError:
            raise CxrEdgeError(
                None, f"unknown finding {label!r}; the model has: {', '.join(self.labels)}"
            ) from None

    def reported_labels(self) -> list[str]:
        """Labels to show by default: the positives by the model's thresholds, or, when the
        model has no thresholds, the top 3 by probability (highest first)."""
        if self.metadata.thresholds is not None:
            return [f.label for f in self.findings if f.positive]
        ranked = sorted(self.findings, key=lambda f: -f.probability)
        return [f.label for f in ranked[:TOP_K_WITHOUT_THRESHOLDS]]

    def value_map(self, label: str, map: str = "scaled") -> np.ndarray:
        """(N, N) float32 map of one finding in logit units, model frame."""
        if map not in MAP_KINDS:
            raise CxrEdgeError(None, f"map must be one of {', '.join(MAP_KINDS)}, got {map!r}")
        maps: np.ndarray = self.maps.scaled if map == "scaled" else self.maps.raw
        one: np.ndarray = maps[self._index(label)]
        return one

    def overlay(
        self,
        label: str,
        map: str = "scaled",
        vmax: float | None = None,
        legend: bool = True,
        alpha_max: float = 0.6,
    ) -> np.ndarray:
        """The X-ray at its original resolution with the finding's map blended over it.

        Red = evidence for, blue = against, symmetric scale: ``vmax`` (logit units) defaults
        to the map's largest magnitude. Returns (h, w, 3) uint8 RGB.
        """
        from cxr_edge import render

        value_map = self.value_map(label, map)
        if vmax is None:
            vmax = float(np.max(np.abs(value_map)))
        rgb = render.overlay(self.gray, value_map, self.crop, vmax, alpha_max=alpha_max)
        if legend:
            f = self.finding(label)
            render.draw_legend(rgb, f.label, f.probability, vmax, map_name=map, threshold=f.threshold)
        return rgb

    def to_report(self, map: str = "scaled") -> dict[str, Any]:
        """The JSON-ready report dict (see ``cxr_edge.report``)."""
        from cxr_edge.report import build_report

        return build_report(self, map=map)


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


def decode_image(
    image: str | Path | np.ndarray, allow_non_chest: bool = False
) -> tuple[np.ndarray, str | None, str, dict[str, Any]]:
    """The 8-bit image ``predict`` works on: ``(gray (h, w) uint8, name, source, info)``.

    image: a file path (PNG/JPEG/DICOM, read by ``cxr_edge.io.load_xray``; name = the path) or
    an (h, w) array, uint8 or float in [0, 1] (name None, source "array", no info).
    """
    if isinstance(image, (str, Path)):
        from cxr_edge.io import load_xray

        xray = load_xray(image, allow_non_chest=allow_non_chest)
        return xray.pixels, str(image), xray.source, dict(xray.info)
    return _as_gray(image), None, "array", {}


def findings_from_maps(maps: SaliencyMaps, metadata: ModelMetadata) -> tuple[Finding, ...]:
    """One Finding per label: the image logit and probability, judged by the model's thresholds."""
    thresholds = metadata.thresholds
    findings = []
    for c, label in enumerate(metadata.labels):
        p = float(maps.probabilities[c])
        thr = None if thresholds is None else float(thresholds[c])
        findings.append(Finding(label, float(maps.logits[c]), p, thr, None if thr is None else p >= thr))
    return tuple(findings)


def describe_model(metadata: ModelMetadata, path: str | None, sha256: str | None) -> dict[str, Any]:
    """What a report says about the model: the file (path, sha256) and its metadata summary."""
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


def _open_backend(kind: str, model: Path, threads: int | None) -> PatchBackend:
    if kind == "auto":
        kind = "tensorrt" if model.suffix.lower() in (".plan", ".engine") else "onnxruntime"
    if kind == "onnxruntime":
        from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, threads=threads)
    if kind == "tensorrt":
        try:
            from cxr_edge.backends.tensorrt import TensorRtBackend
        except ImportError as exc:
            raise CxrEdgeError(model, f"the TensorRT backend is not available here ({exc})") from exc
        return TensorRtBackend(model)
    raise CxrEdgeError(None, f"backend must be 'auto', 'onnxruntime' or 'tensorrt', got {kind!r}")


def _is_thread_safe(backend: PatchBackend) -> bool:
    """A backend may declare ``thread_safe``; ONNX Runtime sessions are (concurrent ``run`` is
    documented as safe); anything else is assumed not to be (e.g. reused device buffers)."""
    declared = getattr(backend, "thread_safe", None)
    if declared is not None:
        return bool(declared)
    return type(backend).__module__ == "cxr_edge.backends.onnxruntime"


def _default_accumulator() -> AccumulatorFactory:
    """The CUDA postprocess when its library (tools/build_cuda.sh), cuda-python and a GPU are
    all present, else the numpy ``SaliencyAccumulator`` (same results; the CUDA one's oracle)."""
    from cxr_edge.cuda.kernels import find_library

    if find_library() is not None:  # cheap file check: a CPU-only install never loads CUDA
        from cxr_edge.cuda.postprocess import gpu_accumulator_factory

        factory = gpu_accumulator_factory()
        if factory is not None:
            return factory
    from cxr_edge.postprocess import SaliencyAccumulator

    return SaliencyAccumulator


class CxrEdge:
    """A loaded model, ready to ``predict`` on images. Create it once with ``CxrEdge.load``."""

    def __init__(
        self,
        backend: PatchBackend,
        model_path: str | Path | None = None,
        accumulator: AccumulatorFactory | None = None,
        max_patches: int = DEFAULT_MAX_PATCHES,
    ) -> None:
        """backend: any PatchBackend; model_path: the file it came from (for reports);
        accumulator: the postprocess factory (default: numpy ``SaliencyAccumulator``);
        max_patches: patches per tile/backend chunk (bounds memory)."""
        self.backend = backend
        self.metadata: ModelMetadata = backend.metadata
        self.model_path = None if model_path is None else Path(model_path)
        self._accumulator = accumulator or _default_accumulator()
        self.max_patches = max(int(max_patches), self.metadata.patches_per_image)
        self._backend_lock = None if _is_thread_safe(backend) else threading.Lock()
        self._model_info: dict[str, Any] | None = None

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        backend: str | PatchBackend = "auto",
        threads: int | None = None,
        accumulator: AccumulatorFactory | None = None,
        max_patches: int = DEFAULT_MAX_PATCHES,
    ) -> CxrEdge:
        """Open a model. model: an ONNX file (default: the bundled demo model) or a TensorRT
        engine (.plan/.engine); backend: "auto" (TensorRT for an engine, else ONNX Runtime),
        "onnxruntime", "tensorrt", or a ready PatchBackend; threads: CPU threads (None: all)."""
        if not isinstance(backend, str):
            return cls(backend, model, accumulator, max_patches)
        if model is None:
            from cxr_edge.assets import default_model_path

            model = default_model_path()
        model = Path(model)
        if not model.is_file():
            raise CxrEdgeError(model, "no such model file")
        edge = cls(_open_backend(backend, model, threads), model, accumulator, max_patches)
        _ = edge.model_info  # hash the model file now, not inside the first predict
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

    def predict(
        self, image: str | Path | np.ndarray, steps: int = 8, allow_non_chest: bool = False
    ) -> Prediction:
        """Classify one image and compute its shift-averaged saliency maps.

        image: a file path (PNG/JPEG/DICOM) or an (h, w) array, uint8 or float in [0, 1].
        steps: shifts per patch side S (power of two, 1..64); S*S shifted copies are run.
        allow_non_chest: accept files whose DICOM header says they are not a frontal chest
        radiograph. Raises CxrEdgeError for unreadable or unsuitable input.
        """
        from cxr_edge.preprocess import preprocess
        from cxr_edge.tile import iter_patch_batches

        steps = check_steps(steps)
        md = self.metadata
        if steps > md.patch_size:
            raise CxrEdgeError(None, f"steps {steps} exceeds the model's patch size {md.patch_size}")
        timings: dict[str, float] = {}
        clock = time.perf_counter

        t0 = clock()
        gray, name, source, info = decode_image(image, allow_non_chest)
        timings["decode"] = (clock() - t0) * 1e3

        t0 = clock()
        pre = preprocess(gray, md.image_size, path=name)
        timings["preprocess"] = (clock() - t0) * 1e3

        acc = self._accumulator(steps, md.image_size, md.patch_size, md.num_classes)
        # GPU backend + GPU postprocess: the engine writes logits straight into the
        # postprocess's buffer, so patch logits never travel through the host.
        on_device = hasattr(self.backend, "run_device") and hasattr(acc, "mark_written")
        tile_s = backend_s = post_s = 0.0
        batches: Iterator[Any] = iter_patch_batches(pre.image, steps, md.patch_size, self.max_patches)
        while True:
            t0 = clock()
            batch = next(batches, None)
            tile_s += clock() - t0
            if batch is None:
                break
            # The lock (backends that are not thread-safe) spans run + add: a GPU backend's
            # logits may live in buffers the next run overwrites.
            with self._backend_lock or contextlib.nullcontext():
                t0 = clock()
                if on_device:
                    device_acc: DeviceAccumulator = acc  # type: ignore[assignment]
                    device_backend: DeviceBackend = self.backend  # type: ignore[assignment]
                    device_backend.run_device(batch.patches, device_acc.logits_address(batch.first_shift))
                    t1 = clock()
                    device_acc.mark_written(batch.first_shift, len(batch.pairs))
                else:
                    logits = self.backend.run(batch.patches)
                    t1 = clock()
                    acc.add(batch.pairs, logits)
                t2 = clock()
            backend_s += t1 - t0
            post_s += t2 - t1
        t0 = clock()
        if on_device:  # the postprocess runs on its own stream: let the engine finish first
            with self._backend_lock or contextlib.nullcontext():
                self.backend.synchronize()  # type: ignore[attr-defined]
            backend_s += clock() - t0
            t0 = clock()
        maps = acc.finish(md.labels)
        post_s += clock() - t0
        timings.update(tile=tile_s * 1e3, backend=backend_s * 1e3, postprocess=post_s * 1e3)

        return Prediction(
            findings=findings_from_maps(maps, md),
            maps=maps,
            gray=gray,
            crop=pre.crop,
            metadata=md,
            backend=getattr(self.backend, "name", type(self.backend).__name__),
            model=self.model_info,
            image=name,
            source=source,
            info=info,
            timings_ms=timings,
        )
