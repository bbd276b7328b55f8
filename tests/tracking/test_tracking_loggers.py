"""The MLflow loggers on the tracked tiny study of tests/helpers.py (sqlite store and a real server):
parent and child runs, params, tags, metric histories, artifacts, failures, resumes; and the
`gradmix-tune run` logger."""
from __future__ import annotations

import inspect
import json
import pickle
import types

import pytest
from helpers import (ALWAYS_FAIL, CRASH_ONCE, GRID, PNG, STUDY, artifact_names, children_by_key, client, download,
                     results_of, runs_of, snapshot, split_sessions, study_obj)

from gradmix_tune.config import flatten
from gradmix_tune.tracking import PARENT, ROLE, StudyLogger, param_value
from gradmix_tune.values import is_finite

BACKENDS = ["sqlite", "server"]


def run_name(arm: str, seed) -> str:
    """A child run's name: its method first (the arm's `method=`), the other factors, the seed."""
    method = next(t.split("=", 1)[1] for t in arm.split() if t.startswith("method="))
    return " ".join([method, *(t for t in arm.split() if not t.startswith("method=")), f"seed={seed}"])


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_parent_and_nested_children(tracked_study, backend):
    c, parents, kids = children_by_key(tracked_study.uris[backend])
    assert len(parents) == 1, "a resumed study must reuse its parent run"
    p = parents[0]
    t = p.data.tags
    assert t["study"] == STUDY and t["ablation"] == f"ablations/{STUDY}.yaml"
    assert t["git_commit"] and t["command"] and t["metric"] == "final_avg_acc"
    assert json.loads(t["grid"]) == GRID
    assert p.info.status == "FINISHED"
    assert "ablation.yaml" in artifact_names(c, p.info.run_id)
    _, _, runs = runs_of(tracked_study.uris[backend])
    trial_runs = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    assert len(trial_runs) == len(tracked_study.specs) == len(kids), "one child run per trial, no duplicates"
    for (arm, seed), r in kids.items():
        assert r.data.tags[PARENT] == p.info.run_id
        assert r.info.run_name == run_name(arm, seed)
    assert len({r.data.tags["trial_id"] for r in trial_runs}) == len(trial_runs)


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_params_and_tags(tracked_study, backend):
    _, _, kids = children_by_key(tracked_study.uris[backend])
    for spec in tracked_study.specs:
        r = kids[(spec["arm"], spec["seed"])]
        expected = {k: param_value(v) for k, v in flatten(spec["config"]).items()}
        assert r.data.params == expected
        t = r.data.tags
        assert (t["study"], t["arm"], t["seed"], t["method"]) == (STUDY, spec["arm"], str(spec["seed"]),
                                                                 spec["factors"]["method"])
        assert json.loads(t["factors"]) == spec["factors"]
        assert t["factor.memory.size"] == str(spec["factors"]["memory.size"])
        assert t["trial_id"]


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_metric_histories_have_the_right_steps_and_values(tracked_study, backend):
    c, _, kids = children_by_key(tracked_study.uris[backend])
    s1, s2 = split_sessions(tracked_study.events)
    for spec in tracked_study.specs:
        key = (spec["arm"], spec["seed"])
        if key == ALWAYS_FAIL:
            continue
        r = kids[key]
        rid = r.info.run_id
        # per-task values under task/ at step = tasks done, per-epoch ones under epoch/ at step =
        # global epoch, tasks counted from 1; the result dicts' names are 0-based (acc_task_0)
        names = {"acc_task_0": "task/acc_task_1", "acc_task_1": "task/acc_task_2", "avg_acc": "task/avg_acc",
                 "seen_acc": "epoch/seen_acc", "loss": "epoch/loss", "epoch_time_s": "epoch/epoch_time_s"}
        h = {k: [(m.step, m.value) for m in sorted(c.get_metric_history(rid, n), key=lambda m: m.step)]
             for k, n in names.items()}
        assert not {"acc_task_0", "avg_acc", "seen_acc", "task"} & set(r.data.metrics), "no unprefixed twins"
        assert [s for s, _ in h["acc_task_0"]] == [1, 2]
        assert [s for s, _ in h["acc_task_1"]] == [2]
        assert [s for s, _ in h["avg_acc"]] == [1, 2]
        assert [s for s, _ in h["seen_acc"]] == [1, 2, 3, 4] == [s for s, _ in h["loss"]]
        assert [(m.step, m.value) for m in sorted(c.get_metric_history(rid, "epoch/task"), key=lambda m: m.step)] \
            == [(1, 1), (2, 1), (3, 2), (4, 2)]
        # values: what the trial reported to Ray (both sessions for the resumed one)
        rep = results_of(s1 + s2, r.data.tags["trial_id"])
        epochs = {x["global_epoch"]: x for x in rep if x["kind"] == "epoch"}
        tasks = {x["tasks_done"]: x for x in rep if x["kind"] == "task"}
        assert [v for _, v in h["seen_acc"]] == pytest.approx([epochs[s]["seen_acc"] for s in (1, 2, 3, 4)], abs=1e-12)
        assert [v for _, v in h["acc_task_0"]] == pytest.approx([tasks[1]["acc_task_0"], tasks[2]["acc_task_0"]],
                                                                abs=1e-12)
        final = tasks[2]
        for k in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "wall_time_s"):
            hist = c.get_metric_history(rid, k)
            assert len(hist) == 1 and hist[0].step == 0
            assert hist[0].value == pytest.approx(final[k], abs=1e-12)
        acc = json.loads(final["accuracy_matrix"])
        assert r.data.metrics["final_avg_acc"] == pytest.approx(sum(acc[-1]) / len(acc[-1]))
        if spec["factors"]["method"] == "gradmix":
            assert "epoch/frac_mixed" in r.data.metrics and "epoch/frac_pairs_helpful" in r.data.metrics
            # a mixer's diagnostics, reported per epoch and repeated in the task's result: logged at
            # the epochs that reported a finite value, no task-step entries mixed in
            for k in ("frac_mixed", "frac_pairs_helpful", "selection_time_s", "refresh_time_s", "refreshes"):
                first = {}  # a resumed trial reports an epoch again: MLflow keeps the first value
                for x in rep:
                    if x["kind"] == "epoch":
                        first.setdefault(x["global_epoch"], x)
                want = [(s, x[k]) for s, x in sorted(first.items()) if is_finite(x.get(k))]
                got = sorted((m.step, m.value) for m in c.get_metric_history(rid, f"epoch/{k}"))
                assert want and [s for s, _ in got] == [s for s, _ in want], k
                assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-12), k
        assert sorted(m.step for m in c.get_metric_history(rid, "task/proxy_drift")) == [1, 2]  # per task only
        assert r.info.status == "FINISHED"


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_artifacts_drawn_on_the_driver(tracked_study, backend, tmp_path):
    import yaml
    from matplotlib.image import imread

    c, _, kids = children_by_key(tracked_study.uris[backend])
    for (arm, seed), r in kids.items():
        names = artifact_names(c, r.info.run_id)
        assert "config.yaml" in names
        if (arm, seed) == ALWAYS_FAIL:
            continue
        expect = {"accuracy_matrix.png", "accuracy_matrix.json", "curve.png"}
        if arm.startswith("method=gradmix"):
            expect.add("s_matrix.png")  # GradMix's S of the last refresh
        assert expect <= names, (arm, seed, names)
    r = kids[("method=gradmix memory.size=40", 0)]
    d = tmp_path / "dl"
    for name in ("accuracy_matrix.png", "s_matrix.png", "curve.png"):
        p = download(tracked_study.uris[backend], r.info.run_id, name, d)
        assert p.read_bytes()[:8] == PNG
        assert imread(str(p)).shape[0] > 50
    cfg = yaml.safe_load(download(tracked_study.uris[backend], r.info.run_id, "config.yaml", d).read_text())
    spec = next(s for s in tracked_study.specs if (s["arm"], s["seed"]) == ("method=gradmix memory.size=40", 0))
    assert cfg == spec["config"]


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_trial_ends_failed_with_its_error(tracked_study, backend, tmp_path):
    c, _, kids = children_by_key(tracked_study.uris[backend])
    r = kids[ALWAYS_FAIL]
    assert r.info.status == "FAILED"
    assert "injected failure at global epoch 3" in r.data.tags["error"]
    assert "error.txt" in artifact_names(c, r.info.run_id)
    assert "injected failure" in download(tracked_study.uris[backend], r.info.run_id, "error.txt", tmp_path).read_text()
    # it failed in both sessions, reporting epoch 3 each time: logged once
    assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch/seen_acc")] == [1, 2, 3]
    assert "final_avg_acc" not in r.data.metrics


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_reuses_the_runs_and_continues_the_metrics(tracked_study, backend):
    before = tracked_study.after_session1[backend]
    c, parents, kids = children_by_key(tracked_study.uris[backend])
    crashed = kids[CRASH_ONCE]
    rid = crashed.info.run_id
    assert before[rid]["status"] == "FAILED", "session 1 ended the crashed trial's run FAILED"
    assert [s for s, _ in before[rid]["hist"]["epoch/seen_acc"]] == [1, 2, 3]
    assert "final_avg_acc" not in before[rid]["hist"]
    # session 2: same run, finished, epoch 3 reported again but logged once, task 2 added
    assert crashed.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(rid, "epoch/seen_acc")] == [1, 2, 3, 4]
    assert [m.step for m in c.get_metric_history(rid, "task/acc_task_1")] == [1, 2]
    assert len(c.get_metric_history(rid, "final_avg_acc")) == 1
    assert set(before) == {r.info.run_id for r in runs_of(tracked_study.uris[backend])[2]}, "no new runs on resume"
    s1, s2 = split_sessions(tracked_study.events)
    resumed = {t.trial_id for _, ev, t, _ in s2 if ev in ("complete", "error")}
    assert resumed == {crashed.data.tags["trial_id"], kids[ALWAYS_FAIL].data.tags["trial_id"]}
    s2_epochs = [x["global_epoch"] for x in results_of(s2, crashed.data.tags["trial_id"]) if x["kind"] == "epoch"]
    assert s2_epochs == [3, 4], "the resumed trial restarted from its task-1 checkpoint"


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_fresh_callback_with_resume_adds_nothing(tracked_study, backend):
    """A new sweep session (new callback, resume=True) replaying the same trials' events:
    the parent is found by its study tag, children by trial id; no run or metric is added."""
    uri = tracked_study.uris[backend]
    before = snapshot(uri)
    s1, s2 = split_sessions(tracked_study.events)
    last_session = {}  # trial id -> its events in the last session it ran in
    for events in (s1, s2):
        ids = {e[2].trial_id for e in events if e[2] is not None}
        for tid in ids:
            last_session[tid] = [e for e in events if e[2] is not None and e[2].trial_id == tid]
    # the resumed, the failed and two finished trials (every trial would only take longer)
    crashed_or_failed = {t.trial_id for _, ev, t, _ in s2 if ev in ("complete", "error")}
    finished = [tid for tid in last_session if tid not in crashed_or_failed][:2]
    cb = StudyLogger(study_obj(), uri, resume=True)
    cb.setup()
    trials = []
    for tid in sorted(crashed_or_failed) + finished:
        events = last_session[tid]
        trial = events[0][2]
        trials.append(trial)
        cb.trial_start(trial)
        for _, ev, t, r in events:
            if ev == "result":
                cb.trial_result(t, r)
            elif ev == "complete":
                cb.trial_complete(t)
            else:
                cb.trial_error(t)
    cb.experiment_end(trials)
    assert cb.spill is None
    after = snapshot(uri)
    assert set(after) == set(before)
    for rid in before:
        assert after[rid]["status"] == before[rid]["status"]
        assert after[rid]["hist"] == before[rid]["hist"], after[rid]["tags"].get("mlflow.runName")
        assert after[rid]["params"] == before[rid]["params"]


