"""The report of a two-phase study reads cleanly: a searched study (report_store.write_search) has no
one-factor paired comparisons (its tuning configurations ran 1 seed each; an evaluation arm shares
its tuning arm's factor values but not its seeds nor its setup) and says so in one sentence, has no
baseline, and never names an arm without values (a trial ASHA stopped early) as its reference. A grid
with an evaluation phase keeps its comparisons, the evaluation arm left out of them; a grid whose
first arm has no value takes its baseline among the arms with values; ordinary grids are unchanged."""
from __future__ import annotations

import json
import time

import pytest
from report_store import DIGITS, write_study, write_search

from gradmix_tune.report import StudyRuns, TrialRun, analyse, build_comparison, build_report
from gradmix_tune.report.build import note_text


def val(v: float, test: float) -> dict:
    return {"val_final_avg_acc": v, "final_avg_acc": test}


# lr 0.001 (the first arm in factor order) and 0.2 were stopped by ASHA after their first task:
# finished runs without a final metric; lr 0.3 failed; the 2 best by validation are re-evaluated
SEARCH = {0.001: None, 0.01: val(0.70, 0.72), 0.05: val(0.80, 0.83), 0.1: val(0.75, 0.85), 0.2: None}
EVALUATE = {1: (0.05, {10: 0.70, 11: 0.74, 12: 0.72}), 2: (0.1, {10: 0.78, 11: 0.80, 12: 0.79})}
NO_PAIRS = ("No paired tests between arms: a search's tuning configurations are sampled points (1 seed each), not "
            "one-factor changes of a baseline, and each evaluation arm ran other seeds and another setup "
            "(`evaluate.set`) than the tuning run it repeats; the comparison that matters is the tuning score "
            "against the evaluation score with its 95% CI, under Tuning vs evaluation.")
GARBLED = ("0 paired seed", "0 seed", " at ;", " at :", " at .", "n/a (")


def section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def results_rows(md: str) -> list[str]:
    """The arms of the first table of Results per arm."""
    first = section(md, "Results per arm").split("The other metrics", 1)[0]
    return [ln.split("|")[1].strip() for ln in first.splitlines()
            if ln.startswith("| ") and not ln.startswith("| arm ")]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_phase")
    uri = f"sqlite:///{root / 'm.db'}"
    write_search(uri, "syn_two_phase", SEARCH, failed=(0.3,), evaluate=EVALUATE)
    write_search(uri, "syn_two_phase_b", {0.05: val(0.70, 0.90), 0.1: val(0.78, 0.74)},
                 evaluate={1: (0.1, {10: 0.71, 11: 0.73, 12: 0.75}), 2: (0.05, {10: 0.80, 11: 0.82, 12: 0.81})})
    folder = build_report("syn_two_phase", uri, root / "reports")
    return {"uri": uri, "root": root, "md": (folder / "report.md").read_text(),
            "html": (folder / "report.html").read_text(),
            "summary": json.loads((folder / "summary.json").read_text())}


def test_a_searched_study_says_why_it_has_no_paired_tests_and_garbles_no_sentence(searched):
    md, s = searched["md"], searched["summary"]
    assert s["searched"] is True and s["comparisons"] == []
    findings = section(md, "Findings")
    assert f"- {NO_PAIRS}" in findings
    assert section(md, "Comparisons").strip() == NO_PAIRS, "the reason, and no table of n/a rows"
    assert "| comparison |" not in md and "Holm p" not in md
    for bad in GARBLED:
        assert bad not in md, bad
    assert s["findings"]["warning"] == (
        "Only 3 evaluation seeds per chosen configuration (fewer than 5): its t-interval is wide, its bootstrap "
        "interval too narrow (it can only resample these seeds) and the optimism gap rough.")
    assert "every difference" not in md, "no sentence about differences that are not computed"
    assert "No paired tests between arms" in searched["html"]


def test_a_searched_study_has_no_baseline_and_no_empty_reference_arm(searched):
    md, s = searched["md"], searched["summary"]
    assert s["baseline"]["kind"] == "none" and s["baseline"]["name"] == ""
    assert s["findings"]["baseline"] == "" and "Baseline:" not in md and "Baseline" not in note_text(s)
    assert "(reference)" not in md and not any(a["is_reference"] for a in s["arms"])
    # the stopped configurations (no values) are named only where they are listed as such, never compared
    assert results_rows(md) == ["train.lr=0.01", "evaluate #1", "train.lr=0.05", "evaluate #2", "train.lr=0.1"]
    assert ("Left out: 2 arms without a value of `final_avg_acc` (stopped early, or ended without it): "
            "train.lr=0.001, train.lr=0.2; their runs are listed under Runs.") in section(md, "Results per arm")
    assert "train.lr=0.001" not in section(md, "Findings") + section(md, "Comparisons")
    assert ("What each arm changes: the params that differ between arms, relative to `train.lr=0.05` (the best "
            "arm by val_final_avg_acc; all its values shown).") in section(md, "Configuration")
    wall = section(md, "Wall time")
    assert "train.lr=0.001" not in wall and "train.lr=0.2" not in wall


