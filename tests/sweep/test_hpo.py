"""Choosing hyperparameters honestly (sweep/protocol.py, sweep/phases.py, report/tuning.py).

Fast: a study that selects on a test metric is refused before Ray (exit 2, the fix named); the
defaults of a study that selects (val_ metric, val_fraction 0.1, ASHA on val_avg_acc); the choice;
the evaluation configs; `train.max_tasks` trains only K tasks.
Integration (real Ray + MLflow on digits): a two-phase study gives N tune + M evaluate runs with
the right tags and params and a "Tuning vs evaluation" report section; a driver killed in phase 2
resumes without re-running phase 1.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from gradmix_tune.config import ConfigError, from_dict
from gradmix_tune.sweep.protocol import choose, evaluation_config
from gradmix_tune.sweep.study import load_study, trial_table
from helpers import SWEEP_BASE, Driver, reference, rows, sweep_cli_args, trial_dirs, write_ablation

ROOT = Path(__file__).resolve().parents[2]
SPACE = "train.lr: {loguniform: [0.02, 0.3]}\n"
NO_SPLIT = SWEEP_BASE.replace("data: {name: digits, tasks: 3}", "data: {name: digits, tasks: 3, val_fraction: 0.0}")
SPLIT_02 = SWEEP_BASE.replace("data: {name: digits, tasks: 3}", "data: {name: digits, tasks: 3, val_fraction: 0.2}")


def _space(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)


# ------------------------------------------------------------------------------ before Ray
REFUSED = {  # ablation text after SWEEP_BASE -> what the one error line must say
    "search_test_metric": ("search: {space: space.yaml, num_samples: 2}\nmetric: final_avg_acc\n",
                           ["key 'metric'", "test split", "tune on val_final_avg_acc", "allow_test_metric"]),
    "search_test_forgetting": ("search: {space: space.yaml, num_samples: 2}\nmetric: forgetting\n",
                               ["key 'metric'", "val_forgetting"]),
    "grid_evaluate_test_metric": ("grid: {train.lr: [0.05, 0.1]}\nmetric: final_avg_acc\nevaluate: {seeds: [7]}\n",
                                  ["key 'metric'", "val_final_avg_acc"]),
    "asha_on_test": ("search: {space: space.yaml, num_samples: 2}\n"
                     "scheduler: {type: asha, metric: avg_acc}\n", ["scheduler.metric", "val_avg_acc"]),
    "val_metric_without_split": ("grid: {train.lr: [0.05, 0.1]}\nmetric: val_final_avg_acc\n",
                                 ["key 'metric'", "data.val_fraction is 0"]),
    "evaluate_seed_reused": ("search: {space: space.yaml, num_samples: 2}\nseeds: [0, 1]\n"
                             "evaluate: {seeds: [1, 2]}\n", ["evaluate.seeds", "tuned on", "fresh"]),
    "evaluate_unknown_key": ("search: {space: space.yaml, num_samples: 2}\nevaluate: {seeds: 2, sett: {}}\n",
                             ["evaluate.sett", "did you mean 'set'"]),
    "evaluate_bad_set": ("search: {space: space.yaml, num_samples: 2}\n"
                         "evaluate: {seeds: 2, set: {data.class_order_sed: 1}}\n", ["class_order_sed"]),
    "evaluate_method": ("search: {space: space.yaml, num_samples: 2}\nevaluate: {seeds: 2, set: {method: er}}\n",
                        ["evaluate.set.method"]),
    "search_tasks_too_many": ("search: {space: space.yaml, num_samples: 2, tasks: 4}\n",
                              ["search.tasks", "the stream has 3"]),
    "allow_not_bool": ("search: {space: space.yaml, num_samples: 2}\nallow_test_metric: yes please\n",
                       ["allow_test_metric", "true or false"]),
}


def test_selecting_on_test_data_exits_2_before_ray(tmp_path):
    """Every case in one fresh interpreter: exit 2, one line with the fix, neither ray nor torch loaded."""
    cases = {}
    for name, (text, _) in REFUSED.items():
        d = tmp_path / name
        d.mkdir()
        _space(d)
        base = SWEEP_BASE if name != "val_metric_without_split" else NO_SPLIT
        (d / "bad.yaml").write_text(base + f"name: {name}\n" + text)
        cases[name] = str(d / "bad.yaml")
    ok = tmp_path / "allowed"
    ok.mkdir()
    _space(ok)
    (ok / "allowed.yaml").write_text(SWEEP_BASE + "name: allowed\nsearch: {space: space.yaml, num_samples: 2}\n"
                                     "metric: final_avg_acc\nallow_test_metric: true\n")
    grid = tmp_path / "grid.yaml"  # a grid ablation selects nothing: test metrics are fine
    grid.write_text(SWEEP_BASE + "name: grid\ngrid: {train.lr: [0.05, 0.1]}\nmetric: final_avg_acc\n")
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from gradmix_tune.cli import main
        out = {{}}
        cases = {json.dumps(cases)}
        cases["allowed"] = {str(ok / "allowed.yaml")!r}
        cases["grid"] = {str(grid)!r}
        for name, path in cases.items():
            err, std = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                rc = main(["sweep", path, "--dry-run", "--storage", {str(tmp_path / "rr")!r}])
            out[name] = {{"rc": rc, "err": err.getvalue(), "out": std.getvalue(),
                         "ray": "ray" in sys.modules or "torch" in sys.modules}}
        print(json.dumps(out))
        """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (_, needles) in REFUSED.items():
        o = out[name]
        assert o["rc"] == 2 and not o["ray"], (name, o)
        assert o["err"].startswith("error: ") and o["err"].count("\n") == 1, (name, o["err"])
        for n in needles:
            assert n in o["err"], (name, n, o["err"])
    assert out["allowed"]["rc"] == 0 and "WARNING: allow_test_metric: true" in out["allowed"]["out"] + \
        out["allowed"]["err"]
    assert out["grid"]["rc"] == 0, out["grid"]


