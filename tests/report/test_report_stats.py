"""The report's statistics on hand-made runs (no MLflow): describe, paired tests, `analyse`, and
the per-epoch peak, which is the learner's (metrics.u_shape) peak given as a global epoch."""
from __future__ import annotations

import math

import pytest
from scipy import stats

from gradmix_tune import metrics
from gradmix_tune.report import StudyRuns, TrialRun, analyse, describe, paired_test

# a run of 2 tasks x 3 epochs: seen-class accuracy per global epoch 1..6, a U-shape in the last task
CURVE = [0.5, 0.7, 0.6, 0.65, 0.8, 0.72]
TASK_OF = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1}


def trial(method: str, seed: int, final: float, wall: float, curve=CURVE) -> TrialRun:
    return TrialRun(run_id=f"{method}-{seed}", name=f"method={method} seed={seed}", status="FINISHED", start_time=seed,
                    arm=f"method={method}", seed=seed, method=method, factors={"method": method}, others=(),
                    metrics={"final_avg_acc": final, "avg_incremental_acc": final + 0.1, "forgetting": 0.2,
                             "bwt": -0.2, "wall_time_s": wall},
                    acc_matrix=[[0.9], [0.6, 0.8]], curve=list(zip(range(1, 7), curve)), task_of=dict(TASK_OF),
                    epochs_per_task=3)


def study(runs: list[TrialRun]) -> StudyRuns:
    return StudyRuns(study="s", experiment="s", experiment_id="1", parent_id="p", runs=runs, failed=[],
                     parent_tags={"metric": "final_avg_acc", "mode": "max"})


def test_statistics_helpers_edge_cases():
    one = describe([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    assert describe([0.5, float("nan"), None, 0.7])["n"] == 2, "non-finite values are not counted"
    t = paired_test({0: 0.5, 1: 0.6}, {1: 0.4, 2: 0.1})
    assert t["n"] == 1 and math.isnan(t["p_ttest"])
    same = paired_test({s: 0.5 for s in range(6)}, {s: 0.5 for s in range(6)})
    assert math.isnan(same["p_ttest"]) and same["n"] == 6  # no variance: no t-test, and no crash
    x = {s: 0.5 + 0.01 * s for s in range(7)}
    y = {s: 0.45 + 0.013 * s * (-1) ** s for s in range(7)}
    w = paired_test(x, y)
    assert w["p_wilcoxon"] == pytest.approx(stats.wilcoxon(list(x.values()), list(y.values())).pvalue)


def test_analyse_compares_against_er_mixup_and_gradmix():
    finals = {"er": [0.70, 0.72, 0.71], "er_mixup": [0.74, 0.73, 0.75], "gradmix": [0.76, 0.78, 0.75]}
    runs = [trial(m, s, f, wall=1.0 if m != "gradmix" else 1.5) for m, fs in finals.items() for s, f in enumerate(fs)]
    res = analyse(study(runs))
    assert res["methods"] == ["er", "er_mixup", "gradmix"] and res["baseline"] == "er_mixup"
    assert res["gradmix"] == "gradmix" and res["test_metric"] == "final_avg_acc"
    arms = {a["method"]: a for a in res["arms"]}
    assert arms["gradmix"]["stats"]["final_avg_acc"]["mean"] == pytest.approx(sum(finals["gradmix"]) / 3)
    assert arms["gradmix"]["overhead_vs_baseline"] == pytest.approx(1.5)
    assert {(t["method"], t["vs"]) for t in res["tests_vs_baseline"]} == {("er", "method=er_mixup"),
                                                                          ("gradmix", "method=er_mixup")}
    t = next(t for t in res["tests_vs_baseline"] if t["method"] == "gradmix")
    assert t["p_ttest"] == pytest.approx(stats.ttest_rel(finals["gradmix"], finals["er_mixup"]).pvalue)
    assert {t["vs"] for t in res["tests_gradmix"]} == {"method=er", "method=er_mixup"}


def test_the_reports_peak_is_the_learners_peak_epoch():
    """The learner logs peak_epoch = metrics.u_shape over its last task's epochs (1-based within
    the task); the report names the same epoch on the global axis of its curves."""
    last_task = [CURVE[s - 1] for s in sorted(TASK_OF) if TASK_OF[s] == 1]
    learner = metrics.u_shape(last_task)
    c = analyse(study([trial("er", 0, 0.7, 1.0)]))["arms"][0]["curve"]
    first_step_of_last_task = min(s for s, t in TASK_OF.items() if t == 1)
    assert c["peak_epoch"] == first_step_of_last_task + learner["peak_epoch"] - 1 == 5
    assert c["peak_acc"] == learner["peak_acc"] and c["drop"] == pytest.approx(learner["u_shape_drop"])
    assert c["mean_task_drop"] == pytest.approx((learner["u_shape_drop"] + (0.7 - 0.6)) / 2)
