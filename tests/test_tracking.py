"""MLflow tracking of a real (tiny) Ray Tune study, against a sqlite store and a real `mlflow server`.

One session-wide build (shared with test_report.py through `shared_study`) does what a sweep does:
a Tuner whose function trainable runs gradmix_tune.learner.run on digits and reports the
results.py dicts (with checkpoints), trial configs shaped as sweep.py makes them, and two
tracking callbacks attached (sqlite and server). Session 1 has one trial that always fails and
one that crashes once; session 2 is Tuner.restore(resume_errored=True) after the crash cause is
removed: the crashed trial resumes from its checkpoint and finishes in the same MLflow run.
Nothing is mocked.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from itertools import product
from pathlib import Path

import pytest
from ray.tune import Callback

from gradmix_tune import tracking
from gradmix_tune.config import flatten, from_dict

pytestmark = pytest.mark.integration

STUDY = "tiny"
BASE = {"data": {"name": "digits", "tasks": 2, "train_per_class": 30, "test_per_class": 20},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"batch_size": 10, "epochs": 2, "threads": 1, "device": "cpu"}}
GRID = {"method": ["er_mixup", "gradmix"], "memory.size": [20, 40]}
SEEDS = [0, 1, 2]
CRASH_ONCE = ("method=gradmix memory.size=20", 1)  # fails in session 1, resumed in session 2
ALWAYS_FAIL = ("method=gradmix memory.size=20", 7)  # fails in both sessions
ABLATION_YAML = f"name: {STUDY}\nbase: {json.dumps(BASE)}\ngrid: {json.dumps(GRID)}\nseeds: {SEEDS}\n"
EVENTS: list[tuple] = []  # (session, event, trial, result) recorded by Recorder (module level: survives pickling)


# --------------------------------------------------------------------------- the trials
def make_specs(marker: str) -> list[dict]:
    """Trial configs as sweep.py builds them: study, arm, seed, factors, config (+ test-only inject)."""
    specs, failing = [], []
    for values in product(*GRID.values()):
        factors = dict(zip(GRID, values))
        arm = " ".join(f"{k}={v}" for k, v in factors.items())
        for seed in SEEDS + ([ALWAYS_FAIL[1]] if arm == ALWAYS_FAIL[0] else []):
            data = json.loads(json.dumps(BASE))
            data["method"] = factors["method"]
            data.setdefault("memory", {})["size"] = factors["memory.size"]
            data["seed"] = seed
            inject = None
            if (arm, seed) == CRASH_ONCE:
                inject = {"at_global_epoch": 3, "unless": marker}
            elif (arm, seed) == ALWAYS_FAIL:
                inject = {"at_global_epoch": 3}
            (failing if inject else specs).append({"study": STUDY, "arm": arm, "seed": seed, "factors": factors,
                                                   "config": from_dict(data).to_dict(), "inject": inject})
    # the failing trials last: a failed trial's actor is not reused, and starting one takes seconds
    return [dict(s, index=i) for i, s in enumerate(specs + failing)]


def make_trainable():
    """The sweep's trainable in miniature: results.py dicts, a checkpoint after every task. A
    closure, so Ray ships it by value and workers need not import this test module."""

    def trainable(config):
        import os
        import tempfile

        import torch
        from ray import tune

        from gradmix_tune import results
        from gradmix_tune.config import from_dict
        from gradmix_tune.learner import Hooks, run

        cfg = from_dict(config["config"])
        inject = config.get("inject")
        state, last = None, [float("nan")]
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
            last[0] = state["tasks"][-1]["avg_acc"]

        def on_epoch(rec):
            tune.report(results.epoch_result(rec, last[0]))
            if inject and rec.global_epoch == inject["at_global_epoch"] and \
                    not (inject.get("unless") and os.path.exists(inject["unless"])):
                raise RuntimeError(f"injected failure at global epoch {rec.global_epoch}")

        def on_task(rec, learner):
            last[0] = rec.avg_acc
            with tempfile.TemporaryDirectory() as d:
                torch.save(learner.state_dict(), os.path.join(d, "state.pt"))
                tune.report(results.task_result(rec, learner), checkpoint=tune.Checkpoint.from_directory(d))

        run(cfg, Hooks(on_epoch=on_epoch, on_task=on_task), resume=state)

    return trainable


class Recorder(Callback):
    """Records what Ray's callbacks saw (top level: a restored Tuner unpickles it by reference)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        EVENTS.append((0, "result", trial, dict(result)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        EVENTS.append((0, "complete", trial, None))

    def on_trial_error(self, iteration, trials, trial, **info):
        EVENTS.append((0, "error", trial, None))