@pytest.mark.integration
def test_resume_adopts_or_retires_the_runs_of_trials_ray_created_again(tracked_study, tmp_path):
    """Driver killed before Ray saved a trial: the resumed study creates it again with a new id.
    Its old run is adopted when it holds no metrics, else ended KILLED and marked superseded."""
    uri = f"sqlite:///{tmp_path / 'z.db'}"
    s1, _ = split_sessions(tracked_study.events)
    a, b = [t for _, ev, t, _ in s1 if ev == "complete"][:2]
    res = {t.trial_id: results_of(s1, t.trial_id) for t in (a, b)}

    def fake(tid, like):
        return types.SimpleNamespace(trial_id=tid, config=like.config, status="TERMINATED", error_file=None)

    cb1 = StudyLogger(study_obj("zombies"), uri)
    cb1.setup()
    cb1.trial_start(fake("old_a", a))  # killed before it reported anything
    cb1.trial_start(fake("old_b", b))
    cb1.trial_result(fake("old_b", b), res[b.trial_id][0])  # killed after one epoch
    assert cb1.writer.flush()  # ... and the driver dies here: no end events
    cb2 = StudyLogger(study_obj("zombies"), uri, resume=True)
    cb2.setup()
    new = [fake("new_a", a), fake("new_b", b)]
    for t, like in zip(new, (a, b)):
        cb2.trial_start(t)
        for r in res[like.trial_id]:
            cb2.trial_result(t, r)
        cb2.trial_complete(t)
    cb2.experiment_end(new)
    c, exp, runs = runs_of(uri, "zombies")
    assert sum(r.data.tags.get(ROLE) == "parent" for r in runs) == 1
    by_trial = {r.data.tags.get("trial_id"): r for r in runs if r.data.tags.get(ROLE) == "trial"}
    assert set(by_trial) == {"new_a", "old_b", "new_b"}, "old_a's empty run was adopted by new_a"
    assert by_trial["new_a"].info.run_name == run_name(a.config["arm"], a.config["seed"])
    for tid in ("new_a", "new_b"):
        r = by_trial[tid]
        assert r.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch/seen_acc")] == [1, 2, 3, 4]
    old = by_trial["old_b"]
    assert old.info.status == "KILLED" and old.data.tags["superseded"] == "true"


