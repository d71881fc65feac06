"""The elementwise logit comparator: |actual - reference| <= atol + rtol * |reference|."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_edge.compare import BY_PRECISION, EXPORT, FP16, INT8, Tolerance, compare


def test_rule_matches_independent_float64_math() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 40, size=(300, 14)).astype(np.float32)
    actual = (reference + rng.normal(0, 2e-3, size=reference.shape)).astype(np.float32)
    tol = Tolerance(atol=1e-3, rtol=1e-4)
    a, b = actual.astype(np.float64), reference.astype(np.float64)
    ratio = np.abs(a - b) / (1e-3 + 1e-4 * np.abs(b))
    result = compare(actual, reference, tol)
    assert result.count == a.size
    assert result.failures == int((ratio > 1).sum()) > 0 and not result.passed
    assert result.worst_index == tuple(int(i) for i in np.unravel_index(np.argmax(ratio), ratio.shape))
    assert result.worst_ratio == pytest.approx(ratio.max(), rel=1e-12)
    assert result.worst_reference == pytest.approx(float(b[result.worst_index]), rel=1e-12)
    assert result.max_abs_diff == pytest.approx(np.abs(a - b).max(), rel=1e-12)
    assert result.reference_std == pytest.approx(b.std(), rel=1e-12)


def test_error_allowed_grows_with_the_logit() -> None:
    """The export case that motivated it: a zero-padded patch's logit of 450 off by 0.0054 (1.2e-5
    relative, float32 accumulation) passes; a logit of 1 off by 0.002 does not."""
    big = compare(np.array([450.0 + 0.00543]), np.array([450.0]), EXPORT)
    assert big.passed and big.worst_ratio == pytest.approx(0.00543 / (1e-3 + 1e-4 * 450), rel=1e-6)
    small = compare(np.array([1.002]), np.array([1.0]), EXPORT)
    assert not small.passed and small.failures == 1
    edge = compare(np.array([2.0 + 1.2e-3 - 1e-9]), np.array([2.0]), EXPORT)  # just inside the limit
    assert edge.passed


def test_nan_inf_and_shapes() -> None:
    nan = compare(np.array([1.0, np.nan]), np.array([1.0, 1.0]), EXPORT)
    assert not nan.passed and nan.failures == 1 and nan.worst_index == (1,)
    assert not compare(np.array([np.inf]), np.array([1.0]), INT8).passed
    assert not compare(np.zeros(0), np.zeros(0), EXPORT).passed  # nothing compared proves nothing
    with pytest.raises(ValueError, match="shapes"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)), EXPORT)


def test_identical_arrays_pass_and_summary_names_the_worst_element() -> None:
    x = np.linspace(-5, 5, 28).reshape(2, 14)
    same = compare(x, x, FP16)
    assert same.passed and same.max_abs_diff == 0.0 and same.failures == 0
    y = x.copy()
    y[1, 3] += 1.0
    text = compare(y, x, FP16).summary()
    assert "worst element [1, 3]" in text and "FAILED (1 of 28 elements beyond)" in text
    assert f"ref std {x.std():.3g}" in text and "atol 0.05 + rtol 0.02" in text


def test_tolerances_by_precision_are_ordered() -> None:
    assert set(BY_PRECISION) == {"fp32", "fp16", "int8"}
    assert EXPORT.atol < FP16.atol < INT8.atol and EXPORT.rtol < FP16.rtol < INT8.rtol


def test_int8_judges_a_quantile_and_never_excuses_nan() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 5, size=(100, 10))
    actual = reference + rng.normal(0, 0.05, size=reference.shape)
    actual.flat[:5] += 4.0  # 0.5 % of elements far off: INT8's heavy tail
    result = compare(actual, reference, INT8)
    assert result.failures == 5 and result.passed and "passed (5 of 1000 elements beyond)" in result.summary()
    actual.flat[5:15] += 4.0  # 1.5 %: too many
    assert not compare(actual, reference, INT8).passed
    actual = reference.copy()
    actual.flat[0] = np.nan
    nan = compare(actual, reference, INT8)
    assert nan.failures == 1 and nan.non_finite == 1 and not nan.passed
    assert not compare(reference + 5.0, reference, INT8).passed  # a broken model: everything off
