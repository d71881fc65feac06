"""One elementwise comparator for every logit parity figure (export, FP16/INT8 gate, TensorRT plan).

An element passes when ``|actual - reference| <= atol + rtol * |reference|`` (the rule of
Polygraphy's elementwise comparator): the allowed error grows with the logit's magnitude, so
float32 accumulation noise on a large logit (zero-padded patches reach |logit| ~ 450) is not
mistaken for a broken model, while small logits still get an absolute floor. The report names
the worst element (largest error relative to its own limit), its reference magnitude, and the
reference's standard deviation, the scale every error should be read against.

Tolerances, in logit units (probability = sigmoid(logit); d sigmoid / d logit <= 1/4):

- ``EXPORT``, PyTorch vs ONNX Runtime, both float32, per patch: atol 1e-3 (a probability moves by
  at most 2.5e-4), rtol 1e-4 (~840 float32 ulps: two correct kernels that sum 50+ layers in
  different orders differ by 1e-6 .. 2e-5 relative; a wrong op, weight or epsilon gives 1e-3 or more).
- ``FP16``, image logits of a float16 model (or a TF32/FP16 TensorRT plan) vs float32: float16 keeps
  11 significant bits (unit roundoff 4.9e-4); rounding every layer's output over ~50 layers
  leaves ~1e-2 relative, so rtol 2e-2 and atol 5e-2 (probability +-0.0125).
- ``INT8``, image logits of an INT8 Q/DQ model or plan vs float32: 8-bit activations (256 levels
  per tensor) leave a heavy-tailed error. On the demo model's 206 gate images the median |diff| is
  0.05 logit but a few phantoms move by 2 to 3.4 (logit std 5.3), while AUROC and saliency maps
  hold, and those decide the INT8 gate. So INT8 is judged like Polygraphy's ``check_error_stat``
  on a quantile: 99 % of elements within atol 1.0 + rtol 0.25 x |ref| (the models that pass the
  gate leave 0.1 to 0.3 % outside), which a broken model (a lost scale, a wrong zero point, a
  swapped tensor: most elements off by a logit std) cannot meet. Any NaN or inf fails outright.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise limit ``atol + rtol * |reference|`` (logit units) that at least a ``within``
    fraction of the elements must meet (1.0: every element)."""

    atol: float
    rtol: float
    within: float = 1.0

    def describe(self) -> str:
        share = "" if self.within >= 1.0 else f" for {self.within:.0%} of elements"
        return f"atol {self.atol:g} + rtol {self.rtol:g} x |ref|{share}"


EXPORT = Tolerance(atol=1e-3, rtol=1e-4)
FP16 = Tolerance(atol=5e-2, rtol=2e-2)
INT8 = Tolerance(atol=1.0, rtol=0.25, within=0.99)
#: Image-logit tolerance by the precision a model (ONNX or TensorRT plan) computes in. fp32 plans
#: may use TF32 tensor cores (TensorRT's default on Ampere and later): FP16-like mantissas.
BY_PRECISION: dict[str, Tolerance] = {"fp32": FP16, "fp16": FP16, "int8": INT8}


@dataclass(frozen=True)
class Comparison:
    """Result of ``compare``. ``worst_*`` describe the element with the largest ``|diff| / limit``
    (> 1: beyond its limit); ``failures`` counts such elements; NaN or inf in either array is a
    failure that no ``within`` share excuses (``non_finite``)."""

    tolerance: Tolerance
    count: int
    failures: int
    max_abs_diff: float
    worst_index: tuple[int, ...]
    worst_abs_diff: float
    worst_reference: float
    worst_ratio: float
    reference_std: float
    non_finite: int = 0

    @property
    def passed(self) -> bool:
        allowed = (1.0 - self.tolerance.within) * self.count
        return self.count > 0 and self.non_finite == 0 and self.failures <= allowed + 1e-9

    def summary(self) -> str:
        """One line: max |diff|, the worst element against its limit, logit std, verdict."""
        limit = self.tolerance.atol + self.tolerance.rtol * abs(self.worst_reference)
        beyond = f"{self.failures} of {self.count} elements beyond"
        if self.passed:
            verdict = "passed" if self.failures == 0 else f"passed ({beyond})"
        else:
            verdict = f"FAILED ({beyond})"
        return (
            f"max |diff| {self.max_abs_diff:.3g}; worst element {list(self.worst_index)}: |diff| "
            f"{self.worst_abs_diff:.3g} at |ref| {abs(self.worst_reference):.3g} (limit {limit:.3g}, "
            f"{self.worst_ratio:.2f} of it); ref std {self.reference_std:.3g}; "
            f"{self.tolerance.describe()}: {verdict}"
        )


def compare(actual: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> Comparison:
    """Compare ``actual`` with ``reference`` (same shape, any float dtype) element by element, in float64."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {a.shape} and {b.shape}")
    if a.size == 0:
        nan = float("nan")
        return Comparison(tolerance, 0, 0, nan, (), nan, nan, nan, nan)
    diff = np.abs(a - b)
    limit = tolerance.atol + tolerance.rtol * np.abs(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(limit > 0, diff / limit, np.where(diff > 0, np.inf, 0.0))
    finite_pair = np.isfinite(a) & np.isfinite(b)
    ratio = np.where(finite_pair, ratio, np.inf)  # NaN never passes
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    finite = diff[np.isfinite(diff)]
    return Comparison(
        tolerance=tolerance,
        count=int(a.size),
        failures=int(np.count_nonzero(~(ratio <= 1.0))),
        max_abs_diff=float(diff.max()) if finite.size == diff.size else float("inf"),
        worst_index=tuple(int(i) for i in worst),
        worst_abs_diff=float(diff[worst]),
        worst_reference=float(b[worst]),
        worst_ratio=float(ratio[worst]),
        reference_std=float(b[np.isfinite(b)].std()) if np.isfinite(b).any() else float("nan"),
        non_finite=int(np.count_nonzero(~finite_pair)),
    )
