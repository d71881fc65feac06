"""A built TensorRT plan against an ONNX model: image logits of the same patches, elementwise.

``build-engine`` runs it on every plan before writing it (``tensorrt_build.build_engine``'s
``check``): the plan and the reference ONNX (float32, on ONNX Runtime) see the same whole
shifted copies; each copy's image logits (mean over its patches) must agree within the plan's
precision's tolerance (``cxr_edge.compare.BY_PRECISION``: fp32 plans may run TF32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_edge.compare import BY_PRECISION, Comparison, compare
from cxr_edge.engine.manifest import EngineManifest
from cxr_edge.engine.tensorrt_build import PlanCheck
from cxr_edge.errors import CxrEdgeError


def copy_logits(patch_logits: np.ndarray, patches_per_copy: int) -> np.ndarray:
    """``(copies * K, C)`` patch logits -> ``(copies, C) float64`` image logits (mean per copy)."""
    rows, classes = patch_logits.shape
    if rows == 0 or rows % patches_per_copy:
        raise CxrEdgeError(None, f"need whole copies of {patches_per_copy} patches, got {rows} rows")
    means: np.ndarray = patch_logits.reshape(-1, patches_per_copy, classes).mean(axis=1, dtype=np.float64)
    return means


def plan_vs_onnx(reference: str | Path, patches: np.ndarray) -> PlanCheck:
    """A ``PlanCheck`` comparing a plan with ``reference`` on ``patches`` ``(copies * 64, 1, P, P)
    float32`` (computed once here, not per plan)."""
    from cxr_edge.backends.onnxruntime import OnnxRuntimeBackend

    reference_backend = OnnxRuntimeBackend(reference)
    per_copy = reference_backend.metadata.patches_per_image
    expected = copy_logits(reference_backend.run(patches), per_copy)

    def check(plan: Path, manifest: EngineManifest) -> Comparison:
        from cxr_edge.backends.tensorrt import TensorRtBackend

        with TensorRtBackend(plan, manifest=manifest) as backend:
            got = copy_logits(backend.run(patches), per_copy)
        return compare(got, expected, BY_PRECISION[manifest.precision])

    return check
