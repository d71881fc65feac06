"""Export the MedicalPatchNet patch backbone to a simplified, checked ONNX model with metadata.

Graph: input ``patches`` ``(N, 1, P, P) float32 in [0, 1]`` (N dynamic) -> output ``logits``
``(N, C) float32``. Steps: TorchScript export (opset 17) -> onnxsim -> metadata -> onnx.checker
-> parity check against PyTorch with ONNX Runtime (``cxr_edge.compare``, elementwise
``|onnx - torch| <= atol + rtol * |torch|``) -> atomic rename. A failed step leaves no file.

Why the TorchScript exporter (``dynamo=False``): for a static CNN it produces the same graph as
the dynamo exporter, in a fraction of the time (no torch.export tracing, no onnxscript
optimiser pass) and with fewer moving parts; onnxsim then does the clean-up either way.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_edge import __version__
from cxr_edge.atomic import atomic_path
from cxr_edge.compare import EXPORT, Comparison, Tolerance, compare
from cxr_edge.errors import CxrEdgeError
from cxr_edge.metadata import ModelMetadata, write_onnx_metadata

OPSET = 17
INPUT_NAME = "patches"
OUTPUT_NAME = "logits"
#: Per-patch logit tolerance of an export (see ``cxr_edge.compare`` for the reasoning).
PARITY_TOLERANCE = EXPORT
#: Batch sizes the parity check runs (dynamic N must work for each).
PARITY_BATCH_SIZES = (1, 7, 64)


class ParityError(CxrEdgeError):
    """ONNX Runtime does not reproduce PyTorch within the tolerance (an accuracy gate, not bad input)."""


@dataclass
class ExportReport:
    """What an export did: output path, timings (s), size (bytes), parity figures (logit units)."""

    path: Path
    metadata: ModelMetadata
    exporter: str
    opset: int
    onnx_bytes: int = 0
    nodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    parity_max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch size -> max |diff|
    parity: Comparison | None = None  # all parity patches, every batch size together

    @property
    def logit_std(self) -> float:
        """Std of all PyTorch patch logits over the parity patches (NaN without a parity check)."""
        return self.parity.reference_std if self.parity is not None else float("nan")

    @property
    def max_abs_diff(self) -> float:
        return max(self.parity_max_abs_diff.values(), default=float("nan"))

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def parity_patches(metadata: ModelMetadata, count: int, seed: int = 0) -> np.ndarray:
    """Image-like patches ``(count, 1, P, P) float32 in [0, 1]``, including the zero-padded
    kinds that shifted copies produce (all zeros; zeros on one side; a zero corner)."""
    from cxr_edge.model.sample_patches import image_like_patches

    patches = image_like_patches(count, metadata.patch_size, seed=seed, image_size=metadata.image_size)
    half = metadata.patch_size // 2
    if count >= 4:
        patches[0] = 0.0  # a patch wholly outside the shifted image
        patches[1, :, :, :half] = 0.0  # zeros on one side
        patches[2, :, :half, :half] = 0.0  # a zero corner
    return patches


class _Steps:
    """Times named steps; shows a spinner and a done line on a rich console when one is given."""

    def __init__(self, report: ExportReport, console: Any | None) -> None:
        self.report = report
        self.console = console

    @contextlib.contextmanager
    def __call__(self, name: str, label: str) -> Iterator[None]:
        start = time.perf_counter()
        status = self.console.status(label + " ...") if self.console is not None else contextlib.nullcontext()
        with status:
            yield
        elapsed = time.perf_counter() - start
        self.report.seconds[name] = elapsed
        if self.console is not None:
            self.console.print(f"[green]done[/] {label} ({elapsed:.1f} s)")


def _torch_to_onnx(model: Any, patch_size: int, opset: int) -> bytes:
    import torch

    dummy = torch.zeros(2, 1, patch_size, patch_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter accepts file objects
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _simplify(proto: Any, path: Path) -> Any:
    import onnxsim  # type: ignore[import-untyped]

    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:  # onnxsim raises plain RuntimeErrors from C++
        raise CxrEdgeError(path, f"onnx-simplifier failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not ok:
        raise CxrEdgeError(path, "onnx-simplifier could not validate the simplified model")
    return simplified


def _parity(
    model: Any, onnx_path: Path, metadata: ModelMetadata, report: ExportReport, tolerance: Tolerance
) -> Comparison:
    """Fill ``report``'s per-batch figures and return the elementwise comparison of all patches."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    all_patches = parity_patches(metadata, sum(PARITY_BATCH_SIZES), seed=1)
    start = 0
    torch_logits, onnx_logits = [], []
    for batch in PARITY_BATCH_SIZES:
        patches = all_patches[start : start + batch]
        start += batch
        with torch.no_grad():
            expected = model(torch.from_numpy(patches)).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: patches})
        if got.shape != expected.shape or got.dtype != np.float32:
            raise CxrEdgeError(
                onnx_path,
                f"ONNX output {got.shape} {got.dtype} != PyTorch {expected.shape} float32 at N={batch}",
            )
        report.parity_max_abs_diff[batch] = float(np.max(np.abs(got.astype(np.float64) - expected)))
        torch_logits.append(expected.astype(np.float64))
        onnx_logits.append(got)
    return compare(np.concatenate(onnx_logits), np.concatenate(torch_logits), tolerance)


