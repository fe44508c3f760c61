"""fidelity plots: TTFT and E2E CDFs of both engines overlaid, queue length and ready replicas over time overlaid.

Drawn on a bare matplotlib Figure (Agg canvas), as odhsim/analysis/plot.py does: no pyplot state, no display."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from odhsim.fidelity.compare import RunTables, Series
from odhsim.results.summary import latency_columns

SIM_COLOR, LIVE_COLOR = "#4c72b0", "#dd8452"


def _cdf(ax: Axes, values: np.ndarray, label: str, color: str) -> None:
    v = np.sort(values[~np.isnan(values)])
    if len(v):
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{label} (n={len(v)})", color=color)


def plot_fidelity(sim: RunTables, live: RunTables, series: Series, path: str | Path, title: str = "") -> Path:
    """Save the four panels to `path` (PNG) and return it."""
    fig = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(fig)
    (ttft_ax, e2e_ax), (queue_ax, ready_ax) = fig.subplots(2, 2)
    lat = {t.label: latency_columns(t.requests) for t in (sim, live)}
    for ax, col, name in ((ttft_ax, "ttft_s", "TTFT"), (e2e_ax, "e2e_s", "end-to-end latency")):
        _cdf(ax, lat[sim.label][col].to_numpy(dtype=float), "sim", SIM_COLOR)
        _cdf(ax, lat[live.label][col].to_numpy(dtype=float), "live", LIVE_COLOR)
        ax.set(xlabel=f"{name} (s)", ylabel="fraction of ok requests", title=f"{name} CDF")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    queue_ax.step(series.grid, series.queue_sim, where="post", color=SIM_COLOR, label="sim")
    queue_ax.step(series.grid, series.queue_live, where="post", color=LIVE_COLOR, label="live")
    queue_ax.set(xlabel="time (s)", ylabel="requests", title="waiting for their first token")
    for i, model in enumerate(sorted(set(series.ready_sim) | set(series.ready_live))):
        style = ("-", "--", ":", "-.")[i % 4]
        if model in series.ready_sim:
            ready_ax.step(series.grid, series.ready_sim[model], where="post", color=SIM_COLOR, ls=style,
                          label=f"sim {model}")  # fmt: skip
        if model in series.ready_live:
            ready_ax.step(series.grid, series.ready_live[model], where="post", color=LIVE_COLOR, ls=style,
                          label=f"live {model}")  # fmt: skip
    ready_ax.set(xlabel="time (s)", ylabel="replicas", title="ready replicas")
    for ax in (queue_ax, ready_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
