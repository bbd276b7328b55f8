"""Shared by tests/tracking and tests/report: a real (tiny) Ray Tune study tracked in MLflow.

One session-wide build (the `tracked_study` fixture of conftest.py) does what a sweep does: a
Tuner whose function trainable runs gradmix_tune.learner.run on digits and reports the results.py
dicts (with checkpoints), trial configs shaped as the sweep makes them, and two MLflow loggers
attached as Tune callbacks (a sqlite store and a real `mlflow server`). Session 1 has one trial that
always fails and one that crashes once; session 2 is Tuner.restore(resume_errored=True) after the
crash cause is removed: the crashed trial resumes from its checkpoint and finishes in the same
MLflow run. Nothing is mocked.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from itertools import product
from pathlib import Path

from ray.tune import Callback

from gradmix_tune.config import from_dict
from gradmix_tune.tracking import ROLE, StudyLogger

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
    """Trial configs as the sweep builds them: study, arm, seed, factors, config (+ test-only inject)."""
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


class TuneLogger(StudyLogger, Callback):
    """StudyLogger as a Ray Tune callback: what sweep/ does (tracking/ has no Ray)."""


def tune_loggers(study, uri: str) -> list:
    return [TuneLogger(study, uri)]


class Recorder(Callback):
    """Records what Ray's callbacks saw (top level: a restored Tuner unpickles it by reference)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        EVENTS.append((0, "result", trial, dict(result)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        EVENTS.append((0, "complete", trial, None))

    def on_trial_error(self, iteration, trials, trial, **info):
        EVENTS.append((0, "error", trial, None))


def study_obj(name=STUDY, experiment=None):
    """What the sweep passes to tracking: a Study (here a namespace with its fields)."""
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


def snapshot(uri: str) -> dict:
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
    """Build once per test session (tests/tracking and tests/report share it)."""
    if "built" in _SHARED:
        return _SHARED["built"]
    import ray
    from ray import tune

    # set for this build only: later tests in the process (test_ray_compat) read Ray's result.json
    saved_env = {k: os.environ.get(k) for k in ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "OMP_NUM_THREADS")}
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    b = Built(tmp_path_factory.mktemp("tracked"))
    b.server = Server(b.root)
    _SHARED["built"] = b
    marker = str(b.root / "crash-fixed")
    b.specs = specs = make_specs(marker)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        b.server.wait()
        callbacks = tune_loggers(study_obj(), b.sqlite_uri) + tune_loggers(study_obj(), b.server.uri) + [Recorder()]
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
        b.after_session1 = {k: snapshot(u) for k, u in b.uris.items()}
        Path(marker).write_text("fixed")
        EVENTS.append((0, "session2", None, None))
        tune.Tuner.restore(str(b.storage / STUDY), make_trainable(), resume_errored=True).fit()
        b.timings["both_sessions"] = time.monotonic() - t0
        print("build timings", b.timings, file=sys.stderr)
    finally:
        if started:
            ray.shutdown()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return b


# --------------------------------------------------------------------------- reading the stores
def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def runs_of(uri, experiment=STUDY):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, exp, c.search_runs([exp.experiment_id], max_results=1000)


def children_by_key(uri):
    c, exp, runs = runs_of(uri)
    parents = [r for r in runs if r.data.tags.get(ROLE) == "parent"]
    kids = {(r.data.tags["arm"], int(r.data.tags["seed"])): r for r in runs if r.data.tags.get(ROLE) == "trial"}
    return c, parents, kids


def split_sessions(events):
    """Recorded events per session (the restored Recorder is a copy, so a marker separates them)."""
    cut = next(i for i, e in enumerate(events) if e[1] == "session2")
    return events[:cut], events[cut + 1:]


def results_of(events, trial_id):
    """A trial's results as the driver got them, a task's epochs unpacked (results.unpack)."""
    from gradmix_tune.results import unpack

    return [x for _, ev, t, r in events if ev == "result" and t.trial_id == trial_id for x in unpack(r)]


