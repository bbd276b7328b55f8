"""MLflow tracking: one parent run per study, one child run per trial, one run per `gradmix-tune run`.

The Ray Tune callback built by `sweep_callbacks` runs on the driver and is the single writer to
MLflow (no MLflow setup on workers, no SQLite lock contention). It turns the flat result dicts of
`results.py` into MLflow calls:

    parent run (tags: study, ablation, git commit, command; artifact ablation.yaml)
      child run per trial, name "<arm> seed=<seed>"
        params   the flattened experiment config (config.flatten)
        tags     study, arm, seed, method, trial_id, factors (JSON) and factor.<key>
        metrics  kind=task:  acc_task_<j>, avg_acc, task_time_s        step = tasks_done
                 kind=epoch: seen_acc, loss, epoch_time_s, frac_mixed,
                             frac_pairs_helpful, selection_time_s, refreshes  step = global_epoch
                 last task:  final_avg_acc, avg_incremental_acc, forgetting, bwt, wall_time_s
        artifacts config.yaml, accuracy_matrix.json/.png, s_matrix.png, curve.png, error.txt

Every MLflow call goes through `_Writer`: an ordered, bounded queue of plain-data operations. An
operation that fails for a transient reason (server unreachable, database locked) stays queued and
is retried later with backoff, so a tracking outage never stops training; what is still unsent at
the end is written to a JSON-lines file and reported.

Resuming reuses runs: the parent is found again through the callback's saved state (Ray restores
it with the experiment), its session tag (a restored Tuner unpickles the same callback) or, with
resume=True, the latest parent tagged with the study; children are found by their trial_id tag.
Each child records how far its metrics got (tag gradmix.steps), so results that a resumed trial
reports again are not logged twice.

This module imports neither ray nor mlflow at the top: `gradmix-tune run` only pays for mlflow.
"""
from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_RUN_EXPERIMENT = "gradmix-runs"

# tags
ROLE = "gradmix.role"  # parent | trial | run
SESSION = "gradmix.session"  # the callback instance that created a parent run
STEPS = "gradmix.steps"  # JSON high-water marks of the logged metric steps of a child run
PARENT = "mlflow.parentRunId"

EPOCH_METRICS = ("seen_acc", "loss", "epoch_time_s", "frac_mixed", "frac_pairs_helpful",
                 "selection_time_s", "refreshes")
FINAL_METRICS = ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "wall_time_s",
                 "peak_epoch", "peak_acc", "u_shape_drop")
# never logged as metrics: bookkeeping of results.py and what Ray adds to every result
_NOT_METRICS = {"kind", "task", "tasks_done", "global_epoch", "epoch", "done", "final", "index",
                "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
                "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
                "pid", "date", "hostname", "node_ip", "trial_id", "experiment_id", "should_checkpoint",
                "checkpoint_dir_name", "experiment_tag", "config"}

EPOCH_FLUSH_S = 5.0  # epoch metrics of a sweep's trials are sent at least this often
PARAM_MAX = 6000  # MLflow's limit on a param value
TAG_MAX = 5000
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                    "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
                    "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_FOUND", "MALFORMED_REQUEST"}


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """`--tracking-uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (what `mlflow ui` opens)."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# --------------------------------------------------------------------------- small helpers
def artifact_root(uri: str) -> str | None:
    """For a sqlite store, artifacts go to `mlruns/` beside the database file (MLflow's own
    default is ./mlruns under whatever the current folder is); a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    return (db.parent / "mlruns").as_uri()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= PARAM_MAX else s[:PARAM_MAX - 3] + "..."


def _tag_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= TAG_MAX else s[:TAG_MAX - 3] + "..."


def git_info(cwd: str | None = None) -> dict[str, str]:
    """Commit and dirty flag of the checkout the command runs in (else of this package)."""
    for where in (cwd or os.getcwd(), str(Path(__file__).resolve().parent)):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                    text=True, timeout=10).stdout.strip()
            if not commit:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
        except (OSError, subprocess.SubprocessError):
            continue
    return {"git_commit": "unknown", "git_dirty": "unknown"}