def export_onnx(
    model: Any,
    out_path: str | Path,
    metadata: ModelMetadata,
    parity: bool = True,
    *,
    opset: int = OPSET,
    tolerance: Tolerance = PARITY_TOLERANCE,
    console: Any | None = None,
    simplify: bool = True,
) -> ExportReport:
    """Export ``model`` (a MedicalPatchNet) to ``out_path`` with ``metadata`` in ``metadata_props``.

    ``metadata.variant`` is taken from ``model.variant`` and ``package_version`` is set to this
    package's; ``checkpoint_sha256`` is the caller's to fill in. With ``parity`` every ONNX Runtime
    patch logit must match PyTorch within ``tolerance`` (elementwise, at several batch sizes,
    zero-padded patches included), else ParityError and no file. ``console``: a
    ``rich.console.Console`` for progress, or None for silence. ``simplify=False`` skips
    onnx-simplifier (same results, a larger graph): for machines without onnxsim, such as GPU
    test boxes.
    """
    import onnx

    out_path = Path(out_path)
    if opset < 17:
        raise ValueError(f"opset {opset} < 17")
    if metadata.num_classes != model.num_classes:
        raise CxrEdgeError(
            out_path,
            f"metadata has {metadata.num_classes} labels but the model has {model.num_classes} classes",
        )
    metadata = metadata.with_(variant=model.variant, package_version=__version__)
    model.eval()
    report = ExportReport(path=out_path, metadata=metadata, exporter="torchscript", opset=opset)
    step = _Steps(report, console)

    with step("export", "exporting PyTorch -> ONNX"):
        proto = onnx.load_from_string(_torch_to_onnx(model, metadata.patch_size, opset))
    with step("simplify", "simplifying (onnx-simplifier)" if simplify else "writing metadata"):
        if simplify:
            proto = _simplify(proto, out_path)
        # onnxsim records its own bookkeeping in metadata_props; keep ours as the only entry.
        del proto.metadata_props[:]
        write_onnx_metadata(proto, metadata)
        proto.producer_name = "cxr-edge"
        proto.producer_version = __version__
        proto.doc_string = (
            f"MedicalPatchNet patch backbone ({metadata.variant.name}): {INPUT_NAME} (N, 1, "
            f"{metadata.patch_size}, {metadata.patch_size}) float32 in [0, 1] -> {OUTPUT_NAME} "
            f"(N, {metadata.num_classes}) float32"
        )
    with step("check", "checking (onnx.checker)"):
        data = proto.SerializeToString()
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:
            raise CxrEdgeError(out_path, f"onnx.checker rejected the export ({str(exc)[:200]})") from exc
    report.onnx_bytes = len(data)
    report.nodes = len(proto.graph.node)

    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
        if parity:
            with step(
                "parity",
                f"parity check PyTorch vs ONNX Runtime (N = {', '.join(map(str, PARITY_BATCH_SIZES))})",
            ):
                parity_result = _parity(model, tmp, metadata, report, tolerance)
            report.parity = parity_result
            if not parity_result.passed:
                raise ParityError(out_path, f"parity check failed: {parity_result.summary()}")
    return report