def test_comparing_searched_studies_names_no_empty_baseline(searched):
    folder = build_comparison(["syn_two_phase", "syn_two_phase_b"], searched["uri"], searched["root"] / "cmp")
    md = (folder / "report.md").read_text()
    assert ("No common baseline: syn_two_phase, the first study, is a searched study, whose arms are not paired by "
            "seed (its report's Tuning vs evaluation compares tuning and evaluation scores); the table sets each "
            "shared arm's scores side by side.") in md
    assert "Common baseline:" not in md and "as few as 1 seed per arm" in md
    assert md.count("None: no common baseline (see Findings).") == 2


def test_a_search_without_an_evaluation_phase(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    write_search(uri, "syn_search_only", {0.001: None, 0.01: val(0.70, 0.72), 0.05: val(0.80, 0.83)},
                 scheduler="fifo")
    folder = build_report("syn_search_only", uri, tmp_path / "reports")
    md = (folder / "report.md").read_text()
    f = json.loads((folder / "summary.json").read_text())["findings"]
    assert f["sentences"][1] == (
        "No paired tests between arms: a search's tuning configurations are sampled points (1 seed each), not "
        "one-factor changes of a baseline, so no two arms are paired by seed; an `evaluate:` phase would re-run "
        "the chosen configuration on fresh seeds (see Tuning vs evaluation).")
    assert f["warning"] == ("No evaluation phase: the chosen configuration's test score comes from the tuning runs "
                            "it was chosen on, and has no interval.")
    assert "Baseline:" not in md and "(reference)" not in md
    for bad in GARBLED:
        assert bad not in md, bad


# ------------------------------------------------------------------ grids (no search): comparisons kept
def trial(arm: str, factors: dict, seed: int, final: float | None, method: str, phase: str | None = None) -> TrialRun:
    metrics = {"wall_time_s": 1.0} if final is None else {"final_avg_acc": final, "wall_time_s": 1.0}
    return TrialRun(run_id=f"{arm}-{seed}", name=f"{arm} seed={seed}", status="FINISHED", start_time=seed, arm=arm,
                    seed=seed, method=method, factors=dict(factors), others=(), metrics=metrics,
                    params={"method": method, "seed": str(seed)}, tags={"phase": phase} if phase else {})


def grid_study(runs: list, ablation: str, grid: dict) -> StudyRuns:
    return StudyRuns(study="g", experiment="g", experiment_id="1", parent_id="p", runs=runs, failed=[],
                     parent_tags={"metric": "final_avg_acc", "mode": "max", "grid": json.dumps(grid)},
                     ablation_text=ablation)


def test_a_grid_whose_first_arm_has_no_value_takes_its_baseline_among_the_arms_with_values():
    thr = {0.0: None, 0.1: [0.71, 0.73, 0.72], -0.1: [0.69, 0.70, 0.72]}
    runs = [trial(f"mixing.threshold={t}", {"mixing.threshold": t}, s, v[s] if v else None, "gradmix")
            for t, v in thr.items() for s in range(3)]
    res = analyse(grid_study(runs, "grid: {mixing.threshold: [0.0, 0.1, -0.1]}\n",
                             {"mixing.threshold": [0.0, 0.1, -0.1]}))
    assert res["baseline"]["name"] == "mixing.threshold=0.1" and res["baseline"]["ref"] == {"mixing.threshold": 0.1}
    assert [(c["arm"], c["vs"]) for c in res["comparisons"]] == [("mixing.threshold=-0.1", "mixing.threshold=0.1")]
    assert [a["arm"] for a in res["arms"] if a["is_reference"]] == ["mixing.threshold=0.1"]
    assert res["findings"]["baseline"].startswith("Baseline: the arm mixing.threshold=0.1 (")
    sentences = res["findings"]["sentences"]
    assert not any("0 paired seed" in s or "threshold=0.0" in s or "− 0.0 " in s for s in sentences)
    assert res["config"]["reference_arm"] == "mixing.threshold=0.1"
    # named by the ablation file, but without values: the default rule instead, and a note why
    named = analyse(grid_study(runs, "baseline: mixing.threshold=0.0\n", {"mixing.threshold": [0.0, 0.1, -0.1]}))
    assert named["baseline"]["name"] == "mixing.threshold=0.1"
    assert ("Note: the ablation file's baseline 'mixing.threshold=0.0' has no finished run with a value of "
            "final_avg_acc that can be paired") in named["findings"]["baseline"]


def test_a_grid_with_an_evaluation_phase_keeps_its_comparisons_and_pairs_nothing_with_the_evaluation_arm(
        syn_store, tmp_path):
    """syn_digits with `evaluate:`: the best arm re-run on fresh seeds, as arm "evaluate #1" with the
    factor values of method=gradmix memory.size=200 (and a label that sorts before every grid arm)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    yaml = ("# Question: the grid, then its best arm on fresh seeds?\nname: syn_grid_eval\n"
            "grid: {method: [er, er_mixup, gradmix], memory.size: [100, 200]}\nseeds: [0, 1, 2]\n"
            "evaluate: {seeds: [10, 11, 12], set: {data.class_order_seed: 1}}\nmetric: final_avg_acc\n"
            "allow_test_metric: true\n")
    pid = write_study(uri, "syn_grid_eval", DIGITS, yaml, [0, 1, 2])
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("syn_grid_eval").experiment_id
    for r in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{pid}'"):  # phase 1, as the sweep tags it
        c.set_tag(r.info.run_id, "phase", "tune")
    factors = {"method": "gradmix", "memory.size": 200}
    for seed, v in {10: 0.70, 11: 0.74, 12: 0.72}.items():
        r = c.create_run(exp, run_name=f"evaluate #1 seed={seed}", tags={
            "mlflow.parentRunId": pid, "study": "syn_grid_eval", "arm": "evaluate #1", "seed": str(seed),
            "method": "gradmix", "gradmix.role": "trial", "factors": json.dumps(factors), "phase": "evaluate",
            "tune_rank": "1", "tune_arm": "method=gradmix memory.size=200", "tune_trial": "4"})
        c.log_batch(r.info.run_id, metrics=[Metric("final_avg_acc", v, int(time.time() * 1000), 2)],
                    params=[Param(k, str(v)) for k, v in {
                        "method": "gradmix", "memory.size": 200, "mixing.selection": "gradient", "seed": seed,
                        "train.epochs": 1, "data.name": "digits", "model.hidden": "[32]", "data.path": ""}.items()])
        c.set_terminated(r.info.run_id, "FINISHED")
    folder = build_report("syn_grid_eval", uri, tmp_path / "reports")
    md = (folder / "report.md").read_text()
    s = json.loads((folder / "summary.json").read_text())
    plain = json.loads((build_report("syn_digits", syn_store.uri, tmp_path / "plain") / "summary.json").read_text())
    assert s["searched"] is False and s["baseline"]["name"] == "er_mixup"
    pairs = sorted((c["arm"], c["vs"]) for c in s["comparisons"])
    assert pairs == sorted((c["arm"], c["vs"]) for c in plain["comparisons"]) and len(pairs) == 9
    assert [round(c["mean_diff"], 6) for c in s["comparisons"]] == [round(c["mean_diff"], 6)
                                                                    for c in plain["comparisons"]]
    assert s["findings"]["sentences"][1:] == plain["findings"]["sentences"][1:], "the same comparison sentences"
    assert ("Evaluation arms (evaluate #1) are not compared here: they ran other seeds (and the `evaluate.set` "
            "overrides) than the arms they re-run, so they are paired with none; see Tuning vs evaluation.") in md
    assert "| comparison |" in md and "No paired tests" not in md
    for bad in GARBLED:
        assert bad not in section(md, "Findings") + section(md, "Comparisons"), bad


def test_ordinary_grid_reports_keep_their_comparisons(syn_store, tmp_path):
    folder = build_report("syn_digits", syn_store.uri, tmp_path / "reports")
    md = (folder / "report.md").read_text()
    s = json.loads((folder / "summary.json").read_text())
    assert s["searched"] is False and s["findings"]["no_pairs"] == "" and len(s["comparisons"]) == 9
    assert "Baseline: the method er_mixup" in md and "| comparison |" in md
    assert "No paired tests" not in md and "Left out:" not in md and "Evaluation arms" not in md
    assert results_rows(md)[0] == "method=er_mixup memory.size=100 (reference)"
