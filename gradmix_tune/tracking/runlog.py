"""One trial's (or one `gradmix-tune run`'s) result dicts -> the writer's metric, figure and end ops.

    metrics  kind=epoch: epoch/<name> for every finite number of the result (seen_acc, loss,
                         epoch_time_s, a mixer's diagnostics, ...) but avg_acc and val_avg_acc,
                         and epoch/task (the task it trained, 1-based)      step = global epoch (1, 2, ...)
             kind=task:  task/<name>: task/avg_acc, task/acc_task_<j> (accuracy on task j, 1-based),
                         task/task_time_s and the task's diagnostics       step = tasks done (1, 2, ...)
             last task:  results.FINAL_METRICS and their val_ twins (final_avg_acc, forgetting, ...),
                         unprefixed, once                                    step = 0
    artifacts accuracy_matrix.json/.png, s_matrix.png, curve.png, error.txt

One x axis per prefix, so the MLflow UI's chart view shows one section per axis (epoch/, task/) and
the final metrics apart; steps and task numbers are 1-based, as the console counts tasks. A metric
that a run reports per epoch is logged per epoch only, even when the task's result repeats it (the
last epoch's value).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .. import figures
from ..results import CARRIED, FINAL_METRICS, NOT_METRICS, VAL_METRICS
from ..values import is_finite
from .store import http_limits
from .writer import Writer

log = logging.getLogger(__name__)

_PNG_CACHE: dict[str, bytes] = {}  # recent figures: one drawing serves every tracking URI
EPOCH, TASK = "epoch/", "task/"  # the prefixes of the per-epoch and per-task metric families
FINAL = FINAL_METRICS + tuple(VAL_METRICS)  # whole-run values: unprefixed, logged once
_PER_TASK_J = re.compile(r"^(val_)?acc_task_(\d+)$")


def epoch_metric(name: str) -> str:
    """The MLflow name of a per-epoch value (step = global epoch)."""
    return EPOCH + name


def task_metric(name: str) -> str:
    """The MLflow name of a per-task value (step = tasks done): acc_task_<j> (0-based j, as results
    name it) becomes task/acc_task_<j+1>."""
    m = _PER_TASK_J.match(name)
    if m:
        return f"{TASK}{m.group(1) or ''}acc_task_{int(m.group(2)) + 1}"
    return TASK + name


def _now_ms() -> int:
    return int(time.time() * 1000)


class RunLog:
    """Turns one run's flat result dicts (results.py) into writer ops under the run's `key`."""

    def __init__(self, writer: Writer, key: str):
        self.w, self.key = writer, key
        self.epoch_hw = 0
        self.task_hw = 0
        self.final = False
        self.epoch_keys: set[str] = set()  # what this run reports per epoch
        self.curve: dict[int, dict] = {}  # global_epoch -> {task, seen_acc, loss}
        self.last_task: dict | None = None
        self.ended: str | None = None

    def result(self, r: dict) -> None:
        kind = r.get("kind")
        ts = _now_ms()
        metrics: list = []
        if kind == "epoch":  # every numeric value but avg_acc, val_avg_acc (the last task's, logged per task)
            step = int(r.get("global_epoch", 0))
            self.curve[step] = {"task": r.get("task"), "seen_acc": r.get("seen_acc"), "loss": r.get("loss")}
            self.epoch_keys.update(k for k in r if k not in NOT_METRICS and k not in CARRIED)
            if step <= self.epoch_hw:
                return
            self.epoch_hw = step
            metrics = [[epoch_metric(k), v, ts, step, "epoch"] for k, v in r.items()
                       if k not in NOT_METRICS and k not in CARRIED and is_finite(v)]
            if is_finite(r.get("task")):  # which task each epoch belongs to (epochs can stop early)
                metrics.append([epoch_metric("task"), r["task"] + 1, ts, step, "epoch"])
        elif kind == "task":  # accuracies, times and diagnostics not already logged per epoch
            step = int(r.get("tasks_done", int(r.get("task", 0)) + 1))
            self.last_task = r
            if step > self.task_hw:
                self.task_hw = step
                metrics = [[task_metric(k), v, ts, step, "task"] for k, v in r.items()
                           if k not in NOT_METRICS and k not in self.epoch_keys and k not in FINAL
                           and is_finite(v)]
            if r.get("final") and not self.final:
                self.final = True
                # step 0: one value a run, which the MLflow UI charts as bars (one per run, or per arm
                # when grouped) rather than as a line of one point
                metrics += [[k, r[k], ts, 0, "final"] for k in FINAL if is_finite(r.get(k))]
        if metrics:
            self.w.put("log", self.key, {"metrics": metrics})

    def figures(self, fetch_history: bool = True) -> None:
        """Accuracy matrix, S matrix and per-epoch curve, drawn here and queued as artifacts."""
        r = self.last_task or {}
        try:
            acc = json.loads(r.get("accuracy_matrix") or "[]")
        except ValueError:
            acc = []
        if acc:
            self.w.put("artifact", self.key, {"file": self.w.file("accuracy_matrix.json", json.dumps(acc)),
                                               "tmp": True})
            self._png("accuracy_matrix.png", figures.draw_accuracy_matrix, acc, title="accuracy matrix")
        s = r.get("s_matrix")
        if s:
            try:
                smat = json.loads(s)
            except ValueError:
                smat = None
            if smat:
                self._png("s_matrix.png", figures.draw_s_matrix, smat)
        curve = dict(self.curve)
        if fetch_history and self.key in self.w.reattached:
            curve = {**self._history(), **curve}  # epochs logged before a resume
        pts = sorted((k, v) for k, v in curve.items() if is_finite(v.get("seen_acc")))
        if pts:
            self._png("curve.png", figures.draw_epoch_curve, [k for k, _ in pts], [v["seen_acc"] for _, v in pts],
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
            with http_limits():
                for name in ("seen_acc", "loss", "task"):
                    for m in self.w.client.get_metric_history(run_id, epoch_metric(name)):
                        out.setdefault(m.step, {})[name] = m.value - 1 if name == "task" else m.value
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