def study_obj(name=STUDY, experiment=None):
    """What sweep.py passes to tracking: a Study (here a namespace with its fields)."""
    return types.SimpleNamespace(name=name, experiment=experiment or name, path=f"ablations/{name}.yaml",
                                 raw_text=ABLATION_YAML, grid=GRID, seeds=SEEDS, metric="final_avg_acc",
                                 mode="max", trials=[], storage_path="", tracking_uri="")


# --------------------------------------------------------------------------- the mlflow server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--default-artifact-root", str(root / "server-artifacts"),
             "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


# --------------------------------------------------------------------------- the shared build
class Built:
    def __init__(self, root: Path):
        self.root = root
        self.sqlite_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.server: Server | None = None
        self.storage = root / "ray_results"
        self.specs: list[dict] = []
        self.after_session1: dict = {}
        self.events = EVENTS
        self.t0 = time.monotonic()
        self.timings: dict = {}

    @property
    def uris(self) -> dict:
        return {"sqlite": self.sqlite_uri, "server": self.server.uri}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


_SHARED: dict = {}


def _snapshot(uri: str) -> dict:
    """Per run: status, parent and the (step, value) history of every metric."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(STUDY)
    out = {}
    for r in c.search_runs([exp.experiment_id], max_results=1000):
        hist = {k: sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, k)) for k in r.data.metrics}
        out[r.info.run_id] = {"status": r.info.status, "tags": dict(r.data.tags), "hist": hist,
                              "params": dict(r.data.params)}
    return out


def shared_study(tmp_path_factory) -> Built:
    """Build once per test session (test_tracking and test_report share it)."""
    if "built" in _SHARED:
        return _SHARED["built"]
    import ray
    from ray import tune

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    b = Built(tmp_path_factory.mktemp("tracked"))
    b.server = Server(b.root)
    _SHARED["built"] = b
    marker = str(b.root / "crash-fixed")
    b.specs = specs = make_specs(marker)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        b.server.wait()
        callbacks = (tracking.sweep_callbacks(study_obj(), b.sqlite_uri)
                     + tracking.sweep_callbacks(study_obj(), b.server.uri) + [Recorder()])
        space = {"study": STUDY,
                 "index": tune.grid_search(list(range(len(specs)))),
                 "arm": tune.sample_from(lambda s: specs[s.config["index"]]["arm"]),
                 "seed": tune.sample_from(lambda s: specs[s.config["index"]]["seed"]),
                 "factors": tune.sample_from(lambda s: specs[s.config["index"]]["factors"]),
                 "config": tune.sample_from(lambda s: specs[s.config["index"]]["config"]),
                 "inject": tune.sample_from(lambda s: specs[s.config["index"]]["inject"])}
        tuner = tune.Tuner(make_trainable(), param_space=space,
                           tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=2),
                           run_config=tune.RunConfig(name=STUDY, storage_path=str(b.storage), callbacks=callbacks,
                                                     verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        b.timings["setup"] = time.monotonic() - b.t0
        t0 = time.monotonic()
        tuner.fit()
        b.timings["session1"] = time.monotonic() - t0
        b.after_session1 = {k: _snapshot(u) for k, u in b.uris.items()}
        Path(marker).write_text("fixed")
        EVENTS.append((0, "session2", None, None))
        tune.Tuner.restore(str(b.storage / STUDY), make_trainable(), resume_errored=True).fit()
        b.timings["both_sessions"] = time.monotonic() - t0
        print("build timings", b.timings, file=sys.stderr)
    finally:
        if started:
            ray.shutdown()
    return b


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    b = shared_study(tmp_path_factory)
    yield b
    b.stop()


# --------------------------------------------------------------------------- helpers
def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def runs_of(uri, experiment=STUDY):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, exp, c.search_runs([exp.experiment_id], max_results=1000)


def children_by_key(uri):
    c, exp, runs = runs_of(uri)
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE) == "parent"]
    kids = {(r.data.tags["arm"], int(r.data.tags["seed"])): r for r in runs if r.data.tags.get(tracking.ROLE) == "trial"}
    return c, parents, kids


def split_sessions(events):
    """Recorded events per session (the restored Recorder is a copy, so a marker separates them)."""
    cut = next(i for i, e in enumerate(events) if e[1] == "session2")
    return events[:cut], events[cut + 1:]


def results_of(events, trial_id):
    return [r for _, ev, t, r in events if ev == "result" and t.trial_id == trial_id]


def artifact_names(c, run_id, path=None):
    return {f.path.split("/")[-1] for f in c.list_artifacts(run_id, path)}


def download(uri, run_id, name, dst):
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst), tracking_uri=uri))


PNG = b"\x89PNG\r\n\x1a\n"
BACKENDS = ["sqlite", "server"]


# --------------------------------------------------------------------------- tests
def test_resolve_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert tracking.resolve_tracking_uri() == "http://h:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_module_imports_neither_ray_nor_mlflow():
    code = ("import sys, gradmix_tune.tracking, gradmix_tune.report, gradmix_tune.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('ray', 'mlflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_parent_and_nested_children(built, backend):
    c, parents, kids = children_by_key(built.uris[backend])
    assert len(parents) == 1, "a resumed study must reuse its parent run"
    p = parents[0]
    t = p.data.tags
    assert t["study"] == STUDY and t["ablation"] == f"ablations/{STUDY}.yaml"
    assert t["git_commit"] and t["command"] and t["metric"] == "final_avg_acc"
    assert json.loads(t["grid"]) == GRID
    assert p.info.status == "FINISHED"
    assert "ablation.yaml" in artifact_names(c, p.info.run_id)
    _, _, runs = runs_of(built.uris[backend])
    trial_runs = [r for r in runs if r.data.tags.get(tracking.ROLE) == "trial"]
    assert len(trial_runs) == len(built.specs) == len(kids), "one child run per trial, no duplicates"
    for (arm, seed), r in kids.items():
        assert r.data.tags[tracking.PARENT] == p.info.run_id
        assert r.info.run_name == f"{arm} seed={seed}"
    assert len({r.data.tags["trial_id"] for r in trial_runs}) == len(trial_runs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_and_tags(built, backend):
    _, _, kids = children_by_key(built.uris[backend])
    for spec in built.specs:
        r = kids[(spec["arm"], spec["seed"])]
        expected = {k: tracking._param_value(v) for k, v in flatten(spec["config"]).items()}
        assert r.data.params == expected
        t = r.data.tags
        assert (t["study"], t["arm"], t["seed"], t["method"]) == (STUDY, spec["arm"], str(spec["seed"]),
                                                                 spec["factors"]["method"])
        assert json.loads(t["factors"]) == spec["factors"]
        assert t["factor.memory.size"] == str(spec["factors"]["memory.size"])
        assert t["trial_id"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_metric_histories_have_the_right_steps_and_values(built, backend):
    c, _, kids = children_by_key(built.uris[backend])
    s1, s2 = split_sessions(built.events)
    for spec in built.specs:
        key = (spec["arm"], spec["seed"])
        if key == ALWAYS_FAIL:
            continue
        r = kids[key]
        rid = r.info.run_id
        h = {k: [(m.step, m.value) for m in sorted(c.get_metric_history(rid, k), key=lambda m: m.step)]
             for k in ("acc_task_0", "acc_task_1", "avg_acc", "seen_acc", "loss", "epoch_time_s")}
        assert [s for s, _ in h["acc_task_0"]] == [1, 2]
        assert [s for s, _ in h["acc_task_1"]] == [2]
        assert [s for s, _ in h["avg_acc"]] == [1, 2]
        assert [s for s, _ in h["seen_acc"]] == [1, 2, 3, 4] == [s for s, _ in h["loss"]]
        assert [(m.step, m.value) for m in sorted(c.get_metric_history(rid, "task"), key=lambda m: m.step)] == \
            [(1, 0), (2, 0), (3, 1), (4, 1)]
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
            assert len(hist) == 1 and hist[0].step == 2
            assert hist[0].value == pytest.approx(final[k], abs=1e-12)
        acc = json.loads(final["accuracy_matrix"])
        assert r.data.metrics["final_avg_acc"] == pytest.approx(sum(acc[-1]) / len(acc[-1]))
        if spec["factors"]["method"] == "gradmix":
            assert "frac_mixed" in r.data.metrics and "frac_pairs_helpful" in r.data.metrics
            assert [m.step for m in c.get_metric_history(rid, "frac_mixed")] == [1, 2, 3, 4]
        assert r.info.status == "FINISHED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifacts_drawn_on_the_driver(built, backend, tmp_path):
    import yaml
    from matplotlib.image import imread

    c, _, kids = children_by_key(built.uris[backend])
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
        p = download(built.uris[backend], r.info.run_id, name, d)
        assert p.read_bytes()[:8] == PNG
        assert imread(str(p)).shape[0] > 50
    cfg = yaml.safe_load(download(built.uris[backend], r.info.run_id, "config.yaml", d).read_text())
    spec = next(s for s in built.specs if (s["arm"], s["seed"]) == ("method=gradmix memory.size=40", 0))
    assert cfg == spec["config"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_trial_ends_failed_with_its_error(built, backend, tmp_path):
    c, _, kids = children_by_key(built.uris[backend])
    r = kids[ALWAYS_FAIL]
    assert r.info.status == "FAILED"
    assert "injected failure at global epoch 3" in r.data.tags["error"]
    assert "error.txt" in artifact_names(c, r.info.run_id)
    assert "injected failure" in download(built.uris[backend], r.info.run_id, "error.txt", tmp_path).read_text()
    # it failed in both sessions, reporting epoch 3 each time: logged once
    assert [m.step for m in c.get_metric_history(r.info.run_id, "seen_acc")] == [1, 2, 3]
    assert "final_avg_acc" not in r.data.metrics


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_reuses_the_runs_and_continues_the_metrics(built, backend):
    before = built.after_session1[backend]
    c, parents, kids = children_by_key(built.uris[backend])
    crashed = kids[CRASH_ONCE]
    rid = crashed.info.run_id
    assert before[rid]["status"] == "FAILED", "session 1 ended the crashed trial's run FAILED"
    assert [s for s, _ in before[rid]["hist"]["seen_acc"]] == [1, 2, 3]
    assert "final_avg_acc" not in before[rid]["hist"]
    # session 2: same run, finished, epoch 3 reported again but logged once, task 2 added
    assert crashed.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(rid, "seen_acc")] == [1, 2, 3, 4]
    assert [m.step for m in c.get_metric_history(rid, "acc_task_0")] == [1, 2]
    assert len(c.get_metric_history(rid, "final_avg_acc")) == 1
    assert set(before) == {r.info.run_id for r in runs_of(built.uris[backend])[2]}, "no new runs on resume"
    s1, s2 = split_sessions(built.events)
    resumed = {t.trial_id for _, ev, t, _ in s2 if ev in ("complete", "error")}
    assert resumed == {crashed.data.tags["trial_id"], kids[ALWAYS_FAIL].data.tags["trial_id"]}
    s2_epochs = [x["global_epoch"] for x in results_of(s2, crashed.data.tags["trial_id"]) if x["kind"] == "epoch"]
    assert s2_epochs == [3, 4], "the resumed trial restarted from its task-1 checkpoint"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fresh_callback_with_resume_adds_nothing(built, backend):
    """A new sweep session (new callback, resume=True) replaying the same trials' events:
    the parent is found by its study tag, children by trial id; no run or metric is added."""
    uri = built.uris[backend]
    before = _snapshot(uri)
    s1, s2 = split_sessions(built.events)
    last_session = {}  # trial id -> its events in the last session it ran in
    for events in (s1, s2):
        ids = {e[2].trial_id for e in events if e[2] is not None}
        for tid in ids:
            last_session[tid] = [e for e in events if e[2] is not None and e[2].trial_id == tid]
    # the resumed, the failed and two finished trials (every trial would only take longer)
    crashed_or_failed = {t.trial_id for _, ev, t, _ in s2 if ev in ("complete", "error")}
    finished = [tid for tid in last_session if tid not in crashed_or_failed][:2]
    cb = tracking.StudyLogger(study_obj(), uri, resume=True)
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
    after = _snapshot(uri)
    assert set(after) == set(before)
    for rid in before:
        assert after[rid]["status"] == before[rid]["status"]
        assert after[rid]["hist"] == before[rid]["hist"], after[rid]["tags"].get("mlflow.runName")
        assert after[rid]["params"] == before[rid]["params"]


def test_resume_adopts_or_retires_the_runs_of_trials_ray_created_again(built, tmp_path):
    """Driver killed before Ray saved a trial: the resumed study creates it again with a new id.
    Its old run is adopted when it holds no metrics, else ended KILLED and marked superseded."""
    uri = f"sqlite:///{tmp_path / 'z.db'}"
    s1, _ = split_sessions(built.events)
    a, b = [t for _, ev, t, _ in s1 if ev == "complete"][:2]
    res = {t.trial_id: results_of(s1, t.trial_id) for t in (a, b)}

    def fake(tid, like):
        return types.SimpleNamespace(trial_id=tid, config=like.config, status="TERMINATED", error_file=None)

    cb1 = tracking.StudyLogger(study_obj("zombies"), uri)
    cb1.setup()
    cb1.trial_start(fake("old_a", a))  # killed before it reported anything
    cb1.trial_start(fake("old_b", b))
    cb1.trial_result(fake("old_b", b), res[b.trial_id][0])  # killed after one epoch
    assert cb1.writer.flush()  # ... and the driver dies here: no end events
    cb2 = tracking.StudyLogger(study_obj("zombies"), uri, resume=True)
    cb2.setup()
    new = [fake("new_a", a), fake("new_b", b)]
    for t, like in zip(new, (a, b)):
        cb2.trial_start(t)
        for r in res[like.trial_id]:
            cb2.trial_result(t, r)
        cb2.trial_complete(t)
    cb2.experiment_end(new)
    c, exp, runs = runs_of(uri, "zombies")
    assert sum(r.data.tags.get(tracking.ROLE) == "parent" for r in runs) == 1
    by_trial = {r.data.tags.get("trial_id"): r for r in runs if r.data.tags.get(tracking.ROLE) == "trial"}
    assert set(by_trial) == {"new_a", "old_b", "new_b"}, "old_a's empty run was adopted by new_a"
    assert by_trial["new_a"].info.run_name == f"{a.config['arm']} seed={a.config['seed']}"
    for tid in ("new_a", "new_b"):
        r = by_trial[tid]
        assert r.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "seen_acc")] == [1, 2, 3, 4]
    old = by_trial["old_b"]
    assert old.info.status == "KILLED" and old.data.tags["superseded"] == "true"


def test_callback_pickles_by_reference():
    import ray.cloudpickle as cp

    cb = tracking.sweep_callbacks(study_obj(), "sqlite:///x.db")[0]
    blob = cp.dumps(cb)
    assert b"gradmix_tune.tracking" in blob and len(blob) < 20_000
    back = cp.loads(blob)
    assert type(back) is type(cb) and back.session == cb.session and back.info == cb.info


# --------------------------------------------------------------------------- an unreachable server
class Forwarder:
    """TCP forwarder 127.0.0.1:port -> the real server: 'the server comes back'."""

    def __init__(self, port: int, target: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y):
        try:
            while data := x.recv(65536):
                y.sendall(data)
        except OSError:
            pass
        finally:
            for s in (x, y):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_unreachable_server_queues_then_flushes(built, caplog):
    """Training goes on while MLflow is down; the queue is sent when it answers again."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    s1, s2 = split_sessions(built.events)
    done = next(t for _, ev, t, _ in s1 if ev == "complete")
    events = [r for _, ev, t, r in s1 if ev == "result" and t.trial_id == done.trial_id]
    trial = types.SimpleNamespace(trial_id="offline_00000", config=done.config, status="TERMINATED", error_file=None)
    cb = tracking.StudyLogger(study_obj("offline"), uri)
    with caplog.at_level(logging.WARNING, logger="gradmix_tune.tracking"):
        t0 = time.monotonic()
        cb.setup()
        cb.trial_start(trial)
        for r in events:
            cb.trial_result(trial, r)
        cb.trial_complete(trial)
        assert time.monotonic() - t0 < 30, "an unreachable server must not hold training up"
        assert "is unavailable" in caplog.text
        assert len(cb.writer.pending) > 5
        fwd = Forwarder(port, built.server.port)
        try:
            cb.experiment_end([trial])
        finally:
            fwd.close()
        assert "answers again" in caplog.text
    assert cb.spill is None and not cb.writer.pending
    c = client(built.server.uri)
    exp = c.get_experiment_by_name("offline")
    runs = c.search_runs([exp.experiment_id])
    kid = next(r for r in runs if r.data.tags.get(tracking.ROLE) == "trial")
    parent = next(r for r in runs if r.data.tags.get(tracking.ROLE) == "parent")
    assert kid.data.tags[tracking.PARENT] == parent.info.run_id and kid.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(kid.info.run_id, "seen_acc")] == [1, 2, 3, 4]
    assert {"accuracy_matrix.png", "curve.png", "config.yaml"} <= artifact_names(c, kid.info.run_id)