def test_a_study_that_selects_tunes_on_held_out_data_by_default(tmp_path):
    _space(tmp_path)
    p = write_ablation(tmp_path, "hpo", """\
        name: hpo
        search: {space: space.yaml, num_samples: 4, tasks: 2}
        scheduler: {type: asha}
        evaluate: {seeds: 3, top: 2, set: {data.class_order_seed: 1}}
        """)
    s = load_study(p, storage=str(tmp_path / "rr"))
    assert s.metric == "val_final_avg_acc" and s.mode == "max"
    assert s.base["data"]["val_fraction"] == 0.1 and s.val_default
    assert s.base["train"]["max_tasks"] == 2 and s.tune_tasks == 2
    assert s.scheduler["metric"] == "val_avg_acc" and s.scheduler["max_t"] == 2  # the trials' 2 tasks
    assert s.evaluate == {"seeds": [1, 2, 3], "top": 2, "set": {"data": {"class_order_seed": 1}}}
    table = trial_table(s)
    assert "data.val_fraction 0.1 (the default of a study that selects)" in table
    assert "first 2 tasks" in table and "best 2 configuration(s) x seeds [1, 2, 3] = 6 runs" in table
    # a fraction the file sets is kept; a grid that selects nothing holds nothing out and has no phase
    q = load_study(write_ablation(tmp_path, "hpo2", "name: hpo2\nsearch: {space: space.yaml, num_samples: 2}\n",
                                  base=SPLIT_02))
    assert q.base["data"]["val_fraction"] == 0.2 and not q.val_default
    g = load_study(write_ablation(tmp_path, "g", "name: g\ngrid: {train.lr: [0.05, 0.1]}\n"))
    assert "val_fraction" not in g.base["data"] and all("phase" not in t for t in g.trials)
    ge = load_study(write_ablation(tmp_path, "ge", "name: ge\ngrid: {train.lr: [0.05, 0.1]}\nevaluate: {seeds: 1}\n"))
    assert ge.metric == "val_final_avg_acc" and {t["phase"] for t in ge.trials} == {"tune"}
    assert ge.evaluate["seeds"] == [1]


