"""The report's figures (`figures_of`): seeds over mean and CI, factor plots with CI bands, matrices, curves."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .. import figures
from ..results import ACCURACY_METRICS, LABELS, METRICS
from ..values import is_finite
from .runs import jkey
from .stats import metric_range

PALETTE = [f"C{i}" for i in range(10)]


def slug(s: str) -> str:
    """`s` as a safe file or folder name (at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:80] or "arm"


def metric_order(res: dict) -> list[str]:
    """The accuracy metrics, the study's own first."""
    first = [res["test_metric"]] if res["test_metric"] in ACCURACY_METRICS else []
    return first + [m for m in ACCURACY_METRICS if m not in first]


def method_colors(res: dict) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(res["methods"])}


def short_label(a: dict, many: bool) -> str:
    """An arm's factor values (the keys go in the axis label), one a line unless there are many arms."""
    parts = [str(v) for v in a["factors"].values()] or [a["arm"]]
    return (" " if many else "\n").join(parts)


def panel_title(m: str) -> str:
    better = {"max": "higher", "min": "lower"}.get(METRICS.get(m[4:] if m.startswith("val_") else m, ""), "")
    return LABELS.get(m, m) + (f" ({better} is better)" if better else "")


def _clean(v):
    return v if is_finite(v) else None


def figures_of(res: dict, fig_dir: Path) -> dict:
    """Draw every figure into fig_dir; returns {kind: [(path relative to the report, caption)]}."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list] = {"dots": [], "factor": [], "matrix": [], "curve": []}
    # arms without a value of the test metric (trials a scheduler stopped early) have nothing to draw
    arms = [a for a in res["arms"] if a["stats"][res["test_metric"]]["n"]]
    if not arms:
        return out
    colors = method_colors(res)
    mk = res["method_key"]
    metrics = metric_order(res)
    # every seed as a dot over the mean and its 95% CI, per arm
    many = len(arms) > 8
    panels = [{"title": panel_title(m), "values": [a["stats"][m]["values"] for a in arms],
               "mean": [_clean(a["stats"][m]["mean"]) for a in arms],
               "low": [_clean(a["stats"][m]["ci_low"]) for a in arms],
               "high": [_clean(a["stats"][m]["ci_high"]) for a in arms], "range": metric_range(m)} for m in metrics]
    figures.draw_seed_dots(panels, [short_label(a, many) for a in arms], [colors[a["method"]] for a in arms],
                           f"{res['study']}: dots = seeds, black bar = mean, colored line = 95% CI (t, clipped)",
                           fig_dir / "seeds.png", xlabel=" / ".join(res["factor_keys"]) or "arm")
    out["dots"].append(("figures/seeds.png", "every seed per arm, with the mean and its 95% CI"))
    # each swept factor other than the method on the x-axis: one line per method (and per value of
    # the remaining factors), the band its 95% CI, the dots its seeds
    for f in res["factors"]:
        key = f["key"]
        drawn = {jkey(a["factors"][key]) for a in arms if key in a["factors"] and not a.get("evaluation")}
        levels = [v for v in f["levels"] if jkey(v) in drawn]  # the levels with a point to draw
        if key == mk or len(levels) < 2:
            continue
        xpos = {jkey(v): i for i, v in enumerate(levels)}
        lines: dict[str, list] = {}
        for a in arms:  # an evaluation arm would land on its tuning arm's point: other seeds, other setup
            if key not in a["factors"] or a.get("evaluation"):
                continue
            rest = {k: v for k, v in a["factors"].items() if k != key}
            lines.setdefault(jkey(sorted(rest.items())), []).append(a)
        series = []
        for rest_key, pts in lines.items():
            pts = sorted(pts, key=lambda a: xpos[jkey(a["factors"][key])])
            rest = dict(json.loads(rest_key))
            label = ", ".join(str(v) if k == mk else f"{k}={v}" for k, v in rest.items()) or key
            series.append({"label": label, "color": colors[pts[0]["method"]] if mk and len(rest) == 1 else None,
                           "x": [xpos[jkey(a["factors"][key])] for a in pts],
                           "y": {m: [_clean(a["stats"][m]["mean"]) for a in pts] for m in metrics},
                           "low": {m: [_clean(a["stats"][m]["ci_low"]) for a in pts] for m in metrics},
                           "high": {m: [_clean(a["stats"][m]["ci_high"]) for a in pts] for m in metrics},
                           "seeds": {m: [a["stats"][m]["values"] for a in pts] for m in metrics}})
        name = f"factor_{slug(key)}.png"
        figures.draw_factor_bands(series, [(m, panel_title(m)) for m in metrics], [str(v) for v in levels],
                                  key, f"{res['study']}: mean over seeds, band = 95% CI, dots = seeds",
                                  fig_dir / name, ranges={m: metric_range(m) for m in metrics})
        out["factor"].append((f"figures/{name}", f"metrics against {key} (mean, 95% CI band, seeds)"))
    for i, a in enumerate(arms):
        if a["accuracy_matrix"]:
            name = f"acc_matrix_{i:02d}_{slug(a['arm'])}.png"
            figures.draw_accuracy_matrix(a["accuracy_matrix"], fig_dir / name,
                                         f"{a['arm']}\nmean over {len(a['seeds'])} seeds")
            out["matrix"].append((f"figures/{name}", f"accuracy matrix, {a['arm']} (mean over seeds)"))
    if res["epochs"] > 1:
        out["curve"] += _curves(res, fig_dir)
    return out


def _curves(res: dict, fig_dir: Path) -> list:
    """Per-epoch curves: one panel per value of the factors other than the method, one line per method."""
    mk = res["method_key"]
    groups: dict[str, list] = {}
    for a in res["arms"]:
        if a["curve"]["steps"] and a["stats"][res["test_metric"]]["n"]:
            groups.setdefault(jkey([o for o in a["others"]]), []).append(a)
    if not groups:
        return []
    panels = []
    for gk, garms in groups.items():
        c0 = garms[0]["curve"]
        others = json.loads(gk)
        panels.append({"title": ", ".join(f"{k}={v}" for k, v in others) or res["study"], "steps": c0["steps"],
                       "task_of": c0["task_of"], "epochs_per_task": c0["epochs_per_task"],
                       "lines": [{"label": a["method"] if mk else a["arm"], "steps": a["curve"]["steps"],
                                  "acc": a["curve"]["mean_seen_acc"], "peak_epoch": a["curve"]["peak_epoch"],
                                  "peak_acc": a["curve"]["peak_acc"], "final_acc": a["curve"]["final_acc"]}
                                 for a in garms]})
    figures.draw_curve_panels(panels, "per-epoch seen-class accuracy; ★ peak in the last task, bar = drop to "
                                      "the final epoch", fig_dir / "curves.png")
    return [("figures/curves.png", "per-epoch seen-class accuracy curves")]
