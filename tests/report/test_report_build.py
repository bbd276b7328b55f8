"""`gradmix-tune report` on the tracked tiny (real Ray Tune) study of tests/helpers.py, from the MLflow store alone.

Every number checked here is recomputed independently (numpy / scipy) from the metrics fetched
with MlflowClient; Ray's result folder is deleted before the report is built.
"""
from __future__ import annotations

import base64
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import ALWAYS_FAIL, PNG, STUDY, study_obj
from scipy import stats

from gradmix_tune.cli import main
from gradmix_tune.report import after_sweep
from gradmix_tune.report.findings import pval
from gradmix_tune.results import ACCURACY_METRICS as METRICS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rep(tracked_study, tmp_path_factory):
    shutil.rmtree(tracked_study.storage, ignore_errors=True)  # the tracking store is all the report may use
    assert not tracked_study.storage.exists()
    out = tmp_path_factory.mktemp("reports")
    assert main(["report", STUDY, "--tracking-uri", tracked_study.sqlite_uri, "--out", str(out)]) == 0
    folder = out / STUDY
    return {"dir": folder, "summary": json.loads((folder / "summary.json").read_text()),
            "md": (folder / "report.md").read_text(), "html": (folder / "report.html").read_text()}


def independent(uri: str) -> dict:
    """Per arm and seed: the final metrics, from each child's metric history (latest FINISHED run
    of an (arm, seed)); failed runs; epoch/seen_acc and task/acc_task_<j> histories."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(STUDY)
    (parent,) = c.search_runs([exp.experiment_id], "tags.study = 'tiny' and tags.`gradmix.role` = 'parent'")
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    chosen, failed = {}, []
    for r in sorted(kids, key=lambda r: r.info.start_time):
        key = (r.data.tags["arm"], int(r.data.tags["seed"]))
        if r.info.status == "FINISHED":
            chosen[key] = r
        else:
            failed.append(key)
    out = {"values": {}, "curves": {}, "matrices": {}, "failed": [k for k in failed if k not in chosen]}
    for (arm, seed), r in chosen.items():
        rid = r.info.run_id
        v = out["values"].setdefault(arm, {})
        for m in METRICS + ("wall_time_s",):
            v.setdefault(m, {})[seed] = c.get_metric_history(rid, m)[-1].value
        curve = c.get_metric_history(rid, "epoch/seen_acc")
        out["curves"].setdefault(arm, {})[seed] = {m.step: m.value for m in curve}
        a0 = {m.step: m.value for m in c.get_metric_history(rid, "task/acc_task_1")}  # tracking: tasks from 1
        a1 = {m.step: m.value for m in c.get_metric_history(rid, "task/acc_task_2")}
        out["matrices"].setdefault(arm, {})[seed] = [[a0[1]], [a0[2], a1[2]]]
    return out


def arm_of(summary, arm):
    return next(a for a in summary["arms"] if a["arm"] == arm)


def _close(a, b):
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_means_stds_and_cis_equal_an_independent_computation(tracked_study, rep):
    ind = independent(tracked_study.sqlite_uri)
    s = rep["summary"]
    assert {a["arm"] for a in s["arms"]} == set(ind["values"]) and len(s["arms"]) == 4
    for arm, vals in ind["values"].items():
        a = arm_of(s, arm)
        assert sorted(a["seeds"]) == [0, 1, 2], "the resumed trial counts once, the failed one not at all"
        for m in METRICS + ("wall_time_s",):
            x = np.array([vals[m][k] for k in sorted(vals[m])])
            st = a["stats"][m]
            assert st["n"] == 3
            assert _close(st["mean"], float(x.mean()))
            assert _close(st["std"], float(x.std(ddof=1)))
            half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
            assert _close(st["ci95"], float(half))
            lo, hi = (-1.0, 1.0) if m in ("forgetting", "bwt") else (0.0, math.inf if m == "wall_time_s" else 1.0)
            assert _close(st["ci_low"], float(np.clip(x.mean() - half, lo, hi)))
            assert _close(st["ci_high"], float(np.clip(x.mean() + half, lo, hi)))
        fa = a["stats"]["final_avg_acc"]
        assert f"{fa['mean']:.4f} ± {fa['std']:.4f} | [{fa['ci_low']:.4f}, {fa['ci_high']:.4f}]" in rep["md"]


def test_paired_tests_equal_scipy_on_the_logged_metrics(tracked_study, rep):
    ind = independent(tracked_study.sqlite_uri)["values"]
    s = rep["summary"]
    assert s["baseline"]["name"] == "er_mixup" and s["test_metric"] == "final_avg_acc"

    def p_of(a, b):
        x, y = ind[a]["final_avg_acc"], ind[b]["final_avg_acc"]
        seeds = sorted(set(x) & set(y))
        return stats.ttest_rel([x[k] for k in seeds], [y[k] for k in seeds]), len(seeds)

    comps = {(t["arm"], t["vs"]): t for t in s["comparisons"]}
    g, e = "method=gradmix memory.size={}", "method=er_mixup memory.size={}"
    assert set(comps) == {(g.format(20), e.format(20)), (g.format(40), e.format(40)),  # vs the baseline
                          (e.format(40), e.format(20)), (g.format(40), g.format(20))}  # buffer 40 vs 20
    for (a, b), t in comps.items():
        r, n = p_of(a, b)
        assert t["n"] == n == 3
        assert _close(t["p"], float(r.pvalue)) and _close(t["t"], float(r.statistic))
        assert t["p_wilcoxon"] is None  # fewer than 6 pairs
        assert f"| {pval(r.pvalue)} |" in rep["md"]
    x = ind[g.format(20)]["final_avg_acc"]
    y = ind[e.format(20)]["final_avg_acc"]
    assert _close(comps[(g.format(20), e.format(20))]["mean_diff"], float(np.mean([x[k] - y[k] for k in sorted(x)])))
    assert 2 <= len(s["findings"]["sentences"]) <= 6 and "## Findings" in rep["md"]


def test_wall_time_overhead_accuracy_matrices_and_curves(tracked_study, rep):
    ind = independent(tracked_study.sqlite_uri)
    s = rep["summary"]
    for m in (20, 40):
        g, e = f"method=gradmix memory.size={m}", f"method=er_mixup memory.size={m}"
        ratio = np.mean(list(ind["values"][g]["wall_time_s"].values())) / \
            np.mean(list(ind["values"][e]["wall_time_s"].values()))
        assert _close(arm_of(s, g)["overhead_vs_er_mixup"], float(ratio))
        assert _close(arm_of(s, e)["overhead_vs_er_mixup"], 1.0)
    for arm, per_seed in ind["matrices"].items():
        mean = np.mean([np.array(m[1]) for m in per_seed.values()], axis=0)
        got = arm_of(s, arm)["accuracy_matrix"]
        assert _close(got[0][0], float(np.mean([m[0][0] for m in per_seed.values()])))
        assert got[1] == pytest.approx(mean.tolist())
    for arm, per_seed in ind["curves"].items():
        c = arm_of(s, arm)["curve"]
        mean = {k: float(np.mean([v[k] for v in per_seed.values()])) for k in (1, 2, 3, 4)}
        assert c["steps"] == [1, 2, 3, 4] and c["mean_seen_acc"] == pytest.approx([mean[k] for k in (1, 2, 3, 4)])
        peak = max((3, 4), key=lambda k: (mean[k], -k))  # epochs 3-4 = the last task (2 epochs per task)
        assert c["peak_epoch"] == peak and _close(c["drop"], mean[peak] - mean[4])
    assert "peak epoch" in rep["md"] and "drop" in rep["md"]


def test_failed_trials_are_listed(tracked_study, rep):
    ind = independent(tracked_study.sqlite_uri)
    assert ind["failed"] == [ALWAYS_FAIL]
    (f,) = rep["summary"]["failed"]
    assert (f["arm"], f["seed"], f["status"]) == (*ALWAYS_FAIL, "FAILED")
    assert "injected failure" in f["error"] and f["run_id"] in rep["md"]


def test_figures_are_valid_pngs_embedded_in_the_html_and_linked_from_the_md(rep):
    from matplotlib.image import imread

    figs = sorted((rep["dir"] / "figures").glob("*"))
    names = {p.name for p in figs}
    assert {"seeds.png", "factor_memory.size.png", "curves.png"} <= names  # 2 epochs a task: curves
    assert sum(n.startswith("acc_matrix_") for n in names) == 4
    for p in figs:
        assert p.suffix == ".png" and p.read_bytes()[:8] == PNG
        img = imread(str(p))
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert f"](figures/{p.name})" in rep["md"]
        assert base64.b64encode(p.read_bytes()).decode() in rep["html"], "every figure embedded"
    assert 'src="figures/' not in rep["html"]


def test_report_from_the_server_store_is_the_same(tracked_study, rep, tmp_path):
    assert main(["report", STUDY, "--tracking-uri", tracked_study.server.uri, "--out", str(tmp_path)]) == 0
    other = json.loads((tmp_path / STUDY / "summary.json").read_text())
    mine = rep["summary"]
    for a in mine["arms"]:
        b = arm_of(other, a["arm"])
        for m in METRICS:
            for k in ("n", "mean", "std", "ci95"):
                assert _close(b["stats"][m][k], a["stats"][m][k])
    assert [(t["arm"], t["vs"]) for t in other["comparisons"]] == [(t["arm"], t["vs"]) for t in mine["comparisons"]]
    for t, u in zip(other["comparisons"], mine["comparisons"]):
        assert _close(t["p"], u["p"]) and _close(t["p_holm"], u["p_holm"])
    assert other["findings"]["sentences"] == mine["findings"]["sentences"]


def test_after_sweep_logs_the_report_to_the_parent_run(tracked_study, tmp_path):
    from mlflow import MlflowClient

    c = MlflowClient(tracked_study.sqlite_uri)
    exp = c.get_experiment_by_name(STUDY)
    (parent,) = c.search_runs([exp.experiment_id], "tags.`gradmix.role` = 'parent'")
    # the sweep passes its logger's parent run id; without one, the study's latest parent
    for i, pid in enumerate((parent.info.run_id, None)):
        folder = after_sweep(study_obj(), tracked_study.sqlite_uri, out_dir=str(tmp_path / str(i)), parent_run_id=pid)
        assert folder == tmp_path / str(i) / STUDY and (folder / "report.html").is_file()
        assert json.loads((folder / "summary.json").read_text())["parent_run_id"] == parent.info.run_id
    names = {f.path for f in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/summary.json", "report/figures"} <= names
    run = c.get_run(parent.info.run_id)
    assert run.data.metrics["method_gradmix_memory.size_40/final_avg_acc_n"] == 3
    assert "Findings" in run.data.tags["mlflow.note.content"]


def test_unknown_study_is_a_clear_error(tracked_study, capsys, tmp_path):
    assert main(["report", "no_such_study", "--tracking-uri", tracked_study.sqlite_uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study 'no_such_study'" in err and "--tracking-uri" in err
    assert after_sweep(study_obj("no_such_study"), tracked_study.sqlite_uri, str(tmp_path)) is None
