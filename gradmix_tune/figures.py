"""Matplotlib drawings: accuracy and S matrices, per-epoch curves, seeds over mean and CI, factor plots with CI bands.

Every function draws on a `matplotlib.figure.Figure` (no pyplot, no global state, no GUI backend)
and saves one PNG to `path`. Inputs are plain lists and dicts: tracking/ draws a trial's figures
with them, report/ a study's. matplotlib and numpy are imported when a figure is drawn, so importing
this module (and the CLI) stays cheap.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import metrics

NAN = float("nan")


def _figure(w: float = 6.0, h: float = 4.5):
    from matplotlib.figure import Figure  # drawn with Agg by savefig

    return Figure(figsize=(w, h), layout="constrained")


def _nan_matrix(rows: list[list], size: int | None = None):
    import numpy as np

    n = size or max((len(r) for r in rows), default=0)
    m = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        for j, v in enumerate(r[:n]):
            m[i, j] = NAN if v is None else float(v)
    return m


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_boundaries(ax, steps, task_of=None, epochs_per_task=None) -> None:
    """Dotted lines between tasks: where `task_of` changes, else every `epochs_per_task` epochs."""
    if task_of:
        for k in range(1, len(steps)):
            if task_of[k] != task_of[k - 1]:
                ax.axvline(steps[k] - 0.5, color="0.8", ls=":", lw=1)
    elif epochs_per_task and steps:
        b = epochs_per_task + 0.5
        while b < max(steps):
            ax.axvline(b, color="0.8", ls=":", lw=1)
            b += epochs_per_task


def draw_accuracy_matrix(acc: list[list[float]], path: str | Path, title: str = "accuracy matrix") -> None:
    """A[i][j] = accuracy on task j after training task i (lower triangle)."""
    import numpy as np

    m = _nan_matrix(acc, len(acc))
    t = len(acc)
    fig = _figure(1.2 + 0.75 * max(t, 2) + 1.2, 1.0 + 0.7 * max(t, 2))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.6 else "black")
    ax.set_xticks(range(t), [f"T{j + 1}" for j in range(t)])  # tasks counted from 1, as the console does
    ax.set_yticks(range(t), [f"T{i + 1}" for i in range(t)])
    ax.set_xlabel("tested on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)


def draw_s_matrix(smat: list[list[float | None]], path: str | Path,
                  title: str = "GradMix pair scores S (last refresh)") -> None:
    """S[a][b] >= threshold marks a helpful pair; None = class not seen at that refresh."""
    import numpy as np

    m = _nan_matrix(smat)
    c = m.shape[0]
    fin = m[np.isfinite(m)]
    vmax = float(np.max(np.abs(fin))) if fin.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig = _figure(2.0 + 0.45 * max(c, 4), 1.5 + 0.4 * max(c, 4))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu", vmin=-vmax, vmax=vmax)
    if c <= 12:
        for a in range(c):
            for b in range(m.shape[1]):
                if np.isfinite(m[a, b]):
                    ax.text(b, a, f"{m[a, b]:.2g}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("class b")
    ax.set_ylabel("class a")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)


def draw_epoch_curve(steps: list[int], accs: list[float], losses: list[float | None] | None,
                     path: str | Path, task_of: list | None = None, title: str = "per-epoch curve",
                     epochs_per_task: int | None = None) -> None:
    """One run's seen-class accuracy (and train loss) per global epoch, its last task's peak marked."""
    fig = _figure(6.5, 4.0)
    ax = fig.subplots()
    ax.plot(steps, accs, "o-", color="tab:blue", label="seen-class test accuracy", ms=3)
    known = bool(task_of) and all(t is not None for t in task_of)
    _mark_boundaries(ax, steps, task_of if known else None, epochs_per_task)
    pk = metrics.curve_peak(steps, accs, epochs_per_task, dict(zip(steps, task_of)) if known else None)
    if pk["peak_epoch"] is not None:
        ax.plot([pk["peak_epoch"]], [pk["peak_acc"]], "*", color="tab:red", ms=12,
                label=f"peak (last task) epoch {pk['peak_epoch']}")
        ax.annotate(f"drop {pk['drop']:.3f}", (steps[-1], pk["final_acc"]), textcoords="offset points",
                    xytext=(-40, -14), fontsize=8, color="tab:red")
    ax.set_xlabel("global epoch")
    ax.set_ylabel("accuracy")
    _integer_ticks(ax)
    if losses and any(v is not None and math.isfinite(v) for v in losses):
        ax2 = ax.twinx()
        ax2.plot(steps, [NAN if v is None else v for v in losses], "--", color="tab:gray", label="train loss")
        ax2.set_ylabel("train loss")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)


def _arm_axis(ax, labels: list[str]) -> None:
    longest = max((len(line) for x in labels for line in x.split("\n")), default=0)
    rot = 30 if len(labels) > 8 or longest > 18 else 0
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=rot, ha="right" if rot else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)


def draw_seed_dots(panels: list[dict], labels: list[str], colors: list[str], title: str,
                   path: str | Path, xlabel: str = "") -> None:
    """Per arm (x-axis, `labels`, one color each): every seed as a dot, the mean as a bar and its
    interval as a line. Up to two panels a row; a panel: {"title", "values": [[seed values] per
    arm], "mean": [..], "low": [..], "high": [..], "range": (lo, hi) or None}."""
    import numpy as np

    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    width = max(5.5, min(16.0, 1.4 + 0.8 * len(labels)))
    fig = _figure(width * cols, 3.6 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    rng = np.random.default_rng(0)  # the same jitter every time
    for ax, panel in zip(axes, panels):
        for i, vals in enumerate(panel["values"]):
            c = colors[i]
            fin = [v for v in vals if v is not None and math.isfinite(v)]
            jit = (rng.random(len(fin)) - 0.5) * 0.25 if len(fin) > 1 else np.zeros(len(fin))
            ax.scatter(i + jit, fin, s=16, color=c, alpha=0.55, zorder=3, linewidths=0)
            lo, hi, m = panel["low"][i], panel["high"][i], panel["mean"][i]
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                ax.vlines(i + 0.22, lo, hi, color=c, lw=2.2, zorder=2)
            if m is not None and math.isfinite(m):
                ax.hlines(m, i - 0.2, i + 0.3, color="black", lw=1.6, zorder=4)
        _arm_axis(ax, labels)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize=8)
        if panel.get("range"):
            lo_r, hi_r = panel["range"]
            y0, y1 = ax.get_ylim()
            ax.set_ylim(max(y0, lo_r) if math.isfinite(lo_r) else y0, min(y1, hi_r) if math.isfinite(hi_r) else y1)
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def draw_factor_bands(series: list[dict], panels: list[tuple[str, str]], xticks: list[str], xlabel: str,
                      title: str, path: str | Path, ranges: dict | None = None) -> None:
    """One panel per (key, title) of `panels` (up to two a row): a factor's values equally spaced on
    the x-axis, one line per series {"label", "color", "x": category indices, "y": {key: [..]},
    "low"/"high": {key: [..]} (the band: 95% CI), "seeds": {key: [[seed values at x], ..]} (dots)};
    `ranges` {key: (lo, hi)} keeps a panel inside what its metric can take."""
    import numpy as np

    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = _figure(5.8 * cols, 3.9 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    width = 0.12 if len(series) > 1 else 0.0  # lines dodged apart so that their seeds do not hide each other
    for ax, (key, panel_title) in zip(axes, panels):
        for li, s in enumerate(series):
            dx = (li / max(len(series) - 1, 1) - 0.5) * width
            x = np.asarray(s["x"], dtype=float) + dx
            y = np.asarray([NAN if v is None else v for v in s["y"][key]], dtype=float)
            lo = np.asarray([NAN if v is None else v for v in s["low"][key]], dtype=float)
            hi = np.asarray([NAN if v is None else v for v in s["high"][key]], dtype=float)
            (ln,) = ax.plot(x, y, "o-", ms=4, label=s["label"], color=s.get("color"), zorder=3)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(x, np.where(ok, lo, y), np.where(ok, hi, y), color=ln.get_color(), alpha=0.15,
                                lw=0)
            for xi, vals in zip(x, s.get("seeds", {}).get(key, [])):
                fin = [v for v in vals if v is not None and math.isfinite(v)]
                ax.scatter([xi] * len(fin), fin, s=9, color=ln.get_color(), alpha=0.45, linewidths=0, zorder=2)
        ax.set_xticks(range(len(xticks)), xticks, fontsize=8, rotation=20 if len(xticks) > 5 else 0)
        ax.set_xlim(-0.35, len(xticks) - 0.65)
        if ranges and key in ranges:
            lo_r, hi_r = ranges[key]
            y0, y1 = ax.get_ylim()
            ax.set_ylim(max(y0, lo_r) if math.isfinite(lo_r) else y0, min(y1, hi_r) if math.isfinite(hi_r) else y1)
        ax.set_xlabel(xlabel)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def draw_curve_panels(panels: list[dict], title: str, path: str | Path,
                      ylabel: str = "seen-class accuracy (mean over seeds)") -> None:
    """Per-epoch curves, up to two panels a row. A panel: {"title", "steps", "task_of",
    "epochs_per_task", "lines": [{"label", "steps", "acc", "peak_epoch", "peak_acc", "final_acc"}]};
    each line's peak is starred and its drop to the final epoch drawn as a bar."""
    import numpy as np

    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = _figure(6.0 * cols, 3.8 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, panel in zip(axes, panels):
        for line in panel["lines"]:
            (ln,) = ax.plot(line["steps"], line["acc"], "o-", ms=3, label=line["label"])
            if line["peak_epoch"] is not None:
                ax.plot([line["peak_epoch"]], [line["peak_acc"]], "*", ms=11, color=ln.get_color())
                ax.vlines(line["steps"][-1], line["final_acc"], line["peak_acc"], color=ln.get_color(), lw=2,
                          alpha=0.6)
        _mark_boundaries(ax, panel["steps"], panel["task_of"], panel["epochs_per_task"])
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("global epoch")
        _integer_ticks(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
