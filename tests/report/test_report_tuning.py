"""report/tuning.py: the "Tuning vs evaluation" section, checked by hand on synthetic two-phase
studies written to a real sqlite MLflow store the way the sweep tags them (phase, tune_rank,
tune_arm, tune_trial), and the red flag of a study that chose on a test metric."""
from __future__ import annotations

import json
import time

from report_store import write_search

from gradmix_tune.report import build_report

# tuning runs (seed 0): train.lr -> (val_final_avg_acc, final_avg_acc); the best by validation is
# lr 0.05, whose test score (0.83) is not the best test score (lr 0.1: 0.85)
TUNE = {0.01: (0.70, 0.72), 0.05: (0.80, 0.83), 0.1: (0.75, 0.85)}
EVAL = {10: 0.70, 11: 0.74, 12: 0.72}  # the chosen lr on fresh seeds: mean 0.72, std 0.02
YAML = """# Question: which learning rate, honestly?
name: {name}
base: {{data: {{name: digits, tasks: 5}}}}
search: {{space: sgd.yaml, num_samples: 3, tasks: 2}}
evaluate: {{seeds: [10, 11, 12], set: {{data.class_order_seed: 1}}}}
metric: {metric}
"""


def write_two_phase(uri: str, name: str, metric: str, allow: bool = False) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    c = MlflowClient(uri)
    exp_id = c.create_experiment(name)
    tags = {"study": name, "gradmix.role": "parent", "ablation": f"ablations/{name}.yaml", "metric": metric,
            "mode": "max", "grid": "{}", "seeds": "[0]"}
    if allow:
        tags["allow_test_metric"] = "true"
    pid = c.create_run(exp_id, run_name=name, tags=tags).info.run_id
    c.log_text(pid, YAML.format(name=name, metric=metric) + ("allow_test_metric: true\n" if allow else ""),
               "ablation.yaml")
    now = int(time.time() * 1000)

    def child(arm, seed, factors, metrics, params, extra):
        t = {"mlflow.parentRunId": pid, "study": name, "arm": arm, "seed": str(seed), "method": "er_mixup",
             "gradmix.role": "trial", "trial_id": f"{arm}-{seed}", "factors": json.dumps(factors), **extra}
        r = c.create_run(exp_id, run_name=f"er_mixup {arm} seed={seed}", tags=t)
        c.log_batch(r.info.run_id, metrics=[Metric(k, v, now, 2) for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()])
        c.set_terminated(r.info.run_id, "FINISHED")

    for i, (lr, (val, test)) in enumerate(TUNE.items()):
        child(f"train.lr={lr}", 0, {"train.lr": lr}, {"val_final_avg_acc": val, "final_avg_acc": test},
              {"train.lr": lr, "train.max_tasks": 2, "data.tasks": 5, "data.val_fraction": 0.1,
               "data.class_order_seed": 0, "seed": 0}, {"phase": "tune"})
    for seed, test in EVAL.items():
        child("evaluate #1", seed, {"train.lr": 0.05}, {"final_avg_acc": test},
              {"train.lr": 0.05, "train.max_tasks": 0, "data.tasks": 5, "data.val_fraction": "None",
               "data.class_order_seed": 1, "seed": seed},
              {"phase": "evaluate", "tune_rank": "1", "tune_arm": "train.lr=0.05", "tune_trial": "1"})
    c.set_terminated(pid, "FINISHED")


def section(text: str) -> str:
    return text.split("## Tuning vs evaluation", 1)[1].split("\n## ", 1)[0]


