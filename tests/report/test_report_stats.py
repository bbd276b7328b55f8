"""The report's statistics without MLflow: intervals (clipped, bootstrap), paired tests, Holm,
power, probability of improvement, the question of every ablation file, `analyse` on hand-made
runs (one-factor comparisons, the baseline rule), and the per-epoch peak (the learner's)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from gradmix_tune import metrics
from gradmix_tune.report import StudyRuns, TrialRun, analyse, describe, holm, paired_test, seeds_for_power
from gradmix_tune.report.findings import question_of
from gradmix_tune.report.stats import bootstrap_ci, detectable_effect, stratified_bootstrap

ABLATIONS = Path(__file__).resolve().parents[2] / "ablations"
CURVE = [0.5, 0.7, 0.6, 0.65, 0.8, 0.72]  # 2 tasks x 3 epochs, a U-shape in the last task
TASK_OF = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1}


def trial(factors: dict, seed: int, final: float, method: str | None = None, wall: float = 1.0) -> TrialRun:
    method = method or factors.get("method", "er")
    arm = " ".join(f"{k}={v}" for k, v in factors.items())
    return TrialRun(run_id=f"{arm}-{seed}", name=f"{arm} seed={seed}", status="FINISHED", start_time=seed, arm=arm,
                    seed=seed, method=method, factors=dict(factors), others=(),
                    metrics={"final_avg_acc": final, "avg_incremental_acc": final + 0.1, "forgetting": 0.2,
                             "bwt": -0.2, "wall_time_s": wall},
                    acc_matrix=[[0.9], [0.6, 0.8]], curve=list(zip(range(1, 7), CURVE)), task_of=dict(TASK_OF),
                    epochs_per_task=3, params={"method": method, "seed": str(seed), "train.lr": "0.1"})


def study(runs: list, ablation: str = "", grid: dict | None = None) -> StudyRuns:
    tags = {"metric": "final_avg_acc", "mode": "max", **({"grid": json.dumps(grid)} if grid else {})}
    return StudyRuns(study="s", experiment="s", experiment_id="1", parent_id="p", runs=runs, failed=[],
                     parent_tags=tags, ablation_text=ablation)


def test_describe_clips_the_t_interval_to_the_metrics_range():
    # the issue's case: two seeds near 1.0, a t-interval reaching 1.59
    st = describe([1.0, 0.9], "final_avg_acc")
    half = stats.t.ppf(0.975, 1) * np.std([1.0, 0.9], ddof=1) / math.sqrt(2)
    assert st["ci95"] == pytest.approx(half) and 0.95 + half > 1.5
    assert st["ci_high"] == 1.0 and st["ci_low"] == pytest.approx(0.95 - half) and st["clipped"]
    assert (st["boot_low"], st["boot_high"]) == pytest.approx((0.9, 1.0))
    assert describe([0.5, 0.6, 0.7], "final_avg_acc")["clipped"] is False
    assert describe([-0.9, -0.99], "bwt")["ci_low"] == -1.0
    one = describe([0.5])
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci95"]) and math.isnan(one["boot_low"])
    assert describe([0.5, float("nan"), None, 0.7])["n"] == 2, "non-finite values are not counted"


def test_bootstrap_intervals_are_scipys():
    x = [0.71, 0.74, 0.69, 0.80, 0.77]
    r = stats.bootstrap((np.array(x),), np.mean, n_resamples=9999, method="percentile",
                        rng=np.random.default_rng(0))
    assert bootstrap_ci([x]) == pytest.approx((r.confidence_interval.low, r.confidence_interval.high))
    assert bootstrap_ci([[0.5, 0.5, 0.5]]) == (0.5, 0.5)
    lo, hi = stratified_bootstrap([[0.7, 0.8, 0.75], [0.9, 0.95, 0.92, 0.91]])
    agg = (np.mean([0.7, 0.8, 0.75]) + np.mean([0.9, 0.95, 0.92, 0.91])) / 2
    assert lo < agg < hi and 0.7 < lo and hi < 0.95


def test_paired_test_and_probability_of_improvement():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.66}
    b = {0: 0.4, 1: 0.6, 2: 0.8, 3: 0.61, 9: 0.1}
    t = paired_test(a, b, "final_avg_acc")
    x, y = [0.5, 0.6, 0.7, 0.66], [0.4, 0.6, 0.8, 0.61]
    r = stats.ttest_rel(x, y)
    assert t["n"] == 4 and t["p"] == pytest.approx(r.pvalue) and t["t"] == pytest.approx(r.statistic)
    assert t["poi"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # better, tie, worse, better
    assert paired_test(a, b, "forgetting", mode="min")["poi"] == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    d = np.subtract(x, y)
    assert t["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert paired_test({0: 0.5, 1: 0.6}, {1: 0.4, 2: 0.1})["n"] == 1
    same = paired_test({s: 0.5 for s in range(6)}, {s: 0.5 for s in range(6)})
    assert math.isnan(same["p"]) and same["n"] == 6 and same["seeds_for_power"] == math.inf
    xs = {s: 0.5 + 0.01 * s for s in range(7)}
    ys = {s: 0.45 + 0.013 * s * (-1) ** s for s in range(7)}
    w = stats.wilcoxon(list(xs.values()), list(ys.values())).pvalue
    assert paired_test(xs, ys)["p_wilcoxon"] == pytest.approx(w)


def test_holm_is_statsmodels_and_skips_missing_p_values():
    p = [0.01, 0.04, float("nan"), 0.03, 0.5, 0.001]
    got = holm(p)
    want = multipletests([0.01, 0.04, 0.03, 0.5, 0.001], method="holm")[1]
    assert math.isnan(got[2]) and [got[i] for i in (0, 1, 3, 4, 5)] == pytest.approx(list(want))


@pytest.mark.parametrize("d", [0.3, 0.8, 1.0, 1.7, 2.5])
def test_seeds_for_power_is_statsmodels_solve_power(d):
    n = TTestPower().solve_power(effect_size=d, alpha=0.05, power=0.8, alternative="two-sided")
    assert seeds_for_power(d) == math.ceil(n) and seeds_for_power(-d) == math.ceil(n)
    assert seeds_for_power(d, alpha=0.01) == math.ceil(TTestPower().solve_power(effect_size=d, alpha=0.01, power=0.8))


def test_detectable_effect_is_statsmodels_where_its_solver_holds():
    tp = TTestPower()
    for n in (3, 5, 10, 20):
        assert detectable_effect(n) == pytest.approx(tp.solve_power(nobs=n, alpha=0.05, power=0.8))
    # where statsmodels' own solver stops early (scipy's far tail is NaN), the power is still 80%
    d = detectable_effect(3, alpha=0.05 / 9)
    assert tp.power(effect_size=d, nobs=3, alpha=0.05 / 18, alternative="larger") == pytest.approx(0.8, abs=1e-6)
    assert [detectable_effect(n, 0.05 / 30) for n in range(2, 9)] == sorted(
        [detectable_effect(n, 0.05 / 30) for n in range(2, 9)], reverse=True), "fewer seeds never detect more"


def test_the_question_of_every_ablation_file():
    for path in sorted(ABLATIONS.glob("*.yaml")):
        q = question_of(path.read_text())
        assert q.endswith("?") and len(q) > 30 and not q.startswith("Question:"), path.name
    assert question_of((ABLATIONS / "quickstart.yaml").read_text()) == (
        "a first look, offline: does GradMix's selective mixup beat plain replay (ER) and ER+Mixup, and is what "
        "it adds the gradient criterion or the rebalancing toward old-class partners that comes with it?")
    epochs = question_of((ABLATIONS / "epochs.yaml").read_text())
    assert epochs.startswith("Questions (") and "3. Does the decay grow" in epochs and "Each run logs" not in epochs
    assert question_of("name: x\ndescription: d\n", "d") == "d" and question_of("") == ""


def test_analyse_compares_only_arms_that_differ_in_one_factor():
    finals = {("er", 1): [0.70, 0.72, 0.71], ("er_mixup", 1): [0.74, 0.73, 0.75], ("gradmix", 1): [0.76, 0.78, 0.75],
              ("er", 2): [0.80, 0.82, 0.81], ("er_mixup", 2): [0.84, 0.83, 0.85], ("gradmix", 2): [0.86, 0.88, 0.85]}
    runs = [trial({"method": m, "x": x}, s, f, wall=1.5 if m == "gradmix" else 1.0)
            for (m, x), fs in finals.items() for s, f in enumerate(fs)]
    res = analyse(study(runs))
    assert res["method_key"] == "method" and res["baseline"]["name"] == "er_mixup"
    assert res["baseline"]["ref"] == {"method": "er_mixup", "x": 1}
    labels = sorted((c["kind"], c["label"], c["at"]) for c in res["comparisons"])
    assert labels == sorted([("baseline", "er − er_mixup", "x=1"), ("baseline", "gradmix − er_mixup", "x=1"),
                             ("baseline", "er − er_mixup", "x=2"), ("baseline", "gradmix − er_mixup", "x=2"),
                             ("gradmix", "gradmix − er", "x=1"), ("gradmix", "gradmix − er", "x=2"),
                             ("factor", "2 − 1", "method=er"), ("factor", "2 − 1", "method=er_mixup"),
                             ("factor", "2 − 1", "method=gradmix")])
    g = next(a for a in res["arms"] if a["arm"] == "method=gradmix x=2")
    assert g["overhead_vs_er_mixup"] == pytest.approx(1.5)
    assert 2 <= len(res["findings"]["sentences"]) <= 6
    # two arms: one comparison, not two identical tables
    two = analyse(study([trial({"method": m}, s, f) for m, fs in (("er_mixup", [0.7, 0.72, 0.71]),
                                                                    ("gradmix", [0.75, 0.74, 0.78]))
                         for s, f in enumerate(fs)]))
    assert [(c["arm"], c["vs"]) for c in two["comparisons"]] == [("method=gradmix", "method=er_mixup")]


def test_the_baseline_rule():
    def runs(methods, extra=None):
        return [trial({"method": m, **(extra or {})}, s, 0.7 + 0.01 * s + 0.02 * i)
                for i, m in enumerate(methods) for s in range(3)]

    assert analyse(study(runs(["gradmix", "er"])))["baseline"]["name"] == "er"
    first = analyse(study(runs(["gradmix", "remix"])))["baseline"]
    assert first["kind"] == "arm" and first["name"] == "method=gradmix"
    named = analyse(study(runs(["er", "er_mixup", "gradmix"]), "baseline: gradmix\n"))["baseline"]
    assert named["name"] == "gradmix" and "named by the ablation file" in named["rule"]
    arm = analyse(study(runs(["er", "er_mixup"]), "baseline: method=er\n"))["baseline"]
    assert arm["kind"] == "arm" and arm["name"] == "method=er"
    bad = analyse(study(runs(["er", "er_mixup"]), "baseline: nope\n"))
    assert bad["baseline"]["name"] == "er_mixup" and "'nope'" in bad["findings"]["baseline"]
    # the method is not swept (a threshold study): the first arm, each factor against its level
    thr = [trial({"mixing.threshold": t}, s, 0.7 + 0.01 * s + t, method="gradmix")
           for t in (0.0, 0.1, -0.1) for s in range(3)]
    res = analyse(study(thr, grid={"mixing.threshold": [0.0, 0.1, -0.1]}))  # the first arm in grid order
    assert res["method_key"] is None and res["baseline"]["name"] == "mixing.threshold=0.0"
    assert [a["arm"] for a in res["arms"]] == ["mixing.threshold=0.0", "mixing.threshold=0.1", "mixing.threshold=-0.1"]
    assert sorted(c["label"] for c in res["comparisons"]) == ["-0.1 − 0.0", "0.1 − 0.0"]


def test_the_reports_peak_is_the_learners_peak_epoch():
    """The learner logs peak_epoch = metrics.u_shape over its last task's epochs (1-based within
    the task); the report names the same epoch on the global axis of its curves."""
    last_task = [CURVE[s - 1] for s in sorted(TASK_OF) if TASK_OF[s] == 1]
    learner = metrics.u_shape(last_task)
    c = analyse(study([trial({"method": "er"}, 0, 0.7)]))["arms"][0]["curve"]
    first_step_of_last_task = min(s for s, t in TASK_OF.items() if t == 1)
    assert c["peak_epoch"] == first_step_of_last_task + learner["peak_epoch"] - 1 == 5
    assert c["peak_acc"] == learner["peak_acc"] and c["drop"] == pytest.approx(learner["u_shape_drop"])
    assert c["mean_task_drop"] == pytest.approx((learner["u_shape_drop"] + (0.7 - 0.6)) / 2)
