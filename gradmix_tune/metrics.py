"""Accuracy matrix -> the CIL summary numbers (definitions in DESIGN.md).

A[i][j] = test accuracy on task j's classes after training task i (0-based here).
"""
from __future__ import annotations

from typing import Sequence

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


def summarize(a: Matrix) -> dict[str, float]:
    return {"final_avg_acc": final_avg_acc(a), "avg_incremental_acc": avg_incremental_acc(a),
            "forgetting": forgetting(a), "bwt": bwt(a)}


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
