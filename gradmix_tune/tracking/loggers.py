"""The MLflow loggers: StudyLogger (a sweep's parent and child runs) and RunLogger (one `gradmix-tune run`).

    parent run (tags: study, ablation, git commit, command; artifact ablation.yaml)
      child run per trial, name "<arm> seed=<seed>"
        params   the flattened experiment config (config.flatten)
        tags     study, arm, seed, method, trial_id, factors (JSON) and factor.<key>
        metrics and artifacts as runlog.py logs them, plus config.yaml

Resuming reuses runs: the parent is found again through the logger's saved state (Ray restores it
with the experiment), its session tag (a restored Tuner unpickles the same logger) or, with
resume=True, the latest parent tagged with the study; children are found by their trial_id tag.
Each child records how far its metrics got (tag gradmix.steps), so results that a resumed trial
reports again are not logged twice.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from ..config import flatten
from ..results import epoch_result, task_result, unpack
from .runlog import RunLog
from .store import NOTE, arms_view, data_key, dataset_input, question_of
from .store import ALLOW_TEST_METRIC, DEFAULT_RUN_EXPERIMENT, PHASE_TAGS, ROLE, SESSION, method_of, \
    resolve_tracking_uri, short, source_tags, study_info
from .writer import Writer

log = logging.getLogger(__name__)

EPOCH_FLUSH_S = 5.0  # epoch metrics of a sweep's trials are sent at least this often


def _guarded(fn):
    """Tracking must never stop training: an unexpected error becomes a warning."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow tracking failed in %s (training goes on): %s", fn.__name__, short(e))
            return None

    return wrapper


