"""Synthetic studies in a real sqlite MLflow store, written with the real MlflowClient the way the
sweep's StudyLogger tags them (parent run + ablation.yaml artifact, one child run per arm and seed),
with hand-chosen final metrics so that every number of a report can be checked by hand.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

# Study "syn_digits": 3 methods x 2 buffer sizes x 3 seeds, 1 epoch per task, final_avg_acc per seed.
# Paired differences (same seed) are round numbers: gradmix - er_mixup at 100 = .02, .04, .03.
DIGITS = {
    ("er_mixup", 100): [0.700, 0.720, 0.740],
    ("gradmix", 100): [0.720, 0.760, 0.770],
    ("er", 100): [0.690, 0.700, 0.710],
    ("er_mixup", 200): [0.780, 0.801, 0.819],  # er_mixup@100 + .080, .081, .079: a clear buffer effect
    ("gradmix", 200): [0.790, 0.821, 0.819],  # er_mixup@200 + .01, .02, .00
    ("er", 200): [0.770, 0.791, 0.839],  # er_mixup@200 - .01, -.01, +.02
}
DIGITS_YAML = """# Question: does GradMix beat ER and ER+Mixup on synthetic digits, and does the
# answer change with the buffer size?
# 3 methods x 2 buffer sizes x 3 seeds = 18 runs.
# Time: none, the runs are written by the test.
name: syn_digits
base: {data: {name: digits}}
grid:
  method: [er, er_mixup, gradmix]
  memory.size: [100, 200]
seeds: [0, 1, 2]
metric: final_avg_acc
mode: max
"""
# Study "syn_mnist": the same methods at buffer 100 only, 5 seeds, 2 epochs per task, and the
# ablation names its baseline. er's CI (t) would run past 1.0 without clipping.
MNIST = {
    ("er", 100): [0.990, 0.850, 0.999, 0.900, 0.980],
    ("er_mixup", 100): [0.950, 0.840, 0.960, 0.880, 0.950],
    ("gradmix", 100): [0.970, 0.860, 0.985, 0.905, 0.975],
}
MNIST_YAML = """# Question: the same on synthetic MNIST?
name: syn_mnist
baseline: er
base: {data: {name: mnist}}
grid:
  method: [er, er_mixup, gradmix]
  memory.size: [100]
seeds: [0, 1, 2, 3, 4]
"""
SELECTION = {"er": "none", "er_mixup": "random", "gradmix": "gradient"}
WALL = {"er": 1.0, "er_mixup": 1.2, "gradmix": 1.8}


def others(final: float, method: str, seed: int) -> dict:
    """The other final metrics, simple functions of the study metric."""
    forgetting = round(0.2 - (final - 0.7) / 2, 6)
    return {"avg_incremental_acc": final + 0.05, "forgetting": forgetting, "bwt": -forgetting,
            "wall_time_s": WALL[method] + 0.01 * seed}


def write_study(uri: str, name: str, values: dict, yaml_text: str, seeds: list[int], epochs: int = 1,
                failed: tuple | None = None, artifact_root: Path | None = None) -> str:
    """Write one study; returns its parent run id. `failed` = (method, size, seed) of an extra
    FAILED child run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else c.create_experiment(
        name, artifact_location=(artifact_root / name).as_uri() if artifact_root else None)
    methods = list(dict.fromkeys(m for m, _ in values))
    sizes = list(dict.fromkeys(s for _, s in values))
    parent = c.create_run(exp_id, run_name=name, tags={
        "study": name, "gradmix.role": "parent", "ablation": f"ablations/{name}.yaml", "metric": "final_avg_acc",
        "mode": "max", "grid": json.dumps({"method": methods, "memory.size": sizes}), "seeds": json.dumps(seeds),
        "git_commit": "0" * 40, "command": f"gradmix-tune ablations/{name}.yaml"})
    pid = parent.info.run_id
    c.log_text(pid, yaml_text, "ablation.yaml")
    tasks = 2
    now = int(time.time() * 1000)

    def child(method, size, seed, final, status):
        arm = f"method={method} memory.size={size}"
        factors = {"method": method, "memory.size": size}
        tags = {"mlflow.parentRunId": pid, "study": name, "arm": arm, "seed": str(seed), "method": method,
                "gradmix.role": "trial", "trial_id": f"{method}_{size}_{seed}", "factors": json.dumps(factors),
                "factor.method": method, "factor.memory.size": str(size)}
        if status == "FAILED":
            tags["error"] = "RuntimeError: injected"
        r = c.create_run(exp_id, run_name=f"{arm} seed={seed}", tags=tags)
        params = {"method": method, "memory.size": size, "mixing.selection": SELECTION[method], "seed": seed,
                  "train.epochs": epochs, "data.name": name.split("_")[1], "model.hidden": "[32]", "data.path": ""}
        ms = []
        if status == "FINISHED":
            fin = {"final_avg_acc": final, **others(final, method, seed)}
            ms += [Metric(k, v, now, tasks) for k, v in fin.items()]
            # the accuracy matrix: A[0][0] then A[1][0], A[1][1]; its mean row is `final`
            ms += [Metric("acc_task_0", final + 0.1, now, 1), Metric("acc_task_0", final - 0.05, now, 2),
                   Metric("acc_task_1", final + 0.05, now, 2)]
            for g in range(1, tasks * epochs + 1):  # per-epoch seen-class accuracy, step = global epoch
                task = (g - 1) // epochs
                ms += [Metric("seen_acc", final + 0.01 * ((g - 1) % epochs), now, g), Metric("task", task, now, g)]
        c.log_batch(r.info.run_id, metrics=ms, params=[Param(k, str(v)) for k, v in params.items()],
                    tags=[RunTag("gradmix.steps", "{}")])
        c.set_terminated(r.info.run_id, status)

    for (method, size), vals in values.items():
        for seed, v in zip(seeds, vals):
            child(method, size, seed, v, "FINISHED")
    if failed:
        child(*failed, None, "FAILED")
    c.set_terminated(pid, "FINISHED")
    return pid


