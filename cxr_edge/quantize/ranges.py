"""Activation ranges of a float32 model on a calibration set, and their cache file.

ONNX Runtime's calibrators collect the ranges (percentile or entropy histograms, or min/max) of
every float tensor that an ONNX Runtime-quantizable op reads or writes, so one cache serves every
placement (both INT8 recipes, any ``keep_float``). The cache is ONNX Runtime's JSON format
(``TensorsData``), written atomically with the permissions of any other output (ONNX Runtime's
own writer leaves a 0600 file); it is reused only when its name says same set, model, target and
method (see ``cxr_edge.quantize.cache_path``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge.atomic import write_text_atomic
from cxr_edge.calibration import CalibrationSet, PatchReader
from cxr_edge.errors import CxrEdgeError


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Around ONNX Runtime's quantization tools: they log advice ("consider pre-processing")
    through the root logger and print progress on stdout; both are held back here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def calibration_method(method: str) -> Any:
    """ONNX Runtime's ``CalibrationMethod`` that collects for ``method`` (mse: the |x| histograms)."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "percentile": CalibrationMethod.Percentile,
        "mse": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
    }[method]


def calibrated_op_types() -> list[str]:
    """The op types whose tensors are calibrated: all ONNX Runtime can quantize (as ``quantize_static``)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def mse_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 127) -> float:
    """The clipping threshold t (a histogram edge) with the least mean squared error of symmetric
    quantization to ``levels`` steps per sign: rounding noise (t/levels)^2/12 for |x| <= t plus
    the clipping error (|x| - t)^2 above it. ``hist``/``edges``: histogram of |x| (numpy's)."""
    counts = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    # suffix sums over bins i >= k of n, n*c, n*c^2: the clipped bins for t = edges[k]
    s0 = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum((counts * centers)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((counts * centers**2)[::-1])[::-1], [0.0]])
    t = edges[1:]
    k = np.arange(1, len(edges))
    kept = s0[0] - s0[k]
    error = kept * (t / levels) ** 2 / 12 + s2[k] - 2 * t * s1[k] + t * t * s0[k]
    return float(t[int(np.argmin(error))])


def activation_ranges(
    onnx_in: str | Path,
    calib: CalibrationSet,
    *,
    method: str,
    percentile: float,
    symmetric: bool,
    cache: Path | None,
) -> Any:
    """ONNX Runtime ``TensorsData`` (tensor name -> lowest/highest) for ``onnx_in`` on ``calib``.

    Methods: ``percentile`` (clip at that percentile), ``entropy`` (KL divergence), ``minmax``,
    ``mse`` (least squared quantization error per tensor, symmetric only). Read from ``cache``
    when that file exists (its method must match), else measured and, with ``cache`` set,
    written there. ``symmetric``: ranges symmetric around 0 (TensorRT).
    """
    if method == "mse" and not symmetric:
        raise CxrEdgeError(None, "calibration method mse is for symmetric ranges (--target tensorrt)")
    if cache is not None and cache.is_file():
        return _read_cache(cache, method)

    import onnx
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator

    options: dict[str, Any] = {"symmetric": symmetric}
    if method in ("percentile", "mse"):
        options["percentile"] = percentile
    model = onnx.load(str(onnx_in))
    try:
        with tempfile.TemporaryDirectory(prefix="cxr-edge-calib.") as tmp, quiet_onnxruntime():
            source = Path(tmp) / "model.onnx"
            onnx.save(model, str(source))
            calibrator = create_calibrator(
                source,
                calibrated_op_types(),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=calibration_method(method),
                extra_options=options,
            )
            reader = PatchReader(calib.patches, model.graph.input[0].name)
            for start in range(len(reader)):  # one batch at a time: bounded memory for histograms
                reader.set_range(start, start + 1)
                calibrator.collect_data(reader)
            if method == "mse":
                # the collector's |x| histograms (2048+ bins per tensor), one threshold each
                thresholds = {
                    name: np.float32(mse_threshold(hist, edges))
                    for name, (hist, edges, *_) in calibrator.collector.histogram_dict.items()
                }
                ranges = TensorsData(
                    calibration_method(method),
                    {n: TensorData(lowest=-t, highest=t) for n, t in thresholds.items()},
                )
            else:
                ranges = calibrator.compute_data()
            del calibrator
            if cache is not None:
                _write_cache(ranges, method, cache, Path(tmp))
    except (ValueError, RuntimeError) as exc:
        raise CxrEdgeError(onnx_in, f"INT8 calibration failed ({str(exc).splitlines()[0]})") from exc
    return ranges


#: Key cxr-edge adds to ONNX Runtime's cache JSON: the method by its cxr-edge name (mse and
#: percentile both collect with ONNX Runtime's percentile calibrator).
METHOD_KEY = "cxr_edge_method"


def _read_cache(cache: Path, method: str) -> Any:
    from onnxruntime.quantization.calibrate import TensorsData

    try:
        raw = json.loads(cache.read_text())
        ranges = TensorsData.from_dict(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrEdgeError(cache, f"unreadable range cache ({exc}); delete it to recalibrate") from exc
    made_with = raw.get(METHOD_KEY, str(ranges.calibration_method).rsplit(".", 1)[-1].lower())
    if made_with != method:
        raise CxrEdgeError(cache, f"range cache was made with {made_with}, not {method}; delete it")
    return ranges


def _write_cache(ranges: Any, method: str, cache: Path, scratch: Path) -> None:
    from onnxruntime.quantization.calibrate import save_tensors_data

    staged = scratch / "ranges.json"
    save_tensors_data(ranges, staged)  # ONNX Runtime's serialiser; its file mode is 0600
    raw = json.loads(staged.read_text())
    raw[METHOD_KEY] = method
    write_text_atomic(cache, json.dumps(raw))


def absmax(ranges: Any, tensor: str) -> float:
    """``max(|lowest|, |highest|)`` of ``tensor``; CxrEdgeError when the ranges lack it."""
    if tensor not in ranges:
        raise CxrEdgeError(None, f"no calibration range for tensor '{tensor}'; delete the range cache")
    lowest, highest = ranges[tensor].range_value  # numpy scalars or 1-element arrays
    return float(max(np.abs(np.asarray(lowest)).max(), np.abs(np.asarray(highest)).max()))
