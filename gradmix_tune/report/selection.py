"""Which arm a report may call best: the one the study's own metric ranks first, never the best test score.

A study that searches (or evaluates) optimises a validation metric (`metric: val_final_avg_acc`)
and reports its test twin (`test_metric`). Naming the arm with the best test score "best" would
select on the test split, the very thing the search avoided; so the best arm is the one the
study's metric ranks first (respecting `mode`), and its test score is stated beside it. A study
whose metric is a test metric (a grid ablation comparing fixed settings) ranks on that metric, as
it always did. Evaluation arms (phase 2: the chosen configurations re-run on the full training
data) have no validation score: only the tuning rank that chose them (`tune_rank`, 1 = best) may
order them, and only when no arm has the study's metric.
"""
from __future__ import annotations

from ..results import is_test_metric
from ..values import is_finite


def chooser(res: dict) -> str:
    """The metric that may pick a best arm: the study's own unless it is measured on the test split
    (then the test metric, which an ablation of fixed settings compares on)."""
    m, test = res["metric"], res["test_metric"]
    return m if m != test and not is_test_metric(m) else test


def _mean(a: dict, metric: str) -> float:
    st = a["stats"].get(metric)
    return st["mean"] if st and is_finite(st["mean"]) else float("nan")


def _rank(a: dict) -> int | None:
    r = str(a.get("tune_rank") or "")
    return int(r) if r.isdigit() else None


def choose(res: dict, arms: list[dict]) -> dict:
    """The best of `arms` (analysis arm rows): {"arm" (a row, or None), "by" (the metric that chose),
    "rule" ("metric", "tune_rank" or "none"), "ranked" (the rows with a value of `by`, evaluation arms
    of a searched study aside), "evaluation" (those), "empty" (the rest: no value of `by`, e.g.
    stopped early or failed)}."""
    by, mode = chooser(res), res["mode"]
    searched = by != res["test_metric"]
    # an evaluation arm's own validation score (when evaluate: keeps data.val_fraction) is on another
    # scenario than the tuning's: it never competes with the tuning arms
    is_eval = [searched and _rank(a) is not None for a in arms]
    has = [is_finite(_mean(a, by)) and not e for a, e in zip(arms, is_eval)]
    ranked = [a for a, h in zip(arms, has) if h]
    evaluation = [a for a, e in zip(arms, is_eval) if e]
    out = {"arm": None, "by": by, "rule": "none", "ranked": ranked, "evaluation": evaluation,
           "empty": [a for a, h, e in zip(arms, has, is_eval) if not h and not e]}
    if ranked:
        pick = max if mode == "max" else min
        out.update(arm=pick(ranked, key=lambda a: _mean(a, by)), rule="metric")
    elif evaluation:  # the tuning's own order, never the evaluation's test scores
        out.update(arm=min(evaluation, key=_rank), rule="tune_rank")
    return out