def _source_tags(command: str | None = None) -> dict[str, str]:
    g = git_info()
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    tags = {"command": command if command is not None else " ".join(sys.argv),
            "git_commit": g["git_commit"], "git_dirty": g["git_dirty"],
            "mlflow.user": user, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "gradmix-tune"}
    if g["git_commit"] != "unknown":
        tags["mlflow.source.git.commit"] = g["git_commit"]
    return tags


def method_of(factors: dict, config: dict) -> str:
    """The method a trial runs: the swept `method`, else the config's `method`, else its selection."""
    if factors.get("method"):
        return str(factors["method"])
    if config.get("method"):
        return str(config["method"])
    return str((config.get("mixing") or {}).get("selection") or "unknown")


def _is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    mod = type(e).__module__ or ""
    if mod.startswith(("requests", "urllib3", "http.client", "sqlalchemy", "sqlite3")):
        return True  # connection problems, a locked or busy database
    text = str(e)
    return any(s in text for s in ("API request to", "Max retries exceeded", "Connection refused",
                                   "database is locked", "timed out", "TEMPORARILY_UNAVAILABLE"))


def _is_permanent(e: BaseException) -> bool:
    code = getattr(e, "error_code", None)
    return code in _PERMANENT_CODES and not _is_network_error(e)