def test_unsent_entries_are_kept_in_a_file(caplog):
    port = free_port()
    cb = tracking.StudyLogger(study_obj("never"), f"http://127.0.0.1:{port}")
    cb.close_wait_s = 1.0
    trial = types.SimpleNamespace(trial_id="x_00000", config={"arm": "a", "seed": 0, "factors": {}, "config": {}},
                                  status="TERMINATED", error_file=None)
    with caplog.at_level(logging.WARNING, logger="gradmix_tune.tracking"):
        cb.setup()
        cb.trial_start(trial)
        cb.trial_result(trial, {"kind": "epoch", "global_epoch": 1, "task": 0, "seen_acc": 0.5, "loss": 1.0})
        cb.experiment_end([trial])
    assert cb.spill and os.path.isfile(cb.spill)
    ops = [json.loads(line) for line in Path(cb.spill).read_text().splitlines()]
    assert [o["op"] for o in ops][:2] == ["run", "artifact"]
    assert any(o["op"] == "log" and o["payload"]["metrics"][0][:2] == ["seen_acc", 0.5] for o in ops)
    assert "were not sent" in caplog.text
    shutil.rmtree(os.path.dirname(cb.spill), ignore_errors=True)


# --------------------------------------------------------------------------- gradmix-tune run
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
    assert tracking.PARENT not in r.data.tags and r.data.tags[tracking.ROLE] == "run"
    assert r.data.tags["method"] == "gradmix" and r.data.params["memory.size"] == "20"
    assert [m.step for m in c.get_metric_history(r.info.run_id, "avg_acc")] == [1, 2]
    assert [m.step for m in c.get_metric_history(r.info.run_id, "seen_acc")] == [1, 2, 3, 4]
    fa = r.data.metrics["final_avg_acc"]
    assert f"final average accuracy   {fa:.4f}" in out
    assert {"config.yaml", "accuracy_matrix.png", "s_matrix.png", "curve.png"} <= artifact_names(c, r.info.run_id)
    assert main(args + ["--set", "method=er", "--no-track", "--experiment", "other"]) == 0
    assert c.get_experiment_by_name("other") is None
    assert len(c.search_runs([exp.experiment_id])) == 1