def test_shipped_hpo_examples_are_honest():
    """hpo_gradmix.yaml and the four tuning-scheme studies tune on validation data and evaluate the
    choice on fresh seeds and another class order, the same evaluation in every scheme study."""
    hpo = load_study(ROOT / "ablations" / "hpo_gradmix.yaml", data_root="/nonexistent-data-root")
    assert hpo.metric == "val_final_avg_acc" and hpo.scheduler["metric"] == "val_avg_acc"
    assert hpo.evaluate["set"] == {"data": {"class_order_seed": 1}} and not set(hpo.evaluate["seeds"]) & {0}
    schemes = {f.stem: load_study(f, data_root="/nonexistent-data-root")
               for f in sorted((ROOT / "ablations").glob("schemes_*.yaml"))}
    assert set(schemes) == {f"schemes_{m}_{s}" for m in ("gradmix", "mixup") for s in ("full", "first")}
    assert len({json.dumps(s.evaluate, sort_keys=True) for s in schemes.values()}) == 1
    assert {n: s.tune_tasks for n, s in schemes.items()} == {"schemes_gradmix_full": None, "schemes_mixup_full": None,
                                                            "schemes_gradmix_first": 2, "schemes_mixup_first": 2}
    assert {s.base["method"] for s in schemes.values()} == {"gradmix", "er_mixup"}


def _outcome(index, arm, score, test, status="ok", seed=0):
    return SimpleNamespace(config={"index": index, "arm": arm, "seed": seed, "factors": {"train.lr": index / 10},
                                   "config": {"seed": seed, "train": {"lr": index / 10}}},
                           metrics={"val_final_avg_acc": score, "final_avg_acc": test}, status=status,
                           trial_id=f"id{index}")


def test_choose_the_best_by_the_study_metric():
    outs = [_outcome(0, "a", 0.5, 0.9), _outcome(1, "b", 0.8, 0.1), _outcome(2, "c", 0.9, 0.2, status="stopped"),
            _outcome(3, "d", 0.7, 0.95), _outcome(4, "e", float("nan"), 0.99)]
    (best,) = choose(outs, "val_final_avg_acc", "max", 1, by_arm=False)
    assert best["tune_trials"] == [1] and best["score"] == 0.8 and best["test_score"] == 0.1  # never the test one
    assert best["tune_trial_ids"] == ["id1"] and best["rank"] == 1
    assert [c["tune_trials"] for c in choose(outs, "val_final_avg_acc", "max", 2, by_arm=False)] == [[1], [3]]
    assert choose(outs, "val_final_avg_acc", "min", 1, by_arm=False)[0]["tune_trials"] == [0]
    # a grid: arms by their mean over seeds
    grid = [_outcome(0, "a", 0.9, 0, seed=0), _outcome(1, "b", 0.8, 0, seed=0), _outcome(2, "a", 0.5, 0, seed=1),
            _outcome(3, "b", 0.8, 0, seed=1)]
    (arm,) = choose(grid, "val_final_avg_acc", "max", 1, by_arm=True)
    assert arm["arm"] == "b" and arm["tune_trials"] == [1, 3] and arm["n"] == 2


def test_evaluation_config_runs_the_whole_stream_on_the_full_training_data():
    tuned = from_dict({"data": {"name": "digits", "tasks": 3, "val_fraction": 0.1}, "train": {"max_tasks": 2},
                       "seed": 0}).to_dict()
    ev = {"seeds": [5], "top": 1, "set": {"data": {"class_order_seed": 1}}}
    cfg = evaluation_config(tuned, ev, val_default=True, tune_tasks=2)
    assert "seed" not in cfg and cfg["data"]["val_fraction"] is None and cfg["train"]["max_tasks"] == 0
    assert cfg["data"]["class_order_seed"] == 1 and tuned["data"]["class_order_seed"] == 0
    kept = evaluation_config(tuned, ev, val_default=False, tune_tasks=None)  # what the file set stays
    assert kept["data"]["val_fraction"] == 0.1 and kept["train"]["max_tasks"] == 2