@contextmanager
def _http_limits():
    """Fail fast on HTTP errors (our queue retries) and print no run links, unless the user set these."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # not one "View run" line per trial
    added = [k for k in defaults if k not in os.environ]
    for k in added:
        os.environ[k] = defaults[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


# --------------------------------------------------------------------------- the writer
class _Writer:
    """Ordered queue of MLflow operations for one tracking URI and experiment.

    Operations are plain data ``[op, key, payload]`` where ``key`` names a run logically
    ("parent", a trial id, "run"); the MLflow run id is resolved when the op is sent, so a run can
    be created after an outage. ``flush()`` sends in order and stops at the first transient
    failure (kept, retried after a backoff of 1, 2, 4 ... 60 s); an op refused for good (bad
    value) is dropped with a warning; one that keeps failing for an unknown reason is dropped
    after `max_attempts`.
    """

    def __init__(self, uri: str, experiment: str, max_pending: int = 50_000, max_attempts: int = 5):
        self.uri, self.experiment = uri, experiment
        self.max_pending, self.max_attempts = max_pending, max_attempts
        self.pending: deque[list] = deque()
        self.run_ids: dict[str, str] = {}
        self.hints: dict[str, str] = {}  # key -> run id known from a saved callback state
        self.reattached: set[str] = set()  # keys whose run existed before this session
        self.hw: dict[str, dict] = {}  # key -> {"epoch": step, "task": step, "final": 0|1} logged
        self.experiment_id: str | None = None
        self.dropped = 0
        self.tmpdir = tempfile.mkdtemp(prefix="gradmix-mlflow-")
        self._client = None
        self._retry_at = 0.0
        self._backoff = 1.0
        self._outage_since: float | None = None
        self._attempts = 0

    # ..................................................................... queueing
    def put(self, op: str, key: str, payload: dict | None = None) -> None:
        if op == "log" and len(self.pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("MLflow queue for %s is full (%d entries unsent): dropping new metrics "
                            "until it drains", self.uri, len(self.pending))
            return
        self.pending.append([op, key, payload or {}])

    def file(self, name: str, text: str | bytes) -> str:
        """A file in the writer's folder, kept until it is uploaded."""
        os.makedirs(self.tmpdir, exist_ok=True)
        d = tempfile.mkdtemp(dir=self.tmpdir)
        p = os.path.join(d, name)
        with open(p, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        return p

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            # "Creating initial MLflow database tables" etc.: not news to the user
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ..................................................................... sending
    def flush(self, force: bool = False) -> bool:
        """Send what is queued; True when nothing is left. Without `force`, waits out the backoff."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        sent = 0
        with _http_limits():
            while self.pending:
                op = self.pending[0]
                try:
                    n = self._apply(op)
                except Exception as e:  # noqa: BLE001 - tracking must never stop training
                    if _is_permanent(e) or (not _is_network_error(e) and self._attempts + 1 >= self.max_attempts):
                        log.warning("MLflow refused %s for %s: %s (dropped)", op[0], op[1], _short(e))
                        self._discard(self.pending.popleft())
                        self._attempts = 0
                        continue
                    self._attempts += 1
                    self._retry_at = time.monotonic() + self._backoff
                    if self._outage_since is None:
                        self._outage_since = time.monotonic()
                        log.warning("MLflow at %s is unavailable (%s). Training goes on; %d entries "
                                    "are queued and will be sent when it answers.", self.uri, _short(e),
                                    len(self.pending))
                    self._backoff = min(self._backoff * 2, 60.0)
                    return False
                for _ in range(n):
                    self._discard(self.pending.popleft())
                sent += n
                self._attempts = 0
        if self._outage_since is not None:
            log.warning("MLflow at %s answers again: sent %d queued entries", self.uri, sent)
            self._outage_since = None
        self._backoff, self._retry_at = 1.0, 0.0
        return True

    def close(self, wait_s: float = 20.0) -> str | None:
        """Final flush (retrying for up to `wait_s`); leftovers go to a JSON-lines file, returned."""
        deadline = time.monotonic() + wait_s
        delay = 1.0
        while not self.flush(force=True) and time.monotonic() + delay < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        if not self.pending:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self.dropped:
                log.warning("MLflow: %d metric batches were dropped while the queue was full", self.dropped)
            return None
        spill = os.path.join(self.tmpdir, "unsent.jsonl")
        with open(spill, "w") as f:
            for op in self.pending:
                f.write(json.dumps({"uri": self.uri, "experiment": self.experiment, "op": op[0],
                                    "key": op[1], "run_id": self.run_ids.get(op[1]), "payload": op[2]}) + "\n")
        log.warning("MLflow at %s could not be reached: %d entries were not sent. They are kept in %s "
                    "(artifacts next to it).", self.uri, len(self.pending), spill)
        return spill

    def _discard(self, op: list) -> None:
        if op[0] == "artifact" and op[2].get("tmp"):
            shutil.rmtree(os.path.dirname(op[2]["file"]), ignore_errors=True)

    def _experiment(self) -> str:
        if self.experiment_id is None:
            c = self.client
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self.experiment_id = c.create_experiment(self.experiment,
                                                             artifact_location=artifact_root(self.uri))
                except Exception:  # noqa: BLE001 - created meanwhile by someone else
                    exp = c.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    c.restore_experiment(exp.experiment_id)
                self.experiment_id = exp.experiment_id
        return self.experiment_id

    def _find(self, find: dict, parent_id: str | None) -> Any:
        clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in find.items()]
        if parent_id:
            clauses.append(f"tags.`{PARENT}` = '{parent_id}'")
        runs = self.client.search_runs([self._experiment()], " and ".join(clauses), max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _apply(self, op: list) -> int:
        """Send one op (or a run of mergeable log ops); returns how many ops it consumed."""
        from mlflow.entities import Metric, RunTag

        kind, key, p = op
        c = self.client
        if kind == "run":
            self._open_run(key, p)
            return 1
        run_id = self.run_ids.get(key)
        if run_id is None:  # its run op was dropped: nothing can be logged for it
            raise _Orphan(f"no MLflow run for {key}")
        if kind == "log":
            n, metrics, tags = 0, [], {}
            hw = self.hw.setdefault(key, {"epoch": 0, "task": 0, "final": 0})
            new_hw = dict(hw)
            for q in self.pending:  # merge consecutive log ops of this run into one batch
                if q[0] != "log" or q[1] != key or len(metrics) + len(q[2].get("metrics", ())) > 900:
                    break
                n += 1
                for name, value, ts, step, group in q[2].get("metrics", ()):
                    if group == "final":
                        if hw["final"]:
                            continue
                        new_hw["final"] = 1
                    else:
                        if step <= hw[group]:
                            continue  # already logged (a resumed trial reports it again)
                        new_hw[group] = max(new_hw[group], step)
                    metrics.append(Metric(name, float(value), int(ts), int(step)))
                tags.update(q[2].get("tags", {}))
            if metrics or tags:
                if new_hw != hw:
                    tags[STEPS] = json.dumps(new_hw)
                c.log_batch(run_id, metrics=metrics,
                            tags=[RunTag(k, _tag_value(v)) for k, v in tags.items()])
            self.hw[key] = new_hw
            return max(n, 1)
        if kind == "artifact":
            c.log_artifact(run_id, p["file"], p.get("dir") or None)
            return 1
        if kind == "end":
            c.set_terminated(run_id, p["status"])
            return 1
        if kind == "retire":
            self._retire(key, p["live"])
            return 1
        raise ValueError(f"unknown op {kind}")

    def _open_run(self, key: str, p: dict) -> None:
        """Create the run, or find it again (resume) and make it RUNNING."""
        c = self.client
        exp_id = self._experiment()
        parent_key = p.get("parent")
        parent_id = self.run_ids.get(parent_key) if parent_key else None
        if parent_key and parent_id is None:
            raise _Orphan(f"parent run {parent_key} of {key} was never created")
        existing = None
        hint = self.run_ids.get(key) or self.hints.get(key)
        if hint:
            try:
                r = c.get_run(hint)
                if r.info.lifecycle_stage == "active":
                    existing = r
            except Exception as e:  # noqa: BLE001
                if _is_network_error(e) and not _is_permanent(e):
                    raise
        if existing is None and p.get("find") and (not parent_key or parent_key in self.reattached):
            existing = self._find(p["find"], parent_id)
            if existing is None and p.get("adopt"):
                existing = self._adoptable(p["adopt"], parent_id)
        tags = dict(p.get("tags", {}))
        if parent_id:
            tags[PARENT] = parent_id
        if existing is not None:
            run_id = existing.info.run_id
            self.reattached.add(key)
            known = existing.data.params
            missing = {k: v for k, v in p.get("params", {}).items() if k not in known}
            new_tags = {k: v for k, v in tags.items() if k not in existing.data.tags}
            for k, v in (p.get("find") or {}).items():  # an adopted run takes the new trial id
                if existing.data.tags.get(k) != str(v):
                    new_tags[k] = v
            if "command" in tags and existing.data.tags.get("command") != tags["command"]:
                new_tags["resume_command"] = tags["command"]  # keep the original command
            self.run_ids[key] = run_id
            self._log_params_tags(run_id, missing, new_tags)
            if existing.info.status != "RUNNING" and p.get("reopen", True):
                c.update_run(run_id, status="RUNNING")
            try:
                self.hw[key] = {"epoch": 0, "task": 0, "final": 0, **json.loads(existing.data.tags.get(STEPS, "{}"))}
            except ValueError:
                self.hw[key] = {"epoch": 0, "task": 0, "final": 0}
            return
        tags["mlflow.runName"] = p.get("name") or key
        run = c.create_run(exp_id, tags={k: _tag_value(v) for k, v in tags.items()}, run_name=p.get("name"))
        run_id = run.info.run_id
        self.run_ids[key] = run_id
        self.hw[key] = {"epoch": 0, "task": 0, "final": 0}
        self._log_params_tags(run_id, p.get("params", {}), {})

    def _adoptable(self, adopt: dict, parent_id: str | None) -> Any:
        """A RUNNING child with the same arm and seed, left by a killed driver before its trial was
        saved (Ray then re-creates the trial with a new id), that logged no metrics: reused."""
        clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in adopt.items()]
        clauses += [f"tags.`{PARENT}` = '{parent_id}'", "attributes.status = 'RUNNING'"]
        for r in self.client.search_runs([self._experiment()], " and ".join(clauses), max_results=20):
            if STEPS not in r.data.tags and r.data.tags.get("trial_id") not in self.run_ids:
                return r
        return None

    def _retire(self, key: str, live: list[str]) -> None:
        """End as KILLED the RUNNING children of this parent whose trials Ray no longer has."""
        run_id = self.run_ids[key]
        filt = f"tags.`{PARENT}` = '{run_id}' and attributes.status = 'RUNNING'"
        for r in self.client.search_runs([self._experiment()], filt, max_results=1000):
            if r.data.tags.get("trial_id") not in set(live):
                self.client.set_tag(r.info.run_id, "superseded", "true")
                self.client.set_terminated(r.info.run_id, "KILLED")

    def _log_params_tags(self, run_id: str, params: dict, tags: dict) -> None:
        from mlflow.entities import Param, RunTag

        items = list(params.items())
        tag_items = [RunTag(k, _tag_value(v)) for k, v in tags.items() if k != "mlflow.runName"]
        for i in range(0, max(len(items), 1), 100):
            chunk = [Param(k, _param_value(v)) for k, v in items[i:i + 100]]
            tchunk = tag_items if i == 0 else []
            if chunk or tchunk:
                self.client.log_batch(run_id, params=chunk, tags=tchunk)


class _Orphan(RuntimeError):
    """An op whose run does not exist (its creation was refused): dropped, not retried."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


def _quote(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("'", "\\'")


def _short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) < 300 else s[:297] + "..."


# --------------------------------------------------------------------------- one run's results
_PNG_CACHE: dict[str, bytes] = {}  # recent figures: one drawing serves every tracking URI
class _RunLog:
    """Turns one trial's (or one `run`'s) flat result dicts into writer ops."""

    def __init__(self, writer: _Writer, key: str):
        self.w, self.key = writer, key
        self.epoch_hw = 0
        self.task_hw = 0
        self.final = False
        self.curve: dict[int, dict] = {}  # global_epoch -> {task, seen_acc, loss}
        self.last_task: dict | None = None
        self.ended: str | None = None

    def result(self, r: dict) -> None:
        kind = r.get("kind")
        ts = _now_ms()
        metrics: list = []
        if kind == "epoch":  # every numeric value but avg_acc (the last task's, logged per task)
            step = int(r.get("global_epoch", 0))
            self.curve[step] = {"task": r.get("task"), "seen_acc": r.get("seen_acc"), "loss": r.get("loss")}
            if step <= self.epoch_hw:
                return
            self.epoch_hw = step
            metrics = [[k, v, ts, step, "epoch"] for k, v in r.items()
                       if k not in _NOT_METRICS and k != "avg_acc" and _finite(v)]
            if _finite(r.get("task")):  # which task each epoch belongs to (epochs can stop early)
                metrics.append(["task", r["task"], ts, step, "epoch"])
        elif kind == "task":  # accuracies, times and diagnostics not already logged per epoch
            step = int(r.get("tasks_done", int(r.get("task", 0)) + 1))
            self.last_task = r
            if step > self.task_hw:
                self.task_hw = step
                metrics = [[k, v, ts, step, "task"] for k, v in r.items()
                           if k not in _NOT_METRICS and k not in EPOCH_METRICS and k not in FINAL_METRICS
                           and _finite(v)]
            if r.get("final") and not self.final:
                self.final = True
                metrics += [[k, r[k], ts, step, "final"] for k in FINAL_METRICS if _finite(r.get(k))]
        if metrics:
            self.w.put("log", self.key, {"metrics": metrics})

    def figures(self, fetch_history: bool = True) -> None:
        """Accuracy matrix, S matrix and per-epoch curve, drawn here and queued as artifacts."""
        from . import report

        r = self.last_task or {}
        try:
            acc = json.loads(r.get("accuracy_matrix") or "[]")
        except ValueError:
            acc = []
        if acc:
            self.w.put("artifact", self.key, {"file": self.w.file("accuracy_matrix.json", json.dumps(acc)),
                                               "tmp": True})
            self._png("accuracy_matrix.png", report.draw_accuracy_matrix, acc, title="accuracy matrix")
        s = r.get("s_matrix")
        if s:
            try:
                smat = json.loads(s)
            except ValueError:
                smat = None
            if smat:
                self._png("s_matrix.png", report.draw_s_matrix, smat)
        curve = dict(self.curve)
        if fetch_history and self.key in self.w.reattached:
            curve = {**self._history(), **curve}  # epochs logged before a resume
        pts = sorted((k, v) for k, v in curve.items() if _finite(v.get("seen_acc")))
        if pts:
            self._png("curve.png", report.draw_epoch_curve, [k for k, _ in pts], [v["seen_acc"] for _, v in pts],
                      [v.get("loss") for _, v in pts], task_of=[v.get("task") for _, v in pts])

    def _png(self, name: str, draw, *args, **kwargs) -> None:
        """Draw (or reuse the same drawing made for another tracking URI) and queue the upload."""
        key = json.dumps([name, draw.__name__, args, kwargs], default=str)
        data = _PNG_CACHE.pop(key, None)
        if data is None:
            d = tempfile.mkdtemp()
            try:
                draw(*args, path=os.path.join(d, name), **kwargs)
                data = Path(d, name).read_bytes()
            finally:
                shutil.rmtree(d, ignore_errors=True)
        _PNG_CACHE[key] = data
        while len(_PNG_CACHE) > 16:
            _PNG_CACHE.pop(next(iter(_PNG_CACHE)))
        self.w.put("artifact", self.key, {"file": self.w.file(name, data), "tmp": True})

    def _history(self) -> dict[int, dict]:
        run_id = self.w.run_ids.get(self.key)
        if not run_id:
            return {}
        out: dict[int, dict] = {}
        try:
            with _http_limits():
                for name in ("seen_acc", "loss", "task"):
                    for m in self.w.client.get_metric_history(run_id, name):
                        out.setdefault(m.step, {})[name] = m.value
        except Exception as e:  # noqa: BLE001 - the curve then shows this session's epochs only
            log.debug("no metric history for %s: %s", self.key, e)
        return out

    def end(self, status: str, error: str | None = None) -> None:
        if error:
            self.w.put("artifact", self.key, {"file": self.w.file("error.txt", error), "tmp": True})
            last = [ln for ln in error.strip().splitlines() if ln.strip()]
            self.w.put("log", self.key, {"metrics": [], "tags": {"error": (last[-1] if last else error)[:500]}})
        self.w.put("end", self.key, {"status": status})
        self.ended = status


# --------------------------------------------------------------------------- the study logger
def _guarded(fn):
    """Tracking must never stop training: an unexpected error becomes a warning."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow tracking failed in %s (training goes on): %s", fn.__name__, _short(e))
            return None

    return wrapper


def _study_info(study) -> dict:
    get = (lambda k, d=None: study.get(k, d)) if isinstance(study, dict) else \
        (lambda k, d=None: getattr(study, k, d))
    name = str(get("name") or "study")
    return {"name": name, "experiment": str(get("experiment") or name), "path": str(get("path") or ""),
            "raw_text": get("raw_text") or "", "grid": dict(get("grid") or {}),
            "seeds": list(get("seeds") or []), "metric": str(get("metric") or "final_avg_acc"),
            "mode": str(get("mode") or "max")}


class StudyLogger:
    """The logic of the Ray Tune callback, independent of Ray (it only reads `trial.trial_id`,
    `trial.config`, `trial.status` and `trial.error_file`)."""

    def __init__(self, study, tracking_uri: str | None = None, resume: bool = False):
        self.info = _study_info(study)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.resume = bool(resume)
        self.session = uuid.uuid4().hex
        self.command = " ".join(sys.argv)
        self._saved: dict = {}
        self._w: _Writer | None = None
        self._runs: dict[str, _RunLog] = {}
        self.spill: str | None = None
        self.close_wait_s = 20.0  # how long the end of a sweep waits for an unreachable MLflow

    # pickling (a Tuner pickles its callbacks; a restored Tuner unpickles them)
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_w", "_runs")}
        state["_saved"] = self.get_state() or self._saved
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._w, self._runs = None, {}

    @property
    def writer(self) -> _Writer:
        if self._w is None:
            w = self._w = _Writer(self.uri, self.info["experiment"])
            w.hints.update({k: v for k, v in (self._saved.get("runs") or {}).items()})
            if self._saved.get("parent"):
                w.hints["parent"] = self._saved["parent"]
            info = self.info
            find = {"study": info["name"], ROLE: "parent"} if self.resume else {SESSION: self.session}
            tags = {"study": info["name"], ROLE: "parent", SESSION: self.session,
                    "ablation": info["path"], "metric": info["metric"], "mode": info["mode"],
                    "grid": json.dumps(info["grid"], default=str), "seeds": json.dumps(info["seeds"]),
                    **_source_tags(self.command)}
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
    def _run(self, trial, reopen: bool = False) -> _RunLog:
        tid = str(trial.trial_id)
        rl = self._runs.get(tid)
        if rl is not None:
            if reopen and rl.ended:
                self.writer.put("run", tid, self._spec(trial))
                rl.ended = None
            return rl
        rl = self._runs[tid] = _RunLog(self.writer, tid)
        self.writer.put("run", tid, self._spec(trial))
        cfg = self._config(trial)
        if cfg:
            import yaml

            self.writer.put("artifact", tid, {"file": self.writer.file("config.yaml", yaml.safe_dump(
                cfg, sort_keys=False)), "tmp": True})
        return rl

    @staticmethod
    def _config(trial) -> dict:
        c = trial.config or {}
        return c["config"] if isinstance(c.get("config"), dict) else {}

    def _spec(self, trial) -> dict:
        from .config import flatten

        c = trial.config or {}
        cfg = self._config(trial)
        factors = c.get("factors") if isinstance(c.get("factors"), dict) else {}
        seed = c.get("seed", cfg.get("seed", ""))
        arm = str(c.get("arm") or " ".join(f"{k}={v}" for k, v in factors.items()) or trial.trial_id)
        tags = {"study": c.get("study") or self.info["name"], "arm": arm, "seed": seed,
                "method": method_of(factors, cfg), "trial_id": trial.trial_id, ROLE: "trial",
                "factors": json.dumps(factors, default=str), **_source_tags(self.command)}
        tags.update({f"factor.{k}": v for k, v in factors.items()})
        params = flatten(cfg) if cfg else {k: v for k, v in c.items() if not isinstance(v, dict)}
        return {"parent": "parent", "name": f"{arm} seed={seed}", "tags": tags, "params": params,
                "find": {"trial_id": trial.trial_id}, "adopt": {"arm": arm, "seed": seed}}

    @_guarded
    def setup(self) -> None:
        self.writer  # noqa: B018 - queue the parent run now
        self.writer.flush()

    @_guarded
    def trial_start(self, trial) -> None:
        self._run(trial, reopen=True)
        self.writer.flush()

    @_guarded
    def trial_result(self, trial, result: dict) -> None:
        self._run(trial, reopen=True).result(result)
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

    def _safe_figures(self, rl: _RunLog) -> None:
        try:
            self.writer.flush()  # so a resumed run's earlier epochs can be read back
            rl.figures()
        except Exception as e:  # noqa: BLE001 - a plot must never fail a trial
            log.warning("could not draw the figures of trial %s: %s", rl.key, _short(e))

    @_guarded
    def experiment_end(self, trials: list) -> None:
        failed = 0
        for t in trials or []:
            status = getattr(t, "status", "")
            rl = self._runs.get(str(t.trial_id))
            if status == "ERROR":
                failed += 1
            if rl is not None and rl.ended is None and status not in ("TERMINATED", "ERROR"):
                rl.end("KILLED")  # interrupted: reopened by a resume
        unfinished = sum(getattr(t, "status", "") not in ("TERMINATED", "ERROR") for t in trials or [])
        w = self.writer
        w.put("log", "parent", {"metrics": [], "tags": {"trials_total": len(trials or []),
                                                       "trials_failed": failed, "trials_unfinished": unfinished}})
        w.put("retire", "parent", {"live": [str(t.trial_id) for t in trials or []]})
        w.put("end", "parent", {"status": "KILLED" if unfinished else "FINISHED"})  # a resume reopens it
        self.close()

    def close(self) -> None:
        if self._w is not None:
            self.spill = self._w.close(self.close_wait_s)
            _ACTIVE_PARENTS[(self.uri, self.info["experiment"], self.info["name"])] = \
                self._w.run_ids.get("parent")

    @property
    def parent_run_id(self) -> str | None:
        return self._w.run_ids.get("parent") if self._w else self._saved.get("parent")


# study -> parent run id of the latest sweep in this process (after_sweep reports on it)
_ACTIVE_PARENTS: dict[tuple, str | None] = {}


def active_parent(tracking_uri: str, experiment: str, study: str) -> str | None:
    return _ACTIVE_PARENTS.get((tracking_uri, experiment, study))


# --------------------------------------------------------------------------- the Ray callback
_CALLBACK_CLS = None


def _callback_class():
    """Built on first use so that importing this module does not import ray."""
    global _CALLBACK_CLS
    if _CALLBACK_CLS is not None:
        return _CALLBACK_CLS
    from ray.tune import Callback

    class MlflowCallback(Callback, StudyLogger):
        """Driver-side Ray Tune callback: the single MLflow writer of a study."""

        def __init__(self, study, tracking_uri: str | None = None, resume: bool = False):
            StudyLogger.__init__(self, study, tracking_uri, resume)

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            StudyLogger.setup(self)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.trial_start(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.trial_result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.trial_complete(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.trial_error(trial)

        def on_experiment_end(self, trials, **info):
            self.experiment_end(trials)

        def get_state(self):
            return StudyLogger.get_state(self)

        def set_state(self, state):
            StudyLogger.set_state(self, state)

    MlflowCallback.__module__ = __name__
    MlflowCallback.__qualname__ = "MlflowCallback"
    _CALLBACK_CLS = MlflowCallback
    return MlflowCallback


def __getattr__(name: str):  # `tracking.MlflowCallback` (and pickling by reference) without importing ray first
    if name == "MlflowCallback":
        return _callback_class()
    raise AttributeError(name)


def sweep_callbacks(study, tracking_uri: str, resume: bool = False) -> list:
    """Ray Tune callbacks that log the study to MLflow (driver side, single writer)."""
    return [_callback_class()(study, resolve_tracking_uri(tracking_uri), resume)]


# --------------------------------------------------------------------------- `gradmix-tune run`
class RunLogger:
    """Logs one `gradmix-tune run` (no parent) the way a trial is logged: use `on_epoch` and
    `on_task` as learner Hooks, then `end(status)`.

    All MLflow work happens on one background thread (importing mlflow and opening a new
    sqlite store take seconds): training only computes the small result dicts and queues them."""

    def __init__(self, cfg, tracking_uri: str | None = None, experiment: str | None = None,
                 config_path: str | None = None, command: str | None = None):
        import queue
        import threading

        from .config import flatten

        cfgd = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment or DEFAULT_RUN_EXPERIMENT
        self.w = _Writer(self.uri, self.experiment)
        self.rl = _RunLog(self.w, "run")
        self._last_avg = float("nan")
        self._unsent: str | None = None
        method = method_of({}, cfgd)
        name = f"{Path(config_path).stem if config_path else 'run'} {method} seed={cfgd.get('seed', 0)}"
        tags = {ROLE: "run", "method": method, "seed": cfgd.get("seed", 0), "config_file": config_path or "",
                **_source_tags(command)}
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="gradmix-mlflow", daemon=True)
        self._thread.start()

        def open_run():
            import yaml

            self.w.put("run", "run", {"name": name, "tags": tags, "params": flatten(cfgd)})
            self.w.put("artifact", "run", {"file": self.w.file("config.yaml", yaml.safe_dump(cfgd, sort_keys=False)),
                                           "tmp": True})
            self.w.flush()

        self._q.put(open_run)

    def _work(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - tracking never stops training
                log.warning("MLflow tracking failed (training goes on): %s", _short(e))

    def _log(self, result: dict) -> None:
        def send():
            self.rl.result(result)
            self.w.flush()

        self._q.put(send)

    @property
    def run_id(self) -> str | None:
        return self.w.run_ids.get("run")

    @_guarded
    def on_epoch(self, rec) -> None:
        from .results import epoch_result

        self._log(epoch_result(rec, self._last_avg))

    @_guarded
    def on_task(self, rec, learner) -> None:
        from .results import task_result

        self._last_avg = rec.avg_acc
        self._log(task_result(rec, learner))  # computed now: the learner moves on

    @_guarded
    def end(self, status: str = "FINISHED", error: str | None = None) -> str | None:
        """Figures, status, final flush; waits for the background thread. Returns the file of
        unsent entries, if any."""
        def finish():
            try:
                self.rl.figures(fetch_history=False)
            except Exception as e:  # noqa: BLE001
                log.warning("could not draw the run's figures: %s", _short(e))
            self.rl.end(status, error)
            self._unsent = self.w.close()

        self._q.put(finish)
        self._q.put(None)
        self._thread.join()
        return self._unsent
