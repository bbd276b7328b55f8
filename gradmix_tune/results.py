"""Learner records -> flat result dicts: the one contract between the trainable (sweep),
the MLflow loggers (tracking) and the report (report); the one vocabulary of metric names.

Every dict has `kind` ("epoch" | "task") and only scalar values (lists go as JSON strings), so
Ray Tune, its schedulers and MLflow can take it as it is.

kind = "epoch" (after every epoch):
    task, epoch, global_epoch, seen_acc, loss, epoch_time_s, val_seen_acc (with a validation
    split), and with mixing the mixer's diagnostics (mixing.MixStats: frac_mixed,
    frac_current_mixed, new_class_label_weight, frac_pairs_helpful, pairs_helpful_<type>,
    decision_flip_rate, selection_time_s, refresh_time_s, refreshes); NaN ones are not logged
kind = "task" (after every task; carries the checkpoint):
    task, tasks_done, global_epoch, avg_acc, acc_task_<j> for j <= task, task_time_s,
    accuracy_matrix (JSON), and, on the last task only, final=1 (not `done`: Ray reserves it) plus
    final_avg_acc, avg_incremental_acc, forgetting, bwt, wall_time_s, s_matrix (JSON or ""),
    peak_epoch, peak_acc, u_shape_drop (the last task's per-epoch curve, metrics.u_shape)
    Task dicts also carry the task's diagnostics (proxy_drift; the mixing ones when mixing).
    A sweep's trial sends a task's epoch dicts inside its task dict, as the JSON list `epochs`
    (one report a task instead of one an epoch; `with_epochs` / `unpack`), unless its scheduler
    acts per epoch; kind = "epochs" carries the epochs of a task cut short (an error).
Every dict also has `avg_acc` (mean accuracy on tasks seen so far, the last task's value) so a
scheduler always finds its metric; with a validation split (data.val_fraction), `val_avg_acc` too
(its held-out twin; epoch dicts carry the last task's value, as for avg_acc), so ASHA can stop on
validation. With train.max_tasks = K the "last task" is the K-th: the final metrics cover K tasks.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import metrics

if TYPE_CHECKING:  # results.py stays torch-free: study parsing and reports import the vocabulary
    from .learner import EpochRecord, Learner, TaskRecord

# ---- the one vocabulary of metric names (sweep, tracking and report all read these)
# final metrics of a whole run -> the direction that is better (the study's `mode` default)
METRICS: dict[str, str] = {"final_avg_acc": "max", "avg_incremental_acc": "max", "forgetting": "min",
                           "bwt": "max", "wall_time_s": "min"}
ACCURACY_METRICS = ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt")  # METRICS less time
# their twins on the held-out part of each task's training data (data.val_fraction > 0): what a
# search may optimise; the test metrics above are only reported
VAL_METRICS: dict[str, str] = {f"val_{k}": v for k, v in METRICS.items() if k != "wall_time_s"}
SUMMARY_KEYS = tuple(METRICS)
CURVE_METRICS = ("peak_epoch", "peak_acc", "u_shape_drop")  # metrics.u_shape of the last task
FINAL_METRICS = SUMMARY_KEYS + CURVE_METRICS  # logged once, on the last task
# present in every intermediate result: what a scheduler (ASHA) may stop on (the val_ ones when the
# run holds out validation data); the first two are measured on the test split
SCHEDULER_METRICS = ("avg_acc", "seen_acc", "val_avg_acc", "val_seen_acc")
# task values that epoch results repeat (the last task's) for the scheduler: not per-epoch metrics
CARRIED = ("avg_acc", "val_avg_acc")
EPOCH_METRICS = ("seen_acc", "loss", "epoch_time_s")  # plus the diagnostics a mixer reports
LABELS = {"final_avg_acc": "final average accuracy", "avg_incremental_acc": "average incremental accuracy",
          "forgetting": "forgetting", "bwt": "backward transfer (BWT)", "wall_time_s": "wall time (s)"}
# result bookkeeping, never a metric
EPOCHS = "epochs"  # a task result's epoch results (JSON list): one report a task in a sweep
BOOKKEEPING = ("kind", "task", "tasks_done", "global_epoch", "epoch", "final", "accuracy_matrix", "s_matrix",
               EPOCHS, "restore_note")
# what Ray Tune adds to every reported result (and the sweep's trial index): never a metric either
TUNE_KEYS = ("done", "index", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
             "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
             "timesteps_since_restore", "pid", "date", "hostname", "node_ip", "trial_id", "experiment_id",
             "should_checkpoint", "checkpoint_dir_name", "experiment_tag", "config")
NOT_METRICS = frozenset(BOOKKEEPING + TUNE_KEYS)


def _clean(v: Any) -> float:
    return float("nan") if v is None else float(v)


def is_test_metric(name: str) -> bool:
    """A metric measured on the test split (what a search must not select on): the accuracy
    metrics and the scheduler's avg_acc / seen_acc, not their val_ twins nor wall time."""
    return name in ACCURACY_METRICS or name in ("avg_acc", "seen_acc")


