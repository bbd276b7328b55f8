"""The driver's Ray Tune callbacks: console progress lines (Progress) and the MLflow writer (MlflowCallback)."""
from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path

from ray.tune import Callback

from ..tracking import StudyLogger
from ..results import unpack
from .storage import recorded_final


class MlflowCallback(StudyLogger, Callback):
    """Driver-side Ray Tune callback: the single MLflow writer of a study (tracking.StudyLogger
    has the hooks; this gives it Ray's Callback type)."""


class Progress(Callback):
    """One line per finished/failed trial, a heartbeat, the best so far and an ETA."""

    def __init__(self, total: int, metric: str, mode: str, heartbeat_s: float = 30.0, stream=None):
        self.total, self.metric, self.mode, self.heartbeat_s = total, metric, mode, heartbeat_s
        self.stream = stream
        self._reset()

    def _reset(self):
        self.t0 = time.monotonic()
        self.last_print = self.t0
        self.ended_here = 0
        self.reported: set = set()

    def __getstate__(self):
        d = self.__dict__.copy()
        d["stream"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._reset()

    def setup(self, **info):
        self._reset()

    def _out(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)
        self.last_print = time.monotonic()

    def _line(self, trials, ended=None, ended_status: str = "TERMINATED") -> str:
        # the trial that just ended may still show RUNNING while the callbacks run
        st = [ended_status if ended is not None and t is ended else t.status for t in trials]
        done, failed = st.count("TERMINATED"), st.count("ERROR")
        running = st.count("RUNNING")
        best, best_t = None, None
        for t in trials:
            v = (t.last_result or {}).get(self.metric)
            if isinstance(v, (int, float)) and math.isfinite(v) and (t.status == "TERMINATED" or t is ended):
                if best is None or (v > best if self.mode == "max" else v < best):
                    best, best_t = v, t
        el = time.monotonic() - self.t0
        left = max(self.total - done - failed, 0)
        if left == 0:
            eta = "0:00"
        elif self.ended_here:
            eta = _hms(el / self.ended_here * left)
        else:
            eta = "?"
        best_s = (f"best {self.metric} {best:.4f} ({best_t.config.get('arm')}, seed {best_t.config.get('seed')})"
                  if best_t is not None else f"best {self.metric} -")
        return (f"[{_hms(el)}] {done}/{self.total} done, {running} running, {failed} failed | "
                f"{best_s} | ETA {eta}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.reported:
            return
        self.reported.add(trial.trial_id)
        self.ended_here += 1
        r = trial.last_result or {}
        if self.metric not in r:  # ended before the driver's saved state said so (see tuner.outcomes)
            try:
                r = recorded_final(trial.path) or r
            except Exception:  # noqa: BLE001 - only the line's wording depends on it
                pass
        v = r.get(self.metric)
        what = (f"{self.metric} {v:.4f}" if isinstance(v, (int, float)) else
                f"stopped early after {r.get('tasks_done', r.get('task', -1) + 1)} tasks")
        self._out(f"  trial {_who(trial)}: {what}")
        self._out(self._line(trials, trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.reported.add(trial.trial_id)
        self.ended_here += 1
        self._out(f"  trial {_who(trial)} FAILED: {error_text(trial)}")
        self._out(self._line(trials, trial, "ERROR"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for r in unpack(result):  # a task's result carries its epochs' (the first may hold the note)
            note = r.get("restore_note")
            if note:
                self._out(f"  trial {_who(trial)}: {note}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._out(f"  trial {_who(trial)} failed, retrying from its last checkpoint: {error_text(trial)}")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_print >= self.heartbeat_s:
            self._out(self._line(trials))


def _who(trial) -> str:
    """'3 (method=gradmix, seed 1)': the trial's index, arm and seed."""
    return f"{trial.config.get('index')} ({trial.config.get('arm')}, seed {trial.config.get('seed')})"


def _hms(s: float) -> str:
    s = int(round(s))
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def error_text(trial) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    path = getattr(trial, "error_file", None)
    text = ""
    try:
        if path and os.path.exists(path):
            text = Path(path).read_text()
    except OSError:
        pass
    if not text:
        try:
            text = str(trial.get_error() or "")
        except Exception:  # noqa: BLE001
            text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost exception line, without Ray's wrapper noise
        if re.match(r"^[\w.]+(Error|Exception)\b", ln):
            return ln[:400]
    return (lines[-1] if lines else "unknown error")[:400]