class StudyLogger:
    """The MLflow side of a sweep, independent of Ray: a parent run for the study, a child run per
    trial. It only reads `trial.trial_id`, `trial.config`, `trial.status` and `trial.error_file`.

    Its `setup`, `on_trial_*`, `on_experiment_end`, `get_state` and `set_state` have the
    signatures of Ray Tune's Callback hooks, so sweep/ makes the driver-side callback with
    `class MlflowCallback(StudyLogger, ray.tune.Callback)` and nothing else."""

    def __init__(self, study, tracking_uri: str | None = None, resume: bool = False, phase: str = ""):
        self.info = study_info(study)
        # a study's second Ray run (sweep/protocol.py: phase "evaluate") logs under the same parent;
        # its end-of-run counts go to the parent as evaluate_trials_total etc., beside the first's
        self.phase = phase
        self.uri = resolve_tracking_uri(tracking_uri)
        self.resume = bool(resume)
        self.session = uuid.uuid4().hex
        self.command = " ".join(sys.argv)
        self._saved: dict = {}
        self._w: Writer | None = None
        self._runs: dict[str, RunLog] = {}
        self.spill: str | None = None
        self.spill_dir: str | None = None  # where unsent entries go (the sweep: its results folder)
        self.datasets: dict[str, dict] = {}  # store.data_key(data section) -> data.describe(): log_input
        # how long the end of a sweep waits for an unreachable MLflow before keeping what is left
        self.close_wait_s = float(os.environ.get("GRADMIX_MLFLOW_WAIT_S") or 20.0)
        self._closed = False

    # pickling (a Tuner pickles its callbacks; a restored Tuner unpickles them)
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_w", "_runs")}
        state["_saved"] = self.get_state() or self._saved
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._w, self._runs = None, {}

    @property
    def writer(self) -> Writer:
        if self._w is None:
            w = self._w = Writer(self.uri, self.info["experiment"], spill_dir=getattr(self, "spill_dir", None))
            w.experiment_tags.update([arms_view(self.info["metric"])])  # the UI's "grouped by arm" link
            w.hints.update({k: v for k, v in (self._saved.get("runs") or {}).items()})
            if self._saved.get("parent"):
                w.hints["parent"] = self._saved["parent"]
            info = self.info
            find = {"study": info["name"], ROLE: "parent"} if self.resume else {SESSION: self.session}
            tags = {"study": info["name"], ROLE: "parent", SESSION: self.session,
                    "ablation": info["path"], "metric": info["metric"], "mode": info["mode"],
                    "grid": json.dumps(info["grid"], default=str), "seeds": json.dumps(info["seeds"]),
                    **source_tags(self.command)}
            if info["allow_test_metric"]:
                tags[ALLOW_TEST_METRIC] = "true"
            question = question_of(info["raw_text"])
            if question:  # the UI's description of the run; the report replaces it with question + findings
                tags[NOTE] = (f"**Question:** {question}\n\nThe findings appear here when the study's report is "
                              f"built (at its end, or `gradmix-tune report {info['name']} --log-to-parent`).")
            w.put("run", "parent", {"name": info["name"], "tags": tags, "find": find})
            if info["raw_text"]:
                w.put("artifact", "parent", {"file": w.file("ablation.yaml", info["raw_text"]), "tmp": True})
        return self._w

    def get_state(self) -> dict | None:
        if self._w is None:
            return self._saved or None
        runs = {k: v for k, v in self._w.run_ids.items() if k != "parent"}
        return {"parent": self._w.run_ids.get("parent"), "runs": runs, "session": self.session}

    def set_state(self, state: dict) -> None:
        self._saved = dict(state or {})
        if self._saved.get("session"):
            self.session = self._saved["session"]
        if self._w is not None:  # rare: state arrives after the writer was made
            self._w.hints.update(self._saved.get("runs") or {})
            if self._saved.get("parent"):
                self._w.hints["parent"] = self._saved["parent"]

    # trial events
    def _run(self, trial, reopen: bool = False) -> RunLog:
        tid = str(trial.trial_id)
        rl = self._runs.get(tid)
        if rl is not None:
            if reopen and rl.ended:
                self.writer.put("run", tid, self._spec(trial))
                rl.ended = None
            return rl
        rl = self._runs[tid] = RunLog(self.writer, tid)
        self.writer.put("run", tid, self._spec(trial))
        cfg = self._config(trial)
        if cfg:
            self.writer.put("artifact", tid, {"file": self.writer.file("config.yaml", yaml.safe_dump(
                cfg, sort_keys=False)), "tmp": True})
            info = (getattr(self, "datasets", None) or {}).get(data_key(cfg.get("data") or {}))
            if info:
                self.writer.put("input", tid, dataset_input(info))
        return rl

    @staticmethod
    def _config(trial) -> dict:
        c = trial.config or {}
        return c["config"] if isinstance(c.get("config"), dict) else {}

    def _spec(self, trial) -> dict:
        c = trial.config or {}
        cfg = self._config(trial)
        factors = c.get("factors") if isinstance(c.get("factors"), dict) else {}
        seed = c.get("seed", cfg.get("seed", ""))
        arm = str(c.get("arm") or " ".join(f"{k}={v}" for k, v in factors.items()) or trial.trial_id)
        tags = {"study": c.get("study") or self.info["name"], "arm": arm, "seed": seed,
                "method": method_of(factors, cfg), "trial_id": trial.trial_id, ROLE: "trial",
                "factors": json.dumps(factors, default=str), **source_tags(self.command)}
        tags.update({f"factor.{k}": v for k, v in factors.items()})
        tags.update({k: c[k] for k in PHASE_TAGS if c.get(k) not in (None, "")})  # a study that selects
        params = flatten(cfg) if cfg else {k: v for k, v in c.items() if not isinstance(v, dict)}
        others = [t for t in arm.split() if not t.startswith("method=") and t not in ("base", tags["method"])]
        name = " ".join([tags["method"], *others, f"seed={seed}"])  # e.g. "er memory.size=100 seed=0"
        return {"parent": "parent", "name": name, "tags": tags, "params": params,
                "find": {"trial_id": trial.trial_id}, "adopt": {"arm": arm, "seed": seed}}

    @_guarded
    def setup(self, **info) -> None:
        self.writer  # noqa: B018 - queue the parent run now
        self.writer.flush()

    @_guarded
    def trial_start(self, trial) -> None:
        self._run(trial, reopen=True)
        self.writer.flush()

    @_guarded
    def trial_result(self, trial, result: dict) -> None:
        rl = self._run(trial, reopen=True)
        for r in unpack(result):  # a task's result carries its epochs' (results.with_epochs)
            rl.result(r)
        # Ray waits for the driver's callbacks before a trial goes on, and one MLflow write costs
        # tens of ms (a sqlite transaction, an HTTP call): an epoch's metrics wait for the task's
        # result (or EPOCH_FLUSH_S), so a task costs one write, not one per epoch. A task's result
        # carries its checkpoint and is sent before Ray registers that checkpoint: a driver killed
        # meanwhile loses only epochs that the resumed trial reports again (logged then).
        now = time.monotonic()
        if result.get("kind") != "epoch" or now - getattr(self, "_flushed_at", 0.0) >= EPOCH_FLUSH_S:
            self.writer.flush()
            self._flushed_at = now

    @_guarded
    def trial_complete(self, trial) -> None:
        rl = self._run(trial)
        self._safe_figures(rl)
        rl.end("FINISHED")
        self.writer.flush()

    @_guarded
    def trial_error(self, trial) -> None:
        rl = self._run(trial)
        err = None
        try:
            path = getattr(trial, "error_file", None)
        except Exception:  # noqa: BLE001 - Ray's path lookups need a live Ray
            path = None
        if path and os.path.isfile(path):
            try:
                err = Path(path).read_text(errors="replace")
            except OSError:
                err = None
        self._safe_figures(rl)
        rl.end("FAILED", err)
        self.writer.flush()

    def _safe_figures(self, rl: RunLog) -> None:
        try:
            self.writer.flush()  # so a resumed run's earlier epochs can be read back
            rl.figures()
        except Exception as e:  # noqa: BLE001 - a plot must never fail a trial
            log.warning("could not draw the figures of trial %s: %s", rl.key, short(e))

    @_guarded
    def experiment_end(self, trials: list) -> None:
        failed, unfinished = 0, 0
        for t in trials or []:
            status = getattr(t, "status", "")
            rl = self._runs.get(str(t.trial_id))
            if status == "ERROR":
                failed += 1
            # Ctrl-C / SIGTERM: Ray stops the running trials (and marks them TERMINATED) without their
            # on_trial_complete, so a run not ended here did not finish: KILLED, reopened by a resume
            cut = rl is not None and rl.ended is None
            if cut:
                rl.end("KILLED")
            unfinished += cut or status not in ("TERMINATED", "ERROR")
        w = self.writer
        pre = f"{self.phase}_" if getattr(self, "phase", "") else ""
        w.put("log", "parent", {"metrics": [], "tags": {f"{pre}trials_total": len(trials or []),
                                                       f"{pre}trials_failed": failed,
                                                       f"{pre}trials_unfinished": unfinished}})
        w.put("retire", "parent", {"live": [str(t.trial_id) for t in trials or []]})
        w.put("end", "parent", {"status": "KILLED" if unfinished else "FINISHED"})  # a resume reopens it
        self.close()

    def close(self) -> None:
        if self._w is not None and not getattr(self, "_closed", False):
            self._closed = True
            self.spill = self._w.close(self.close_wait_s)

    def abort(self) -> None:
        """The driver stops without Ray's experiment end (a second Ctrl-C, a signal while Ray starts):
        the runs still open end KILLED (a resume reopens them) and what is queued is sent or kept."""
        if self._w is None or getattr(self, "_closed", False):
            return
        for rl in self._runs.values():
            if rl.ended is None:
                rl.end("KILLED")
        self._w.put("end", "parent", {"status": "KILLED"})
        self.close()

    @property
    def parent_run_id(self) -> str | None:
        return self._w.run_ids.get("parent") if self._w else self._saved.get("parent")

    # Ray Tune's Callback hooks (sweep/'s MlflowCallback inherits them)
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trial_start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.trial_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.trial_error(trial)

    def on_experiment_end(self, trials, **info) -> None:
        self.experiment_end(trials)


