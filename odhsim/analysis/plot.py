"""comparison.png: one small panel per metric, each variant's mean across seeds with its 95% CI.

Drawn on a bare matplotlib Figure (Agg canvas), not pyplot, so no global figure state or display is involved and
nothing is left open after saving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from odhsim.analysis.stats import mean_ci

if TYPE_CHECKING:
    from odhsim.analysis.compare import Comparison

_BASE_COLOR = "#4c72b0"
_OTHER_COLOR = "#dd8452"


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Save the per-metric panels (baseline first, '*' over variants whose paired difference is significant)."""
    runs, table = comparison.runs, comparison.table
    metrics = list(dict.fromkeys(runs["metric"]))
    names = comparison.variants
    cols = min(3, len(metrics)) or 1
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    x = np.arange(len(names))
    for ax, metric in zip(axes, metrics, strict=False):
        mine = runs[runs["metric"] == metric]
        stats = [mean_ci(mine.loc[mine["variant"] == n, "value"].to_numpy(dtype=float)) for n in names]
        means = np.array([m for m, _ in stats])
        half = np.nan_to_num(np.array([h for _, h in stats]), nan=0.0)
        colors = [_BASE_COLOR] + [_OTHER_COLOR] * (len(names) - 1)
        ax.bar(x, np.nan_to_num(means), color=colors, alpha=0.35, width=0.6)
        ax.errorbar(x, means, yerr=half, fmt="o", color="black", capsize=4, markersize=4)
        sig = table[(table["metric"] == metric) & table["significant"]]["variant"]
        for i, name in enumerate(names):
            if name in set(sig) and math.isfinite(means[i]):
                ax.annotate("*", (x[i], means[i] + half[i]), ha="center", va="bottom", fontsize=12)
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    n = len(comparison.seeds)
    fig.suptitle(
        f"baseline {comparison.baseline}; mean over {n} seed{'s' if n != 1 else ''}, 95% CI; "
        "* paired t-test p < 0.05 vs baseline",
        fontsize=9,
    )
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
