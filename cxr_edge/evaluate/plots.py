"""``eval --plots DIR``: per-class ROC curves and reliability diagrams as PNG files.

``DIR/roc-<label>.png``: the ROC curve (``metrics.roc_curve``) with its AUROC and bootstrap
interval, the operating point at the model's threshold and the chance diagonal.
``DIR/reliability-<label>.png``: observed positive fraction against mean probability per
probability bin (``metrics.reliability_bins``), bin counts beneath, the diagonal of perfect
calibration and the ECE. Needs matplotlib (``pip install "cxr-edge[plots]"``); drawn with the
Agg canvas on a ``Figure`` (no pyplot state), written atomically.
"""

from __future__ import annotations

import io
import math
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_edge.atomic import write_bytes_atomic
from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.metrics import roc_curve
from cxr_edge.outputs import label_slug

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cxr_edge.evaluate.loop import ClassResult, EvalReport


def check_plots_available(where: str | Path | None = None) -> None:
    """CxrEdgeError unless matplotlib is installed."""
    if find_spec("matplotlib") is None:
        raise CxrEdgeError(where, 'plots need matplotlib: pip install "cxr-edge[plots]"')


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def roc_figure(result: ClassResult) -> Figure:
    """The ROC curve of one class."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.8))
    ax = fig.add_subplot()
    fpr, tpr, _ = roc_curve(result.targets, result.probabilities)
    _, lower, upper = result.auroc_interval
    ci = "" if math.isnan(lower) else f" (95% CI {_fmt(lower)}-{_fmt(upper)})"
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"AUROC {_fmt(result.auroc)}{ci}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    c = result.counts
    if c.tp + c.fn and c.tn + c.fp:
        ax.plot(
            [1 - c.specificity],
            [c.sensitivity],
            "o",
            color="C3",
            label=f"threshold {result.threshold:.2f}: sens {_fmt(c.sensitivity)}, spec {_fmt(c.specificity)}",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(
        f"{result.label}: ROC ({result.positives} pos / {result.n - result.positives} neg)", fontsize=10
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reliability_figure(result: ClassResult) -> Figure:
    """The reliability diagram of one class."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 5.6))
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [b for b in result.calibration if b.count]
    width = result.calibration[0].upper - result.calibration[0].lower
    ax.bar(
        [b.lower for b in filled],
        [b.positive_fraction for b in filled],
        width=width,
        align="edge",
        color="C0",
        alpha=0.7,
        edgecolor="C0",
        label="observed positive fraction",
    )
    ax.plot(
        [b.mean_probability for b in filled],
        [b.positive_fraction for b in filled],
        "o",
        color="C3",
        label="(mean probability, observed)",
    )
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="fraction positive")
    ax.set_title(f"{result.label}: reliability (ECE {_fmt(result.ece)}, {result.n} cases)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    counts.bar(
        [b.lower for b in result.calibration],
        [b.count for b in result.calibration],
        width=width,
        align="edge",
        color="0.5",
    )
    for b in result.calibration:
        if b.count:
            counts.text(b.lower + width / 2, b.count, str(b.count), ha="center", va="bottom", fontsize=7)
    counts.set(xlabel="predicted probability", ylabel="cases")
    counts.set_ylim(0, 1.3 * max(b.count for b in result.calibration) + 1)  # room for the labels
    fig.tight_layout()
    return fig


def write_plots(report: EvalReport, folder: str | Path) -> list[Path]:
    """ROC curve (classes with positives and negatives) and reliability diagram of every scored
    class into ``folder``; returns the files written."""
    check_plots_available(folder)
    folder = Path(folder)
    written = []
    for result in report.scored:
        slug = label_slug(result.label)
        if 0 < result.positives < result.n:
            path = folder / f"roc-{slug}.png"
            write_bytes_atomic(path, _png(roc_figure(result)))
            written.append(path)
        path = folder / f"reliability-{slug}.png"
        write_bytes_atomic(path, _png(reliability_figure(result)))
        written.append(path)
    return written