def test_tuning_vs_evaluation_numbers_by_hand(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    write_two_phase(uri, "syn_hpo", "val_final_avg_acc")
    folder = build_report("syn_hpo", uri, tmp_path / "reports")
    s = section((folder / "report.md").read_text())
    row = next(ln for ln in s.splitlines() if ln.startswith("| 1 |"))
    cells = [x.strip() for x in row.strip("|").split("|")]
    assert cells[1] == "train.lr: 0.0500"  # the values chosen by validation, not lr 0.1 (best on test)
    assert cells[3:6] == ["0.8000", "0.8300", "0.7200 ± 0.0200"]
    half = 4.302653 * 0.02 / 3 ** 0.5  # t(0.975, 2) * std / sqrt(n)
    assert cells[6] == f"[{0.72 - half:.4f}, {0.72 + half:.4f}]" and cells[7] == "3"
    assert cells[8] == "0.1100" and cells[9] == f"[{0.11 - half:.4f}, {0.11 + half:.4f}]"  # the optimism gap
    assert "same-stream tuning overstated it by 0.1100" in s
    assert "first 2 of 5 tasks" in s and "`data.class_order_seed` 0 → 1" in s and "`train.max_tasks` 2 → 0" in s
    assert "Spearman rank correlation" in s and "⚠" not in s
    assert "Tuning vs evaluation" in (folder / "report.html").read_text()


def test_a_choice_made_on_test_data_is_flagged_in_red(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    write_two_phase(uri, "syn_hpo_test", "final_avg_acc", allow=True)
    folder = build_report("syn_hpo_test", uri, tmp_path / "reports")
    s = section((folder / "report.md").read_text())
    assert "⚠" in s and "TEST split" in s and "allow_test_metric: true" in s
    page = (folder / "report.html").read_text()
    flag = page[page.index("<h2>Tuning vs evaluation"):]  # the section (the findings name it too)
    assert "color:#a40000" in flag.split("</p>")[0] and "TEST split" in flag.split("</p>")[0]


def test_no_section_without_phase_tags(syn_store, tmp_path):
    folder = build_report("syn_digits", syn_store.uri, tmp_path / "reports")
    assert "Tuning vs evaluation" not in (folder / "report.md").read_text()


def test_tuning_counts_configurations_with_a_value_apart_from_stopped_and_failed(tmp_path):
    """30 Optuna configurations, ASHA stopping 23 after their first task (as in
    reports/hpo_gradmix): the counts are exact, and the stopped ones rank nowhere."""
    uri = f"sqlite:///{tmp_path}/m.db"
    ended = {round(0.01 * (i + 1), 2): {"val_final_avg_acc": 0.70 + 0.01 * i, "final_avg_acc": 0.65 + 0.01 * i}
             for i in range(7)}
    stopped = {round(0.1 + 0.01 * i, 2): None for i in range(23)}
    write_search(uri, "syn_asha", {**ended, **stopped}, evaluate={1: (0.07, {10: 0.70, 11: 0.74, 12: 0.72})})
    folder = build_report("syn_asha", uri, tmp_path / "reports")
    md = (folder / "report.md").read_text()
    assert ("Phase 1 (tuning): 30 configurations tried: 7 ran to the end, 23 stopped early by ASHA, 0 failed; "
            "only the 7 with a value of `val_final_avg_acc` are ranked; the choice is by") in section(md)
    assert "over the 7 tuning runs with both" in section(md)
    findings = json.loads((folder / "summary.json").read_text())["findings"]["sentences"]
    assert findings[0].startswith("Best of 7 arms by val_final_avg_acc") and "train.lr=0.07 with" in findings[0]
    assert findings[0].endswith("and 23 arms without a value of val_final_avg_acc (stopped early, or ended "
                                "without it).")
    assert not any("0 seed" in s for s in findings), "the stopped configurations have no seeds to count"
    assert "31 arms (23 of them without a value of `final_avg_acc`)" in md


def test_failed_and_valueless_tuning_runs_count_as_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tune = {0.01: {"val_final_avg_acc": 0.70, "final_avg_acc": 0.72}, 0.05: {"val_final_avg_acc": 0.80,
            "final_avg_acc": 0.83}, 0.1: None, 0.2: {"val_final_avg_acc": float("nan"), "final_avg_acc": 0.1}}
    write_search(uri, "syn_failed", tune, failed=(0.3, 0.4), scheduler="fifo")
    s = section((build_report("syn_failed", uri, tmp_path / "reports") / "report.md").read_text())
    assert ("Phase 1 (tuning): 6 configurations tried: 2 ran to the end, 1 stopped before their last task, "
            "3 failed (1 finished without a number for `val_final_avg_acc`); only the 2 with a value of "
            "`val_final_avg_acc` are ranked; the choice is by") in s
