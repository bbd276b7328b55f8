"""Reading a study from MLflow: its parent run and ablation file, one finished child run per (arm, seed).

Definitions: arm = the trials of one grid point (factor values), repeated over seeds; a trial
counts once (its latest FINISHED run); failed or unfinished trials are listed apart. Method of a
trial = its swept `method`, else the config's `method`, else `mixing.selection`. The ablation
file is the parent run's `ablation.yaml` artifact (its header comment states the question).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..tracking.store import PARENT, ROLE, method_of


@dataclass
class TrialRun:
    run_id: str
    name: str
    status: str
    start_time: int
    arm: str
    seed: Any
    method: str
    factors: dict
    others: tuple  # the factors other than the method, as ((key, value), ...)
    metrics: dict
    acc_matrix: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # [(global_epoch, seen_acc)]
    task_of: dict = field(default_factory=dict)  # global_epoch -> task
    epochs_per_task: int | None = None
    error: str = ""
    trial_id: str = ""
    params: dict = field(default_factory=dict)  # the flattened experiment config, as MLflow keeps it
    tags: dict = field(default_factory=dict)  # the run's MLflow tags (e.g. phase, tune_arm: report/tuning.py)


@dataclass
class StudyRuns:
    study: str
    experiment: str
    experiment_id: str
    parent_id: str
    parent_tags: dict
    runs: list  # one FINISHED run per (arm, seed)
    failed: list  # trials without a finished run: FAILED, KILLED or still RUNNING
    ablation_text: str = ""  # the ablation file as the sweep read it ("" when not logged)


class ReportError(Exception):
    pass


def _search_all(client, exp_ids: list[str], filt: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filt, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        out.extend(page)
        token = page.token
        if not token:
            return out


def _parse_seed(s: Any) -> Any:
    try:
        return int(s)
    except (TypeError, ValueError):
        return s


def jkey(v: Any) -> str:
    """A value as a hashable, sortable key (seeds and factor values may be of any JSON type)."""
    return json.dumps(v, sort_keys=True, default=str)


def load_study(client, study: str, experiment: str | None = None, parent_run_id: str | None = None) -> StudyRuns:
    """The study's latest parent run (or `parent_run_id`) and its child runs, from MLflow."""
    exp_name = experiment or study
    parent = None
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        exp = client.get_experiment(parent.info.experiment_id)
    else:
        exp = client.get_experiment_by_name(exp_name)
        filt = f"tags.study = '{study}' and tags.`{ROLE}` = 'parent'"
        if exp is not None:
            found = client.search_runs([exp.experiment_id], filt, max_results=1,
                                       order_by=["attributes.start_time DESC"])
            parent = found[0] if found else None
        if parent is None and experiment is None:  # the study may live in an experiment of another name
            ids = [e.experiment_id for e in client.search_experiments()]
            found = client.search_runs(ids, filt, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
            if found:
                parent = found[0]
                exp = client.get_experiment(parent.info.experiment_id)
    if parent is None:
        raise ReportError(f"no study '{study}' in experiment '{exp_name}'")
    pid = parent.info.run_id
    children = _search_all(client, [exp.experiment_id], f"tags.`{PARENT}` = '{pid}'")
    trials: list[TrialRun] = []
    for r in children:
        t, p, m = r.data.tags, r.data.params, r.data.metrics
        try:
            factors = json.loads(t.get("factors") or "{}")
        except ValueError:
            factors = {}
        cfg_method = p.get("method", "")
        method = t.get("method") or method_of(factors, {"method": cfg_method,
                                                        "mixing": {"selection": p.get("mixing.selection")}})
        skip = {"method"}
        if "method" not in factors and not cfg_method:
            skip.add("mixing.selection")  # the method is named by its selection
        others = tuple(sorted((k, v) for k, v in factors.items() if k not in skip))
        try:
            ept = int(p.get("train.epochs", "")) or None
        except ValueError:
            ept = None
        trials.append(TrialRun(run_id=r.info.run_id, name=r.info.run_name or "", status=r.info.status,
                               start_time=r.info.start_time or 0, arm=t.get("arm") or r.info.run_name or "",
                               seed=_parse_seed(t.get("seed")), method=method, factors=factors,
                               others=others, metrics=dict(m), epochs_per_task=ept,
                               error=t.get("error", ""), trial_id=t.get("trial_id", ""), params=dict(p),
                               tags=dict(t)))
    # one run per (arm, seed): the latest finished; the others count as failed only without one
    best: dict[tuple, TrialRun] = {}
    for tr in sorted(trials, key=lambda x: x.start_time):
        if tr.status == "FINISHED":
            best[(tr.arm, jkey(tr.seed))] = tr
    failed = [tr for tr in trials if tr.status != "FINISHED" and (tr.arm, jkey(tr.seed)) not in best]
    runs = sorted(best.values(), key=lambda x: (x.arm, jkey(x.seed)))
    for tr in runs:
        _load_histories(client, tr)
    return StudyRuns(study=study, experiment=exp.name, experiment_id=exp.experiment_id, parent_id=pid,
                     parent_tags=dict(parent.data.tags), runs=runs,
                     failed=sorted(failed, key=lambda x: (x.arm, jkey(x.seed))),
                     ablation_text=_ablation_text(client, pid))


def _ablation_text(client, run_id: str) -> str:
    """The parent run's ablation.yaml artifact, or "" (older studies, unreachable artifact store)."""
    try:
        if not any(f.path == "ablation.yaml" for f in client.list_artifacts(run_id)):
            return ""
        with tempfile.TemporaryDirectory() as d, _no_progress_bar():
            path = client.download_artifacts(run_id, "ablation.yaml", d)
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
    except Exception:  # noqa: BLE001 - the report goes on without the question
        return ""


@contextmanager
def _no_progress_bar():
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    """The MLflow UI page of a run: on the tracking server itself for an http(s) store, else on
    `ui_url` (default http://127.0.0.1:5000, what `gradmix-tune ui` serves for a local store)."""
    base = ui_url or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


LOCAL_UI = "http://127.0.0.1:5000"


def _load_histories(client, tr: TrialRun) -> None:
    """Accuracy matrix from the task/acc_task_<j> histories (j and step 1-based: step i = after task
    i) and the seen-class accuracy curve epoch/seen_acc (step = global epoch), with epoch/task (1-based)
    naming each epoch's task. Runs logged before the task/ and epoch/ prefixes (acc_task_<j> 0-based,
    seen_acc, task 0-based) are read too."""
    new = {int(m.group(1)) - 1: k for k in tr.metrics if (m := re.fullmatch(r"task/acc_task_(\d+)", k))}
    old = {int(m.group(1)): k for k in tr.metrics if (m := re.fullmatch(r"acc_task_(\d+)", k))}
    keys = new or old
    hist: dict[int, dict[int, float]] = {}
    for j, k in sorted(keys.items()):
        for m in client.get_metric_history(tr.run_id, k):
            hist.setdefault(m.step, {})[j] = m.value
    if hist:
        t = max(max(hist), len(keys))
        tr.acc_matrix = [[hist.get(i + 1, {}).get(j) for j in range(i + 1)] for i in range(t)]
    prefixed = "epoch/seen_acc" in tr.metrics or "epoch/task" in tr.metrics
    curve, task = ("epoch/seen_acc", "epoch/task") if prefixed else ("seen_acc", "task")
    tr.curve = sorted({m.step: m.value for m in client.get_metric_history(tr.run_id, curve)}.items())
    tr.task_of = {m.step: int(m.value) - prefixed for m in client.get_metric_history(tr.run_id, task)}