# --------------------------------------------------------------------------- gradmix-tune run
@pytest.mark.integration
def test_run_command_logs_a_run_without_parent(tmp_path, capsys):
    from gradmix_tune.cli import main

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["run", "--set", "data.tasks=2", "--set", "data.train_per_class=30", "--set", "data.test_per_class=20",
            "--set", "train.epochs=2", "--set", "method=gradmix", "--set", "memory.size=20",
            "--set", "model.hidden=[32]", "--set", "train.device=cpu", "--tracking-uri", uri]
    assert main(args) == 0
    out = capsys.readouterr().out
    c = client(uri)
    exp = c.get_experiment_by_name("gradmix-runs")
    (r,) = c.search_runs([exp.experiment_id])
    assert r.info.run_id in out and r.info.status == "FINISHED"
    assert PARENT not in r.data.tags and r.data.tags[ROLE] == "run"
    assert r.data.tags["method"] == "gradmix" and r.data.params["memory.size"] == "20"
    assert [m.step for m in c.get_metric_history(r.info.run_id, "task/avg_acc")] == [1, 2]
    assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch/seen_acc")] == [1, 2, 3, 4]
    assert r.info.run_name == "run gradmix seed=0"
    (ds,) = c.get_run(r.info.run_id).inputs.dataset_inputs
    profile = json.loads(ds.dataset.profile)
    assert ds.dataset.name == "digits" and profile["tasks"] == 2
    assert (profile["train_size"], profile["test_size"], profile["num_classes"]) == (300, 200, 10)
    assert len(profile["class_order"]) == 10 and profile["task_classes"][0] == profile["class_order"][:5]
    fa = r.data.metrics["final_avg_acc"]
    assert f"final average accuracy   {fa:.4f}" in out
    assert {"config.yaml", "accuracy_matrix.png", "s_matrix.png", "curve.png"} <= artifact_names(c, r.info.run_id)
    assert main(args + ["--set", "method=er", "--no-track", "--experiment", "other"]) == 0
    assert c.get_experiment_by_name("other") is None
    assert len(c.search_runs([exp.experiment_id])) == 1