def test_max_tasks_trains_only_the_first_tasks():
    from gradmix_tune.learner import Hooks, run
    from gradmix_tune.results import task_result

    cfg = from_dict({"data": {"name": "digits", "tasks": 3, "val_fraction": 0.2}, "model": {"hidden": [16]},
                     "memory": {"size": 50}, "train": {"max_tasks": 2, "threads": 1}})
    seen = []
    result = run(cfg, Hooks(on_task=lambda rec, learner: seen.append(task_result(rec, learner))))
    assert len(result.accuracy_matrix) == 2 and len(result.val_matrix) == 2
    assert [r["tasks_done"] for r in seen] == [1, 2]
    assert seen[-1]["final"] == 1 and "final" not in seen[0]  # the final result after the K-th task
    assert seen[-1]["final_avg_acc"] == pytest.approx(sum(result.accuracy_matrix[-1]) / 2)
    assert seen[-1]["val_final_avg_acc"] == pytest.approx(sum(result.val_matrix[-1]) / 2)
    with pytest.raises(ConfigError, match="train.max_tasks"):
        from_dict({"data": {"name": "digits", "tasks": 3}, "train": {"max_tasks": 4}})


# ------------------------------------------------------------------------------ on Ray
TWO_PHASE = """\
    name: {name}
    search: {{space: space.yaml, algorithm: random, num_samples: 3, seed: 1, tasks: 2}}
    seeds: [0]
    scheduler: {{type: asha, grace_period: 2}}
    evaluate: {{seeds: [5, 6], set: {{data.class_order_seed: 1{extra}}}}}
    """


def _children(uri: str, study: str):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("gradmix.role") == "parent"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, kids


