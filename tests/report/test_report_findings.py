"""A report of the synthetic studies (real sqlite MLflow store, runs made with the real client):
the Findings sentences against hand-computed numbers, the comparisons' statistics against
scipy / statsmodels, the sections, and what the parent run gets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from report_store import DIGITS, MNIST
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from gradmix_tune.cli import main

DIGITS_FINDINGS = [
    # gradmix@200 = .790 .821 .819: mean .810, sd .017349, half = t(.975, 2) * sd / sqrt 3 = .0431
    "Best of 6 arms by final average accuracy (higher is better): method=gradmix memory.size=200 with 0.810 "
    "(95% CI 0.767 to 0.853, 3 seeds).",
    # differences .02 .04 .03 (mean .03, sd .01, half .0248) and .01 .02 .00 (mean .01, sd .01)
    "gradmix − er_mixup on final average accuracy: +0.030 (95% CI +0.005 to +0.055, Holm p = 0.21) at "
    "memory.size=100; +0.010 (95% CI -0.015 to +0.035, Holm p = 0.68) at memory.size=200: not distinguishable "
    "from noise with 3 seeds.",
    # .03 .06 .06 (mean .05, sd .01732, half .0430) and .02 .03 -.02 (mean .01, sd .02646, half .0657)
    "gradmix − er on final average accuracy: +0.050 (95% CI +0.007 to +0.093, Holm p = 0.21) at memory.size=100; "
    "+0.010 (95% CI -0.056 to +0.076, Holm p = 1) at memory.size=200: not distinguishable from noise with 3 seeds.",
    "er − er_mixup on final average accuracy: -0.020 (95% CI -0.045 to +0.005, Holm p = 0.3) at memory.size=100; "
    "+0.000 (95% CI -0.043 to +0.043, Holm p = 1) at memory.size=200: not distinguishable from noise with 3 seeds.",
    # er_mixup: .080 .081 .079 (sd .001: t = 138.6, p = 5.2e-5, x9 < .001)
    "memory.size 200 − 100 on final average accuracy: +0.100 (95% CI +0.036 to +0.164, Holm p = 0.15) at "
    "method=er; +0.080 (95% CI +0.078 to +0.082, Holm p < 0.001) at method=er_mixup; +0.060 (95% CI +0.034 to "
    "+0.086, Holm p = 0.081) at method=gradmix: significant after Holm correction only at method=er_mixup.",
    # 9 comparisons: alpha .05/9; gradmix 200-100 = .07 .061 .049: d = .06 / .010536 = 5.69
    "With 3 seeds a paired t-test at the level the smallest of the 9 Holm-corrected p-values must pass "
    "(α = 0.05/9 = 0.0056, two-sided) has 80% power only for differences of at least 9.82 standard deviations of "
    "the per-seed difference; the largest standardized difference not yet significant, memory.size 200 − 100 at "
    "method=gradmix (+0.060, 5.69 SD), would need 4 seeds per arm: 1 more than this study's 3.",
]


@pytest.fixture(scope="module")
def digits(syn_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    assert main(["report", "syn_digits", "--tracking-uri", syn_store.uri, "--out", str(out), "--log-to-parent"]) == 0
    folder = out / "syn_digits"
    return {"dir": folder, "summary": json.loads((folder / "summary.json").read_text()),
            "md": (folder / "report.md").read_text(), "html": (folder / "report.html").read_text()}


@pytest.fixture(scope="module")
def mnist(syn_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    assert main(["report", "syn_mnist", "--tracking-uri", syn_store.uri, "--out", str(out)]) == 0
    folder = out / "syn_mnist"
    return {"dir": folder, "summary": json.loads((folder / "summary.json").read_text()),
            "md": (folder / "report.md").read_text()}


def test_the_report_opens_with_the_question_and_the_findings(digits):
    md = digits["md"]
    lines = [x for x in md.splitlines() if x.strip()]
    assert lines[0] == "# Study syn_digits" and lines[1] == "## Findings"
    assert ("**Question** (ablations/syn_digits.yaml): does GradMix beat ER and ER+Mixup on synthetic digits, and "
            "does the answer change with the buffer size?") in md
    assert "**Warning:** Only 3 seeds per arm (fewer than 5)" in md
    f = digits["summary"]["findings"]
    assert f["sentences"] == DIGITS_FINDINGS
    for s in DIGITS_FINDINGS:
        assert f"- {s}" in md
    assert f["baseline"].startswith("Baseline: the method er_mixup (er_mixup when the study sweeps methods")
    assert md.index("## Findings") < md.index("## Results per arm") < md.index("## Comparisons")


def test_findings_numbers_are_the_hand_computed_ones(digits):
    """The quantities behind the sentences, recomputed from the values written to MLflow."""
    s = digits["summary"]
    by = {(c["arm"], c["vs"]): c for c in s["comparisons"]}
    c = by[("method=gradmix memory.size=100", "method=er_mixup memory.size=100")]
    diff = np.subtract(DIGITS[("gradmix", 100)], DIGITS[("er_mixup", 100)])  # .02 .04 .03
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert c["mean_diff"] == pytest.approx(0.03) and c["sd_diff"] == pytest.approx(0.01)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((0.03 - half, 0.03 + half))
    t = 0.03 / (0.01 / math.sqrt(3))
    assert c["t"] == pytest.approx(t) and c["p"] == pytest.approx(2 * stats.t.sf(t, 2))
    assert c["p"] == pytest.approx(stats.ttest_rel(DIGITS[("gradmix", 100)], DIGITS[("er_mixup", 100)]).pvalue)
    assert c["poi"] == 1.0 and c["effect_size"] == pytest.approx(3.0) and list(diff) == pytest.approx([.02, .04, .03])
    best = next(a for a in s["arms"] if a["arm"] == "method=gradmix memory.size=200")["stats"]["final_avg_acc"]
    x = np.array(DIGITS[("gradmix", 200)])
    assert best["mean"] == pytest.approx(0.81) and best["std"] == pytest.approx(x.std(ddof=1))


def test_comparisons_differ_in_one_factor_and_holm_equals_statsmodels(digits):
    s = digits["summary"]
    factors = {a["arm"]: a["factors"] for a in s["arms"]}
    comps = s["comparisons"]
    assert len(comps) == 9  # 4 methods vs er_mixup, 2 gradmix vs er, 3 buffer 200 vs 100
    for c in comps:
        fa, fb = factors[c["arm"]], factors[c["vs"]]
        assert [k for k in fa if fa[k] != fb[k]] == [c["factor"]], "only arms that differ in one factor"
    assert {(c["kind"], c["label"]) for c in comps} == {("baseline", "er − er_mixup"), ("gradmix", "gradmix − er"),
                                                        ("baseline", "gradmix − er_mixup"), ("factor", "200 − 100")}
    raw = [c["p"] for c in comps]
    expected = multipletests(raw, method="holm")[1]
    assert [c["p_holm"] for c in comps] == pytest.approx(list(expected))
    # Holm by hand: sorted p times (m - rank), running maximum, capped at 1
    order = np.argsort(raw)
    adj, run = [0.0] * 9, 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, raw[i] * (9 - rank)))
        adj[i] = run
    assert [c["p_holm"] for c in comps] == pytest.approx(adj)
    marks = {c["label"] + " " + c["at"]: c["mark"] for c in comps}
    assert marks["200 − 100 method=er_mixup"] == "***" and sum(bool(m) for m in marks.values()) == 1
    assert "| memory.size 200 − 100 | method=er_mixup |" in digits["md"] and "\\*\\*\\*" in digits["md"]


def _power(d, n, alpha):
    """statsmodels' two-sided power; its upper tail alone where scipy's far tail is NaN."""
    tp = TTestPower()
    pw = tp.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided")
    return pw if math.isfinite(pw) else tp.power(effect_size=d, nobs=n, alpha=alpha / 2, alternative="larger")


def test_seeds_for_power_equal_statsmodels_solve_power(digits):
    s = digits["summary"]
    alpha = 0.05 / 9  # power at the Holm family's strictest level
    assert s["power"]["family_alpha"] == pytest.approx(alpha) and s["power"]["family_size"] == 9
    assert _power(s["power"]["detectable_effect"], 3, alpha) == pytest.approx(0.8, abs=1e-6)
    tp = TTestPower()
    equal = 0
    for c in s["comparisons"]:
        d = abs(c["mean_diff"] / c["sd_diff"])
        if c["seeds_for_power"] is None:  # infinite (JSON null): no difference to detect
            assert abs(c["mean_diff"]) < 1e-12 and c["label"] == "er − er_mixup" and "| ∞ |" in digits["md"]
            continue
        k = int(c["seeds_for_power"])
        assert _power(d, k, alpha) >= 0.8 and (k == 2 or _power(d, k - 1, alpha) < 0.8), c["label"]
        n = tp.solve_power(effect_size=d, alpha=alpha, power=0.8)
        if math.isfinite(n) and _power(d, math.ceil(n), alpha) >= 0.8 > _power(d, math.ceil(n) - 1, alpha):
            assert k == math.ceil(n), c["label"]  # where statsmodels' root finder lands on the root
            equal += 1
        assert c["seeds_short"] == max(0, k - 3)
        assert c["detectable_diff"] == pytest.approx(s["power"]["detectable_effect"] * c["sd_diff"])
    assert equal >= 5
    assert "seeds for 80% power" in digits["md"]


def test_sections_appear_once_and_only_when_they_apply(digits, mnist):
    for rep in (digits, mnist):
        heads = [x for x in rep["md"].splitlines() if x.startswith("## ")]
        assert len(heads) == len(set(heads)), "no section twice"
        assert "## Forgetting and backward transfer" not in heads  # it would repeat the results table
    assert "## Per-epoch seen-class accuracy" not in digits["md"], "1 epoch per task: no per-epoch section"
    assert not (digits["dir"] / "figures" / "curves.png").exists()
    assert "## Per-epoch seen-class accuracy" in mnist["md"] and (mnist["dir"] / "figures" / "curves.png").is_file()
    figs = {p.name for p in (digits["dir"] / "figures").iterdir()}
    assert {"seeds.png", "factor_memory.size.png"} <= figs
    assert "factor_memory.size.png" not in {p.name for p in (mnist["dir"] / "figures").iterdir()}, \
        "one buffer size: no factor plot"
    md = digits["md"]
    assert "## Configuration" in md and "data:\n  name: digits" in md and "model:\n  hidden: [32]" in md
    assert "| method=gradmix memory.size=200 | memory.size: 200, method: gradmix, mixing.selection: gradient |" in md
    assert "| method=er_mixup memory.size=200 | memory.size: 200 |" in md


def test_run_ids_link_to_their_mlflow_pages(digits, syn_store):
    s = digits["summary"]
    a = s["arms"][0]
    url = f"http://127.0.0.1:5000/#/experiments/{s['experiment_id']}/runs/{a['run_ids'][0]}"
    assert f"[{a['run_ids'][0]}]({url})" in digits["md"] and f'href="{url}"' in digits["html"]
    assert f"gradmix-tune ui --tracking-uri {syn_store.uri}" in digits["md"]
    (failed,) = s["failed"]
    assert failed["seed"] == 7 and f"[{failed['run_id']}](" in digits["md"]


def test_baseline_named_by_the_ablation_file_and_clipped_intervals(mnist):
    s = mnist["summary"]
    assert s["baseline"]["name"] == "er" and "named by the ablation file" in s["findings"]["baseline"]
    assert {c["vs"] for c in s["comparisons"] if c["kind"] == "baseline"} == {"method=er memory.size=100"}
    assert not s["findings"]["warning"], "5 seeds: no warning"
    er = next(a for a in s["arms"] if a["method"] == "er")["stats"]["final_avg_acc"]
    x = np.array(MNIST[("er", 100)])
    half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert x.mean() + half > 1.0 and er["ci_high"] == 1.0 and er["clipped"]
    assert er["ci_low"] == pytest.approx(x.mean() - half)
    assert x.min() <= er["boot_low"] <= er["boot_high"] <= x.max()
    assert "(clipped)" in mnist["md"]
    assert s["findings"]["sentences"][0].endswith("with 0.944 (95% CI 0.862 to 1.000, 5 seeds).")


def test_the_parent_run_gets_metrics_the_findings_and_the_report(digits, syn_store):
    from mlflow import MlflowClient

    c = MlflowClient(syn_store.uri)
    run = c.get_run(syn_store.digits_parent)
    s = digits["summary"]
    for a in s["arms"]:
        st = a["stats"]["final_avg_acc"]
        key = a["arm"].replace("=", "_").replace(" ", "_")
        assert run.data.metrics[f"{key}/final_avg_acc_mean"] == pytest.approx(st["mean"])
        assert run.data.metrics[f"{key}/final_avg_acc_ci_low"] == pytest.approx(st["ci_low"])
        assert run.data.metrics[f"{key}/final_avg_acc_ci_high"] == pytest.approx(st["ci_high"])
        assert run.data.metrics[f"{key}/final_avg_acc_n"] == 3
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**Question:** does GradMix beat ER and ER+Mixup")
    assert note.index("Question") < note.index(DIGITS_FINDINGS[0]) < note.index(DIGITS_FINDINGS[-1])
    names = {f.path for f in c.list_artifacts(run.info.run_id)}
    assert {"ablation.yaml", "arm_summary.json", "report"} <= names
    assert {"report/report.md", "report/report.html", "report/summary.json", "report/figures"} <= \
        {f.path for f in c.list_artifacts(run.info.run_id, "report")}
    table = json.loads(open(c.download_artifacts(run.info.run_id, "arm_summary.json", str(syn_store.root))).read())
    assert table["columns"][:3] == ["arm", "method", "n"] and len(table["data"]) == 6
