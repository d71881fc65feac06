"""Bootstrap confidence intervals the way CheXlocalize computes them.

rajpurkarlab/cheXlocalize, tag v1.0.0, ``eval.py`` (``bootstrap_metric``, ``compute_cis``):
the per-image table (one row per image, one column per pathology, NaN where an image does not
count for that pathology) is resampled by rows with replacement, ``num_replicates`` = 1000
times, every replicate drawn as ``np.random.choice(n, size=n, replace=True)`` from numpy's
legacy generator seeded once (``np.random.seed(seed)``, default 0). A replicate's figure for a
pathology is the mean of its non-NaN values. The summary is the replicates' mean, with the
95 % interval read from the sorted replicates at indices ``int(0.025 R) - 1`` and
``int(0.975 R) - 1`` (24 and 974 for R = 1000; NaN replicates sort last, as pandas sorts).

Here the draws are ``numpy.random.RandomState(seed).choice`` in the same order, so for the same
table and seed the replicates are the official ones. The same draws serve every figure of one
evaluation (every protocol, map and class), like a joint resampling of the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Replicates CheXlocalize draws (``eval.evaluate``: ``bootstrap_metric(metric_df, 1000)``).
DEFAULT_REPLICATES = 1000
#: CheXlocalize's ``np.random.seed(args.seed)`` default.
DEFAULT_SEED = 0
#: Fewer replicates put the lower interval index below zero.
MIN_REPLICATES = 40


def bootstrap_indices(n: int, replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``(replicates, n) int64`` row indices, replicate r drawn r-th from ``RandomState(seed)``."""
    if n < 1:
        raise ValueError(f"nothing to resample (n = {n})")
    if replicates < MIN_REPLICATES:
        raise ValueError(f"need at least {MIN_REPLICATES} bootstrap replicates, got {replicates}")
    rs = np.random.RandomState(seed)
    return np.stack([rs.choice(n, size=n, replace=True) for _ in range(replicates)]).astype(np.int64)


@dataclass(frozen=True)
class Summary:
    """One figure: ``value`` on all cases (mean of the non-NaN values), and the bootstrap
    ``mean``, ``lower`` and ``upper`` (95 %); ``cases``: how many non-NaN values ``value`` has.
    NaN where nothing counts."""

    value: float
    mean: float
    lower: float
    upper: float
    cases: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "value": self.value,
            "mean": self.mean,
            "lower": self.lower,
            "upper": self.upper,
            "cases": self.cases,
        }


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the non-NaN entries along ``axis``; NaN where there are none (no warning)."""
    valid = ~np.isnan(values)
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    out: np.ndarray = np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)
    return out


def interval(replicate_values: np.ndarray) -> tuple[float, float, float]:
    """``(mean, lower, upper)`` of ``(R,)`` replicate figures, CheXlocalize's ``compute_cis``
    (the mean skips NaN replicates; NaN replicates sort last)."""
    r = np.sort(np.asarray(replicate_values, dtype=np.float64))
    n = r.size
    lower = r[int(0.025 * n) - 1]
    upper = r[int(0.975 * n) - 1]
    valid = r[~np.isnan(r)]
    mean = float(valid.mean()) if valid.size else float("nan")
    return mean, float(lower), float(upper)


def summarize(values: np.ndarray, indices: np.ndarray | None) -> tuple[list[Summary], Summary]:
    """Per-column summaries of an ``(n, C)`` table (NaN = does not count), and their average.

    The average is the mean over columns of the per-column figures (columns without any value
    left out), for the point value and in every replicate. ``indices``: ``bootstrap_indices``
    for the n rows, or None for point values only (bootstrap fields NaN).
    """
    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"expected an (n, C) table, got shape {table.shape}")
    point = _nanmean(table, axis=0)  # (C,)
    cases = (~np.isnan(table)).sum(axis=0)
    if indices is None:
        nan = float("nan")
        per = [Summary(float(v), nan, nan, nan, int(k)) for v, k in zip(point, cases)]
        avg = _nanmean(point[None, :], axis=1)[0]
        return per, Summary(float(avg), nan, nan, nan, int(cases.sum()))
    # column by column: (R, n) at a time, not (R, n, C)
    replicates = np.stack([_nanmean(table[:, c][indices], axis=1) for c in range(table.shape[1])], axis=1)
    per = []
    for c in range(table.shape[1]):
        mean, lower, upper = interval(replicates[:, c])
        per.append(Summary(float(point[c]), mean, lower, upper, int(cases[c])))
    avg_point = _nanmean(point[None, :], axis=1)[0]
    mean, lower, upper = interval(_nanmean(replicates, axis=1))
    return per, Summary(float(avg_point), mean, lower, upper, int(cases.sum()))