SEARCH_YAML = """# Question: {question}
name: {name}
base: {{data: {{name: digits, tasks: 5}}}}
search: {{space: sgd.yaml, num_samples: {n}}}
evaluate: {{seeds: [10, 11, 12], top: 2, set: {{data.class_order_seed: 1}}}}
scheduler: {scheduler}
metric: {metric}
mode: {mode}
"""


def write_search(uri: str, name: str, tune: dict, *, metric: str = "val_final_avg_acc", mode: str = "max",
                 scheduler: str = "{type: asha, time_attr: tasks_done, grace_period: 1}", evaluate: dict | None = None,
                 failed: tuple = (), question: str = "which learning rate, honestly?") -> str:
    """A searched study the way the sweep tags it (phase=tune / evaluate, tune_rank, tune_arm); returns
    its parent run id. `tune`: learning rate -> the final metrics of its tuning run (seed 0), or None
    for a run ASHA stopped after its first task (FINISHED, only the intermediate val_avg_acc and
    avg_acc logged). `failed`: learning rates whose tuning run FAILED before any result.
    `evaluate`: tune_rank -> (learning rate, {seed: final_avg_acc}), arms "evaluate #<rank>"."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    c = MlflowClient(uri)
    exp_id = c.create_experiment(name)
    pid = c.create_run(exp_id, run_name=name, tags={
        "study": name, "gradmix.role": "parent", "ablation": f"ablations/{name}.yaml", "metric": metric,
        "mode": mode, "grid": "{}", "seeds": "[0]"}).info.run_id
    c.log_text(pid, SEARCH_YAML.format(name=name, n=len(tune) + len(failed), scheduler=scheduler, metric=metric,
                                       mode=mode, question=question), "ablation.yaml")
    now = int(time.time() * 1000)

    def child(arm, seed, lr, metrics, step, extra, status="FINISHED"):
        t = {"mlflow.parentRunId": pid, "study": name, "arm": arm, "seed": str(seed), "method": "er_mixup",
             "gradmix.role": "trial", "trial_id": f"{arm}-{seed}", "factors": json.dumps({"train.lr": lr}), **extra}
        r = c.create_run(exp_id, run_name=f"er_mixup {arm} seed={seed}", tags=t)
        params = {"train.lr": lr, "data.tasks": 5, "data.val_fraction": 0.1 if extra["phase"] == "tune" else "None",
                  "data.class_order_seed": 0 if extra["phase"] == "tune" else 1, "seed": seed}
        c.log_batch(r.info.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()])
        c.set_terminated(r.info.run_id, status)

    for lr, final in tune.items():
        stopped = {"val_avg_acc": 0.3, "avg_acc": 0.35, "tasks_done": 1}  # what a trial stopped after task 1 has
        child(f"train.lr={lr}", 0, lr, stopped if final is None else final, 1 if final is None else 5,
              {"phase": "tune"})
    for lr in failed:
        child(f"train.lr={lr}", 0, lr, {}, 0, {"phase": "tune", "error": "RuntimeError: injected"}, "FAILED")
    for rank, (lr, tests) in (evaluate or {}).items():
        for seed, v in tests.items():
            child(f"evaluate #{rank}", seed, lr, {"final_avg_acc": v}, 5,
                  {"phase": "evaluate", "tune_rank": str(rank), "tune_arm": f"train.lr={lr}", "tune_trial": "0"})
    c.set_terminated(pid, "FINISHED")
    return pid