_CHILD: list = []  # the logging process started ahead of its run (start_run_child)


def start_run_child() -> None:
    """Start the process that will log this `gradmix-tune run` (run_child.py), now: `gradmix-tune
    run` calls it before importing torch and loading its data, so the child imports mlflow and
    matplotlib on the other core meanwhile. Touches no tracking store until the run opens (a run
    that fails to load its data leaves nothing behind). Idempotent."""
    if _CHILD:
        return
    # its own session: a Ctrl-C of the training process reaches it as an "end KILLED" message,
    # not as a signal that would cut the run's last writes short
    _CHILD.append(subprocess.Popen([sys.executable, "-m", "gradmix_tune.tracking.run_child"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, start_new_session=True))


def _jsonable(o):
    return o.item() if hasattr(o, "item") else str(o)


class RunLogger:
    """Logs one `gradmix-tune run` (no parent) the way a trial is logged: use `on_epoch` and
    `on_task` as learner Hooks, then `end(status)`.

    All MLflow work happens in a child process (run_child.py: importing mlflow, opening the store,
    drawing the figures take seconds of Python that would compete with training for the GIL):
    training only computes the small result dicts and writes them to the child's stdin."""

    def __init__(self, cfg, tracking_uri: str | None = None, experiment: str | None = None,
                 config_path: str | None = None, command: str | None = None, dataset: dict | None = None,
                 spill_dir: str | None = "mlflow-unsent"):
        """`dataset`: data.describe() of the run's data (logged with mlflow.log_input); `spill_dir`:
        where what MLflow did not take is kept (unsent.jsonl, for `gradmix-tune tracking replay`)."""
        cfgd = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment or DEFAULT_RUN_EXPERIMENT
        self._last_avg = float("nan")
        self._run_id: str | None = None
        method = method_of({}, cfgd)
        name = f"{Path(config_path).stem if config_path else 'run'} {method} seed={cfgd.get('seed', 0)}"
        session = uuid.uuid4().hex  # found again by it: a replay of unsent entries makes no second run
        tags = {ROLE: "run", "method": method, "seed": cfgd.get("seed", 0), "config_file": config_path or "",
                SESSION: session, **source_tags(command)}
        start_run_child()
        self._child = _CHILD.pop()
        self._send({"open": {"uri": self.uri, "experiment": self.experiment,
                             "spill_dir": os.path.abspath(spill_dir) if spill_dir else None,
                             "name": name, "tags": tags, "params": flatten(cfgd), "find": {SESSION: session},
                             "config_yaml": yaml.safe_dump(cfgd, sort_keys=False),
                             "dataset": dataset_input(dataset) if dataset else None}})

    def _send(self, msg: dict) -> None:
        try:
            self._child.stdin.write(json.dumps(msg, default=_jsonable) + "\n")
            self._child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:  # the child died: training goes on
            log.warning("MLflow tracking process is gone (training goes on): %s", short(e))

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @_guarded
    def on_epoch(self, rec) -> None:
        self._send({"result": epoch_result(rec, self._last_avg), "flush": False})

    @_guarded
    def on_task(self, rec, learner) -> None:
        self._last_avg = rec.avg_acc
        self._send({"result": task_result(rec, learner), "flush": True})  # computed now: the learner moves on

    @_guarded
    def end(self, status: str = "FINISHED", error: str | None = None) -> str | None:
        """Figures, status, final flush (in the child); waits for it. Returns the file of unsent
        entries, if any."""
        self._send({"end": {"status": status, "error": error}})
        try:
            self._child.stdin.close()
        except OSError:
            pass
        out = self._child.stdout.read()
        self._child.wait()
        try:
            reply = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            log.warning("MLflow tracking process ended without a reply (exit %s)", self._child.returncode)
            return None
        self._run_id = reply.get("run_id")
        return reply.get("unsent")