def test_study_logger_pickles_by_reference_with_its_state():
    """A Tuner pickles its callbacks and a restored one unpickles them: small, by reference, the
    saved run ids and session kept, no writer (nor its temporary folder) carried along."""
    cb = StudyLogger(study_obj(), "sqlite:///x.db")
    state = {"parent": "p1", "runs": {"t1": "r1"}, "session": "s1"}
    cb.set_state(state)
    blob = pickle.dumps(cb)
    assert b"gradmix_tune.tracking.loggers" in blob and len(blob) < 20_000
    back = pickle.loads(blob)
    assert type(back) is StudyLogger and back.session == "s1" and back.info == cb.info
    assert back.get_state() == state and back._w is None and back.parent_run_id == "p1"


def test_study_logger_hooks_take_what_ray_tune_passes():
    """sweep/ makes its Tune callback as `class MlflowCallback(StudyLogger, Callback)`: every hook
    StudyLogger defines must accept the arguments Ray's Callback declares for it."""
    from ray.tune import Callback

    hooks = [n for n in vars(StudyLogger) if n.startswith("on_") or n in ("setup", "get_state", "set_state")]
    assert {"setup", "on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error",
            "on_experiment_end", "get_state", "set_state"} <= set(hooks)
    for name in hooks:
        ray_params = inspect.signature(getattr(Callback, name)).parameters
        ours = inspect.signature(getattr(StudyLogger, name)).parameters
        kinds = {p.kind for p in ours.values()}
        for p in ray_params.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            assert p.name in ours or inspect.Parameter.VAR_KEYWORD in kinds, (name, p.name)
    cls = type("MlflowCallback", (StudyLogger, Callback), {})
    cb = cls(study_obj(), "sqlite:///x.db")
    assert cls.on_trial_result is StudyLogger.on_trial_result and cls.setup is StudyLogger.setup
    assert cb.info["name"] == "tiny" and cb.get_state() is None


@pytest.mark.integration
def test_a_killed_run_is_ended_killed_by_its_logging_process(tmp_path):
    """`gradmix-tune run` logs from a child process (tracking/run_child.py): when the training
    process is SIGKILLed mid-run, the child sees its input end and marks the run KILLED, with the
    tasks logged so far; nothing stays RUNNING."""
    import signal
    import subprocess
    import sys

    import psutil

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", "run", "--set", "data.tasks=5",
                             "--set", "train.epochs=200", "--set", "memory.size=50", "--tracking-uri", uri],
                            cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first task is done (and sent): kill the trainer
            if line.startswith("task 1:"):
                break
        (logger,) = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    psutil.wait_procs([logger], timeout=60)  # it finishes the run on its own, then exits
    c = client(uri)
    (r,) = c.search_runs([c.get_experiment_by_name("gradmix-runs").experiment_id])
    assert r.info.status == "KILLED"
    assert [m.step for m in c.get_metric_history(r.info.run_id, "task/avg_acc")] == [1]
    assert "error.txt" in artifact_names(c, r.info.run_id)