def artifact_names(c, run_id, path=None):
    return {f.path.split("/")[-1] for f in c.list_artifacts(run_id, path)}


def download(uri, run_id, name, dst):
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst), tracking_uri=uri))


PNG = b"\x89PNG\r\n\x1a\n"
BACKENDS = ["sqlite", "server"]


# --------------------------------------------------------------------------- tests/sweep: studies run by run_study
SWEEP_BASE = """\
base:
  data: {name: digits, tasks: 3}
  model: {name: mlp, hidden: [32]}
  train: {epochs: 1, batch_size: 10, lr: 0.1}
  memory: {size: 60}
"""


def write_ablation(tmp_path: Path, name: str, text: str, base: str = SWEEP_BASE) -> Path:
    """tmp_path/<name>.yaml: `base` (SWEEP_BASE: 3 tasks of digits, a small MLP) + the dedented `text`."""
    import textwrap

    p = tmp_path / f"{name}.yaml"
    p.write_text(base + textwrap.dedent(text))
    return p


def sweep_cli_args(tmp_path: Path) -> list[str]:
    """--storage, --tracking-uri and --reports under tmp_path."""
    return ["--storage", str(tmp_path / "ray_results"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--reports", str(tmp_path / "reports")]


def rows(trial_dir: Path) -> list[dict]:
    """The result rows of a trial folder's result.json, a task's epochs unpacked (results.unpack),
    each with the pid, host and trial id Ray recorded on the row that carried it."""
    from gradmix_tune.results import unpack

    f = trial_dir / "result.json"
    out = []
    for line in f.read_text().splitlines() if f.exists() else []:
        if line.strip():
            row = json.loads(line)
            ray = {k: row[k] for k in ("pid", "hostname", "node_ip", "trial_id") if k in row}
            out += [{**ray, **x} for x in unpack(row)]
    return out


def trial_dirs(exp: Path) -> dict[str, Path]:
    """A study's trial folders (t<index>_<trial id>) by name."""
    return {d.name: d for d in sorted(exp.glob("t[0-9]*")) if d.is_dir()}


def reference(config: dict):
    """The same config and seed run directly by the learner (no Ray): the ground truth."""
    import torch

    from gradmix_tune.learner import run

    torch.set_num_threads(1)  # a trial with one CPU runs with one thread
    cfg = from_dict(json.loads(json.dumps(config)))
    cfg.train.device = "cpu"
    return run(cfg)


class Driver:
    """`gradmix-tune ARGS` as a user's background driver (a study), its output in tmp_path/driver.log:
    wait for a state of the study on disk, stop it with a signal, re-run it with --resume."""

    ROOT = Path(__file__).resolve().parents[1]

    def __init__(self, args: list[str], tmp_path: Path):
        self.args = [sys.executable, "-m", "gradmix_tune", *args]
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log_path = tmp_path / "driver.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, cwd=self.ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_until(self, check, timeout_s: float, what: str) -> None:
        """Poll `check()` until true; fails (with the driver's output) if the driver ends first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not check():
            assert self.proc.poll() is None, f"ended before {what}: " + self.output()[-3000:]
            assert time.monotonic() < deadline, f"not in {timeout_s:g} s: {what}\n" + self.output()[-3000:]
            time.sleep(0.05)

    def kill_when(self, check, timeout_s: float, what: str) -> None:
        """SIGKILL the driver the first time `check()` holds, checked while the driver is paused
        (SIGSTOP), so the study's saved state it is killed in is the one `check` saw."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"ended before {what}: " + self.output()[-3000:]
            assert time.monotonic() < deadline, f"not in {timeout_s:g} s: {what}\n" + self.output()[-3000:]
            self.proc.send_signal(signal.SIGSTOP)
            try:
                if check():
                    self.stop(signal.SIGKILL)
                    return
            finally:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGKILL, timeout_s: float = 120) -> int:
        """Send `sig` and wait for the driver's exit code (killed for good past the timeout)."""
        try:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def resume(self, timeout_s: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*self.args, "--resume"], cwd=self.ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