@pytest.mark.integration
def test_two_phase_study_tunes_then_evaluates_the_best(tmp_path, ray_address, capsys):
    from gradmix_tune.cli import main

    _space(tmp_path)
    path = write_ablation(tmp_path, "twophase", TWO_PHASE.format(name="twophase", extra=""),
                          base=SWEEP_BASE + "  method: er_mixup\n")
    assert main(["sweep", str(path), *sweep_cli_args(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "evaluating (phase 2): 1 configuration(s) x 2 fresh seeds = 2 runs" in printed
    exp = tmp_path / "ray_results" / "twophase"
    choice = json.loads((exp / "gradmix_choice.json").read_text())
    tune = {json.loads((d / "params.json").read_text())["index"]: rows(d) for d in trial_dirs(exp).values()}
    assert sorted(tune) == [0, 1, 2]
    finals = {i: next((x for x in r if x.get("final")), None) for i, r in tune.items()}
    for i, r in tune.items():  # ASHA can stop on validation: every result carries val_avg_acc
        assert r and all("val_avg_acc" in x for x in r), i
        assert max(x["tasks_done"] for x in r if x["kind"] == "task") <= 2  # search.tasks: 2 of 3 tasks
    best = max((i for i in finals if finals[i]), key=lambda i: finals[i]["val_final_avg_acc"])
    (chosen,) = choice["chosen"]
    assert chosen["tune_trials"] == [best] and chosen["score"] == finals[best]["val_final_avg_acc"]
    assert finals[best]["tasks_done"] == 2 and json.loads(finals[best]["accuracy_matrix"]).__len__() == 2

    ev = trial_dirs(exp / "evaluate")
    assert len(ev) == 2
    best_cfg = next(json.loads((d / "params.json").read_text()) for d in trial_dirs(exp).values()
                    if json.loads((d / "params.json").read_text())["index"] == best)
    for d in ev.values():
        t = json.loads((d / "params.json").read_text())
        cfg = t["config"]
        assert t["phase"] == "evaluate" and t["tune_trial"] == str(best) and t["seed"] in (5, 6)
        assert cfg["train"]["lr"] == best_cfg["config"]["train"]["lr"]  # the tuned value
        assert cfg["data"]["class_order_seed"] == 1 and cfg["train"]["max_tasks"] == 0  # set:, whole stream
        assert cfg["data"]["val_fraction"] is None  # the full training data
        (final,) = [x for x in rows(d) if x.get("final")]
        assert final["tasks_done"] == 3 and "val_avg_acc" not in final
        assert final["final_avg_acc"] == reference(cfg).final_avg_acc  # same as a single run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parents, kids = _children(uri, "twophase")
    assert len(parents) == 1  # both phases under one parent run
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    by_phase = {p: [k for k in kids if k.data.tags.get("phase") == p] for p in ("tune", "evaluate")}
    assert len(by_phase["tune"]) == 3 and len(by_phase["evaluate"]) == 2 and len(kids) == 5
    best_tid = choice["chosen"][0]["tune_trial_ids"][0]
    for k in by_phase["evaluate"]:
        tags, params = k.data.tags, k.data.params
        assert tags["tune_trial"] == str(best) and tags["tune_trial_id"] == best_tid and tags["tune_rank"] == "1"
        assert tags["arm"] == "evaluate #1" and float(params["train.lr"]) == best_cfg["config"]["train"]["lr"]
        assert params["data.class_order_seed"] == "1" and params["train.max_tasks"] == "0"
    for k in by_phase["tune"]:
        assert k.data.params["train.max_tasks"] == "2" and k.data.params["data.val_fraction"] == "0.1"
    report = (tmp_path / "reports" / "twophase" / "report.md").read_text()
    section = report.split("## Tuning vs evaluation", 1)[1].split("\n## ", 1)[0]
    assert "optimism gap" in section and "first 2 of 3 tasks" in section and "`data.class_order_seed` 0 → 1" in section
    assert "⚠" not in section  # chosen on validation: no red flag


@pytest.mark.integration
def test_killed_in_phase_2_resumes_without_rerunning_phase_1(tmp_path, ray_address):
    _space(tmp_path)
    # slower evaluation runs (5 tasks, 3 epochs) so the driver can be killed in the middle of them
    path = write_ablation(tmp_path, "killtwo", TWO_PHASE.format(name="killtwo", extra=", data.tasks: 5, "
                                                                 "train.epochs: 3"))
    exp = tmp_path / "ray_results" / "killtwo"
    driver = Driver(["sweep", str(path), *sweep_cli_args(tmp_path), "--address", ray_address,
                     "--max-concurrent", "1"], tmp_path)
    driver.wait_until(lambda: any(any(x.get("kind") == "task" for x in rows(d))  # an evaluation run reported
                                  for d in trial_dirs(exp / "evaluate").values()), 180, "phase 2 started")
    driver.stop(signal.SIGKILL)
    tune_before = {n: (d / "result.json").read_bytes() for n, d in trial_dirs(exp).items()}
    assert len(tune_before) == 3 and (exp / "gradmix_choice.json").exists()

    res = driver.resume(timeout_s=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tuning (phase 1) ended before; resuming its evaluation" in res.stdout
    after = trial_dirs(exp)
    assert {n: (d / "result.json").read_bytes() for n, d in after.items()} == tune_before  # phase 1 not re-run
    ev = trial_dirs(exp / "evaluate")
    assert len(ev) == 2
    for d in ev.values():
        assert len([x for x in rows(d) if x.get("final")]) == 1  # each evaluation run ends exactly once
    parents, kids = _children(f"sqlite:///{tmp_path}/mlflow.db", "killtwo")
    assert len(parents) == 1
    done = [k for k in kids if k.info.status == "FINISHED"]
    assert sorted(k.data.tags.get("phase") for k in done) == ["evaluate"] * 2 + ["tune"] * 3
