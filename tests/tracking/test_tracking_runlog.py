"""RunLog: which values of a run's result dicts become which MLflow metrics, at which step, and
the figures it queues. Only the writer's queue is read: no MLflow needed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gradmix_tune.results import FINAL_METRICS
from gradmix_tune.tracking import RunLog, Writer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rl():
    w = Writer("http://127.0.0.1:1", "never-sent")
    yield RunLog(w, "run")
    shutil.rmtree(w.tmpdir, ignore_errors=True)


def logged(rl) -> list[tuple]:
    """(name, value, step, group) of every queued metric, in order."""
    return [(m[0], m[1], m[3], m[4]) for op in rl.w.pending if op[0] == "log" for m in op[2]["metrics"]]


def epoch(task, ep, g, seen, **extra) -> dict:
    return {"kind": "epoch", "task": task, "epoch": ep, "global_epoch": g, "seen_acc": seen, "loss": 1.0 / g,
            "epoch_time_s": 0.1, "avg_acc": 0.5, "training_iteration": g, "time_total_s": 3.0, **extra}


def task(t, tasks, final=False, **extra) -> dict:
    r = {"kind": "task", "task": t, "tasks_done": t + 1, "global_epoch": 2 * (t + 1), "avg_acc": 0.7,
         "task_time_s": 1.5, "accuracy_matrix": json.dumps([[0.9], [0.6, 0.8]][: t + 1]),
         **{f"acc_task_{j}": 0.8 for j in range(t + 1)}, "training_iteration": 9, "done": False, **extra}
    if final:
        r.update({"final": 1, "final_avg_acc": 0.7, "avg_incremental_acc": 0.8, "forgetting": 0.3, "bwt": -0.3,
                  "wall_time_s": 4.0, "peak_epoch": 1.0, "peak_acc": 0.9, "u_shape_drop": 0.1,
                  "s_matrix": json.dumps([[0.1, -0.2], [None, 0.3]])})
    return r


def test_epoch_results_log_every_finite_number_per_global_epoch(rl):
    rl.result(epoch(0, 0, 1, 0.8, frac_mixed=0.4, some_new_diagnostic=2.0, nan_one=float("nan"), flag=True))
    got = {(n, s, g): v for n, v, s, g in logged(rl)}
    assert {n for n, _, _ in got} == {"epoch/seen_acc", "epoch/loss", "epoch/epoch_time_s", "epoch/frac_mixed",
                                      "epoch/some_new_diagnostic", "epoch/task"}, \
        "no bookkeeping, no Ray keys, no avg_acc, nothing non-finite; one prefix per x axis"
    assert all(s == 1 and g == "epoch" for _, s, g in got)
    assert got[("epoch/some_new_diagnostic", 1, "epoch")] == 2.0
    assert got[("epoch/task", 1, "epoch")] == 1, "tasks counted from 1, as the console does"


def test_an_epoch_reported_again_is_logged_once(rl):
    rl.result(epoch(0, 0, 1, 0.8))
    rl.result(epoch(0, 1, 2, 0.85))
    n = len(logged(rl))
    rl.result(epoch(0, 1, 2, 0.85))  # a resumed trial reports it again
    assert len(logged(rl)) == n and sorted(rl.curve) == [1, 2]


def test_task_results_log_what_no_epoch_logged_per_task(rl):
    diag = {"frac_mixed": 0.4, "refresh_time_s": 0.01}
    rl.result(epoch(0, 0, 1, 0.8, **diag))
    rl.result(epoch(0, 1, 2, 0.85, **diag))
    rl.result(task(0, 2, proxy_drift=0.0, **diag))  # the task repeats its last epoch's diagnostics
    per_task = {n for n, _, s, g in logged(rl) if g == "task"}
    assert per_task == {"task/avg_acc", "task/task_time_s", "task/acc_task_1", "task/proxy_drift"}
    assert all(s == 1 for n, _, s, g in logged(rl) if g == "task")
    assert [s for n, _, s, _ in logged(rl) if n == "epoch/refresh_time_s"] == [1, 2], "one step axis per metric"
    assert not [n for n, _, _, _ in logged(rl) if n == "task/refresh_time_s"]


def test_final_metrics_are_logged_once_at_the_last_task(rl):
    rl.result(task(0, 2))
    rl.result(task(1, 2, final=True))
    rl.result(task(1, 2, final=True))  # reported again after a resume
    final = [(n, s) for n, _, s, g in logged(rl) if g == "final"]
    assert sorted(final) == sorted((k, 0) for k in FINAL_METRICS), "plain names, step 0: bars in the UI's charts"
    assert not {n.removeprefix("task/") for n, _, _, g in logged(rl) if g == "task"} & set(FINAL_METRICS)
    assert [s for n, _, s, g in logged(rl) if n == "task/avg_acc"] == [1, 2]
    assert [(n, s) for n, _, s, _ in logged(rl) if "acc_task" in n] == \
        [("task/acc_task_1", 1), ("task/acc_task_1", 2), ("task/acc_task_2", 2)], "task j and step 1-based"


def test_validation_twins_keep_their_families(rl):
    rl.result(task(0, 2, val_avg_acc=0.6, val_acc_task_0=0.6))
    rl.result(task(1, 2, final=True, val_avg_acc=0.5, val_acc_task_0=0.4, val_acc_task_1=0.6,
                   val_final_avg_acc=0.5, val_forgetting=0.2))
    got = {(n, s, g) for n, _, s, g in logged(rl)}
    assert {("task/val_avg_acc", 2, "task"), ("task/val_acc_task_2", 2, "task"),
            ("val_final_avg_acc", 0, "final"), ("val_forgetting", 0, "final")} <= got


def test_figures_are_queued_as_png_artifacts(rl):
    for g, (t, acc) in enumerate([(0, 0.8), (0, 0.9), (1, 0.7), (1, 0.6)], start=1):
        rl.result(epoch(t, (g - 1) % 2, g, acc))
    rl.result(task(1, 2, final=True))
    rl.figures(fetch_history=False)
    files = {Path(op[2]["file"]).name: Path(op[2]["file"]) for op in rl.w.pending if op[0] == "artifact"}
    assert set(files) == {"accuracy_matrix.json", "accuracy_matrix.png", "s_matrix.png", "curve.png"}
    assert json.loads(files["accuracy_matrix.json"].read_text()) == [[0.9], [0.6, 0.8]]
    for name in ("accuracy_matrix.png", "s_matrix.png", "curve.png"):
        assert files[name].read_bytes()[:8] == PNG


def test_end_with_an_error_keeps_the_traceback_and_its_last_line(rl):
    rl.end("FAILED", "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n\n")
    ops = list(rl.w.pending)
    assert [op[0] for op in ops] == ["artifact", "log", "end"] and rl.ended == "FAILED"
    assert Path(ops[0][2]["file"]).name == "error.txt"
    assert ops[1][2]["tags"]["error"] == "RuntimeError: boom" and ops[2][2] == {"status": "FAILED"}


def test_a_task_result_carrying_its_epochs_logs_what_per_epoch_reports_log():
    """A sweep's trial sends a task's epoch results inside the task's result (results.with_epochs,
    one Ray report a task): unpacked, they give the same metrics at the same steps, in the same order."""
    from gradmix_tune.results import unpack, with_epochs

    ws = [Writer("http://127.0.0.1:1", "never-sent") for _ in range(2)]
    try:
        per_epoch, batched = RunLog(ws[0], "run"), RunLog(ws[1], "run")
        for t in range(2):
            eps = [epoch(t, e, 2 * t + e + 1, 0.5 + 0.1 * e, frac_mixed=0.2 * e, nan_one=float("nan"))
                   for e in range(2)]
            for e in eps:
                per_epoch.result(e)
            per_epoch.result(task(t, 2, final=t == 1))
            # what Ray stores and hands back: JSON (NaN included)
            sent = json.loads(json.dumps(with_epochs(task(t, 2, final=t == 1), [dict(e) for e in eps])))
            assert [r["kind"] for r in unpack(sent)] == ["epoch", "epoch", "task"]
            for r in unpack(sent):
                batched.result(r)
        strip = [(n, v, s, g) for n, v, s, g in logged(per_epoch)]
        assert [(n, v, s, g) for n, v, s, g in logged(batched)] == strip
        assert batched.curve == per_epoch.curve
        # the epochs of a task cut short (an error) come as kind "epochs": logged, no task result
        cut = with_epochs(None, [epoch(2, 0, 5, 0.4)])
        assert cut["kind"] == "epochs" and cut["avg_acc"] == 0.5
        assert [r["kind"] for r in unpack(cut)] == ["epoch"]
    finally:
        for w in ws:
            shutil.rmtree(w.tmpdir, ignore_errors=True)