def epoch_result(rec: "EpochRecord", last_avg_acc: float, last_val_avg_acc: float | None = None) -> dict:
    """`last_val_avg_acc`: the last task's val_avg_acc when the run has a validation split (None: none)."""
    out = {"kind": "epoch", "task": rec.task, "epoch": rec.epoch, "global_epoch": rec.global_epoch,
           "seen_acc": rec.seen_acc, "loss": rec.loss, "epoch_time_s": rec.time_s, "avg_acc": last_avg_acc}
    if last_val_avg_acc is not None:
        out["val_avg_acc"] = last_val_avg_acc
    out.update({k: _clean(v) for k, v in rec.diagnostics.items()})
    return out


def task_result(rec: "TaskRecord", learner: "Learner") -> dict:
    """The dict for one finished task; `learner` is what Hooks.on_task receives."""
    acc, num_tasks, s_matrix = learner.acc, learner.num_tasks, learner.s_matrix()  # num_tasks: trained
    global_epoch, wall_time_s = len(learner.epochs), learner.elapsed
    out = {"kind": "task", "task": rec.task, "tasks_done": rec.task + 1, "global_epoch": global_epoch,
           "avg_acc": rec.avg_acc, "task_time_s": rec.time_s, "accuracy_matrix": json.dumps(acc)}
    out.update({f"acc_task_{j}": a for j, a in enumerate(rec.accuracies)})
    if rec.val_accuracies:  # the held-out twins, so a scheduler can stop on validation
        out["val_avg_acc"] = sum(rec.val_accuracies) / len(rec.val_accuracies)
        out.update({f"val_acc_task_{j}": a for j, a in enumerate(rec.val_accuracies)})
    out.update({k: _clean(v) for k, v in rec.diagnostics.items()})
    if rec.task + 1 == num_tasks:
        out.update(metrics.summarize(acc))
        if learner.val_acc:
            out.update(metrics.summarize(learner.val_acc, prefix="val_"))
        u = learner.u_shape()
        out.update({"peak_epoch": u["peak_epoch"], "peak_acc": u["peak_acc"], "u_shape_drop": u["u_shape_drop"]})
        out.update({"final": 1, "wall_time_s": wall_time_s,
                    "s_matrix": json.dumps(s_matrix) if s_matrix is not None else ""})
    return out



def with_epochs(result: dict, epochs: list[dict]) -> dict:
    """`result` (a task dict, or None: kind "epochs" for the epochs of a task cut short) carrying
    `epochs` as a JSON list, so one report sends them all; see `unpack`."""
    if result is None:
        last = epochs[-1]
        result = {"kind": "epochs", **{k: last[k] for k in SCHEDULER_METRICS + ("global_epoch",) if k in last}}
    if epochs:
        result[EPOCHS] = json.dumps(epochs)
    return result


def unpack(result: dict) -> list[dict]:
    """The results one report carries, in the order they happened: its epoch dicts (if `epochs`),
    then itself without them (nothing more for kind "epochs")."""
    if EPOCHS not in result:
        return [result]
    try:
        epochs = json.loads(result[EPOCHS])
    except (TypeError, ValueError):
        epochs = []
    rest = {k: v for k, v in result.items() if k != EPOCHS}
    return [e for e in epochs if isinstance(e, dict)] + ([] if rest.get("kind") == "epochs" else [rest])
