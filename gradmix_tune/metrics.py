"""Accuracy matrix -> the CIL summary numbers (definitions in DESIGN.md).

A[i][j] = test accuracy on task j's classes after training task i (0-based here).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

Matrix = Sequence[Sequence[float]]


def final_avg_acc(a: Matrix) -> float:
    t = len(a) - 1
    return sum(a[t][j] for j in range(t + 1)) / (t + 1)


def avg_incremental_acc(a: Matrix) -> float:
    """Mean over steps i of the mean accuracy on the tasks seen so far."""
    return sum(sum(a[i][j] for j in range(i + 1)) / (i + 1) for i in range(len(a))) / len(a)


def forgetting(a: Matrix) -> float:
    """Mean over old tasks j < T of max_{i<T} A[i][j] - A[T][j]; 0 with a single task."""
    t = len(a) - 1
    if t == 0:
        return 0.0
    return sum(max(a[i][j] for i in range(j, t)) - a[t][j] for j in range(t)) / t


def bwt(a: Matrix) -> float:
    """Backward transfer: mean over j < T of A[T][j] - A[j][j] (negative = forgetting)."""
    t = len(a) - 1
    if t == 0:
        return 0.0
    return sum(a[t][j] - a[j][j] for j in range(t)) / t


def summarize(a: Matrix, prefix: str = "") -> dict[str, float]:
    """The four CIL numbers of a matrix; prefix "val_" names the held-out twins."""
    return {f"{prefix}final_avg_acc": final_avg_acc(a), f"{prefix}avg_incremental_acc": avg_incremental_acc(a),
            f"{prefix}forgetting": forgetting(a), f"{prefix}bwt": bwt(a)}


def u_shape(curve: Sequence[float]) -> dict[str, float]:
    """Peak of a per-epoch accuracy curve and the drop from it to the end (Mixup's U-shaped
    generalisation curve: rises, then decays with long training). peak_epoch is 1-based;
    the first epoch wins ties so a flat curve has drop 0."""
    vals = [v for v in curve]
    if not vals:
        return {"peak_epoch": float("nan"), "peak_acc": float("nan"), "final_acc": float("nan"),
                "u_shape_drop": float("nan")}
    peak = max(range(len(vals)), key=lambda i: (vals[i], -i))
    return {"peak_epoch": float(peak + 1), "peak_acc": vals[peak], "final_acc": vals[-1],
            "u_shape_drop": vals[peak] - vals[-1]}


def curve_peak(steps: Sequence[int], accs: Sequence[float | None], epochs_per_task: int | None = None,
               task_of: Mapping[int, int] | None = None) -> dict:
    """`u_shape` of a seen-class accuracy curve over global epochs `steps`, within its last task
    (where the seen classes, hence the test set, no longer change): the same peak as the learner's
    peak_epoch, given here as its global epoch; also the mean within-task drop over all tasks. The
    task of a global epoch: `task_of[step]` when known, else (step - 1) // epochs_per_task."""
    pts = [(s, a) for s, a in zip(steps, accs) if a is not None and math.isfinite(a)]
    if not pts:
        return {"peak_epoch": None, "peak_acc": float("nan"), "final_acc": float("nan"), "drop": float("nan"),
                "mean_task_drop": float("nan")}
    e = epochs_per_task if epochs_per_task and epochs_per_task > 0 else len(pts)
    by_task: dict[int, list] = {}
    for s, a in pts:
        t = task_of.get(s) if task_of else None
        by_task.setdefault(int(t) if t is not None else (s - 1) // e, []).append((s, a))
    last = by_task[max(by_task)]
    u = u_shape([a for _, a in last])
    drops = [u_shape([a for _, a in v])["u_shape_drop"] for v in by_task.values()]
    return {"peak_epoch": int(last[int(u["peak_epoch"]) - 1][0]), "peak_acc": u["peak_acc"],
            "final_acc": u["final_acc"], "drop": u["u_shape_drop"], "mean_task_drop": sum(drops) / len(drops)}
