"""The durable MLflow writer: an ordered, retried queue of operations with an unsent.jsonl fallback.

Every MLflow call of tracking/ goes through a `Writer`: an operation that fails for a transient
reason (server unreachable, database locked) stays queued and is retried later with backoff, so a
tracking outage never stops training; what is still unsent at the end is written to a folder
(`spill_dir`: a sweep's results folder) as unsent.jsonl plus the artifacts it names (files/), and
replay.py sends it later. Sending is idempotent: runs are found again by their tags, metrics by
the steps a run records it has (tag gradmix.steps), so sending the same entries twice writes them once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from typing import Any

from .store import EXPERIMENT_KIND, PARENT, STEPS, artifact_root, http_limits, is_network_error, is_permanent, \
    param_value, short, tag_value

UNSENT = "unsent.jsonl"

log = logging.getLogger(__name__)


class Writer:
    """Ordered queue of MLflow operations for one tracking URI and experiment.

    Operations are plain data ``[op, key, payload]`` where ``key`` names a run logically
    ("parent", a trial id, "run"); the MLflow run id is resolved when the op is sent, so a run can
    be created after an outage. ``flush()`` sends in order and stops at the first transient
    failure (kept, retried after a backoff of 1, 2, 4 ... 60 s); an op refused for good (bad
    value) is dropped with a warning; one that keeps failing for an unknown reason is dropped
    after `max_attempts`.
    """

    def __init__(self, uri: str, experiment: str, max_pending: int = 50_000, max_attempts: int = 5,
                 spill_dir: str | None = None):
        self.uri, self.experiment = uri, experiment
        self.spill_dir = spill_dir  # where close() keeps what it could not send (None: its temp folder)
        self.replaying = False  # sending a spilled file again: no run is reopened, no status set twice
        # the experiment's tags: its kind, so the MLflow UI treats it as model training (a study's
        # writer adds the arms view, store.arms_view)
        self.experiment_tags: dict[str, str] = dict([EXPERIMENT_KIND])
        self.counts = {"runs_created": 0, "runs_found": 0, "metrics": 0, "metrics_there": 0, "artifacts": 0,
                       "datasets": 0, "ends": 0, "tags": 0}
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
        with http_limits():
            while self.pending:
                op = self.pending[0]
                try:
                    n = self._apply(op)
                except Exception as e:  # noqa: BLE001 - tracking must never stop training
                    if is_permanent(e) or (not is_network_error(e) and self._attempts + 1 >= self.max_attempts):
                        log.warning("MLflow refused %s for %s: %s (dropped)", op[0], op[1], short(e))
                        self._discard(self.pending.popleft())
                        self._attempts = 0
                        continue
                    self._attempts += 1
                    self._retry_at = time.monotonic() + self._backoff
                    if self._outage_since is None:
                        self._outage_since = time.monotonic()
                        log.warning("MLflow at %s is unavailable (%s). Training goes on; %d entries "
                                    "are queued and will be sent when it answers.", self.uri, short(e),
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
        """Final flush (retrying for up to `wait_s`); leftovers go to unsent.jsonl in a new folder
        of `spill_dir` (with copies of the artifacts they name), whose path is returned."""
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
        spill = self.spill()
        log.warning("MLflow at %s could not be reached: %d entries were not sent. They are kept in %s "
                    "(artifacts next to it); send them with: gradmix-tune tracking replay %s",
                    self.uri, len(self.pending), spill, spill)
        return spill

    def spill(self) -> str:
        """Write what is queued to <spill_dir>/<time>-<pid>/unsent.jsonl, artifacts copied to files/."""
        if self.spill_dir:
            folder = os.path.join(self.spill_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            n = 1
            while os.path.exists(folder + (f"-{n}" if n > 1 else "")):
                n += 1
            folder += f"-{n}" if n > 1 else ""
        else:
            folder = self.tmpdir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, UNSENT)
        with open(path + ".part", "w") as f:
            for i, (kind, key, payload) in enumerate(self.pending):
                payload = dict(payload)
                if kind == "artifact":
                    src = payload.pop("file")
                    payload.pop("tmp", None)
                    rel = f"files/{i:06d}/{os.path.basename(src)}"
                    os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
                    if os.path.isfile(src):
                        shutil.copy2(src, os.path.join(folder, rel))
                    payload["file"] = rel
                f.write(json.dumps({"uri": self.uri, "experiment": self.experiment, "op": kind, "key": key,
                                    "run_id": self.run_ids.get(key), "payload": payload}) + "\n")
        os.replace(path + ".part", path)
        if folder != self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return path

    def attach(self, key: str, run_id: str) -> bool:
        """Use the existing run `run_id` for `key` (a spilled file names the runs it had): what it
        has already logged is skipped. False when the store does not have that run."""
        try:
            with http_limits():
                r = self.client.get_run(run_id)
        except Exception as e:  # noqa: BLE001
            if is_permanent(e):
                return False
            raise
        self.run_ids[key] = run_id
        self.reattached.add(key)
        try:
            self.hw[key] = {"epoch": 0, "task": 0, "final": 0, **json.loads(r.data.tags.get(STEPS, "{}"))}
        except ValueError:
            self.hw[key] = {"epoch": 0, "task": 0, "final": 0}
        return True

    def _discard(self, op: list) -> None:
        if op[0] == "artifact" and op[2].get("tmp"):
            shutil.rmtree(os.path.dirname(op[2]["file"]), ignore_errors=True)

    def _experiment(self) -> str:
        if self.experiment_id is None:
            c = self.client
            exp = c.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    exp_id = c.create_experiment(self.experiment, artifact_location=artifact_root(self.uri),
                                                 tags=self.experiment_tags)
                except Exception:  # noqa: BLE001 - created meanwhile by someone else
                    exp = c.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    c.restore_experiment(exp.experiment_id)
                exp_id = exp.experiment_id
            for k, v in self.experiment_tags.items() if exp is not None else ():
                if exp.tags.get(k) != v:  # e.g. an experiment an older version made
                    c.set_experiment_tag(exp_id, k, v)
            self.experiment_id = exp_id
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
            n, offered, metrics, tags = 0, 0, [], {}
            hw = self.hw.setdefault(key, {"epoch": 0, "task": 0, "final": 0})
            new_hw = dict(hw)
            for q in self.pending:  # merge consecutive log ops of this run into one batch
                if q[0] != "log" or q[1] != key or len(metrics) + len(q[2].get("metrics", ())) > 900:
                    break
                n += 1
                offered += len(q[2].get("metrics", ()))
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
                            tags=[RunTag(k, tag_value(v)) for k, v in tags.items()])
            self.hw[key] = new_hw
            self.counts["metrics_there"] += offered - len(metrics)  # logged before (a resume, a replay)
            self.counts["metrics"] += len(metrics)
            self.counts["tags"] += len(tags)
            return max(n, 1)
        if kind == "artifact":
            if self.replaying and self._has_artifact(run_id, p["file"], p.get("dir") or None):
                return 1
            c.log_artifact(run_id, p["file"], p.get("dir") or None)
            self.counts["artifacts"] += 1
            return 1
        if kind == "input":  # the run's dataset (mlflow.log_input); MLflow keeps one per digest
            from mlflow.entities import Dataset, DatasetInput, InputTag

            if self.replaying and any(d.dataset.digest == p["digest"] and d.dataset.name == p["name"]
                                      for d in c.get_run(run_id).inputs.dataset_inputs):
                return 1
            ds = Dataset(p["name"], p["digest"], p["source_type"], p["source"], p.get("schema"), p.get("profile"))
            c.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", p.get("context", "training"))])])
            self.counts["datasets"] += 1
            return 1
        if kind == "end":
            if self.replaying and c.get_run(run_id).info.status == p["status"]:
                return 1  # already ended so: a replay sets nothing twice
            c.set_terminated(run_id, p["status"])
            self.counts["ends"] += 1
            return 1
        if kind == "retire":
            self._retire(key, p["live"])
            return 1
        raise ValueError(f"unknown op {kind}")

    def _has_artifact(self, run_id: str, file: str, folder: str | None) -> bool:
        """The run already has this file, same name and size (a replay sent it before)."""
        size = os.path.getsize(file) if os.path.isfile(file) else -1
        name = "/".join(x for x in (folder, os.path.basename(file)) if x)
        return any(f.path == name and f.file_size == size for f in self.client.list_artifacts(run_id, folder))

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
                if is_network_error(e) and not is_permanent(e):
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
            if existing.info.status != "RUNNING" and p.get("reopen", True) and not self.replaying:
                c.update_run(run_id, status="RUNNING")
            self.counts["runs_found"] += 1
            try:
                self.hw[key] = {"epoch": 0, "task": 0, "final": 0, **json.loads(existing.data.tags.get(STEPS, "{}"))}
            except ValueError:
                self.hw[key] = {"epoch": 0, "task": 0, "final": 0}
            return
        tags["mlflow.runName"] = p.get("name") or key
        run = c.create_run(exp_id, tags={k: tag_value(v) for k, v in tags.items()}, run_name=p.get("name"))
        run_id = run.info.run_id
        self.run_ids[key] = run_id
        self.hw[key] = {"epoch": 0, "task": 0, "final": 0}
        self.counts["runs_created"] += 1
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
        tag_items = [RunTag(k, tag_value(v)) for k, v in tags.items() if k != "mlflow.runName"]
        for i in range(0, max(len(items), 1), 100):
            chunk = [Param(k, param_value(v)) for k, v in items[i:i + 100]]
            tchunk = tag_items if i == 0 else []
            if chunk or tchunk:
                self.client.log_batch(run_id, params=chunk, tags=tchunk)


class _Orphan(RuntimeError):
    """An op whose run does not exist (its creation was refused): dropped, not retried."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


def _quote(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("'", "\\'")


