"""How the cost of one trial grows: number of tasks, buffer size, number of classes.

    python benchmarks/scaling.py [--quick]

MLP 100-100 on random MNIST-shaped vectors (the loop's cost does not depend on pixel values),
1 thread, 1 epoch per task, 10 new + 10 replayed samples a step. Each table varies one factor.
"""
from __future__ import annotations

import argparse
import time

import torch

from gradmix_tune.config import load_config
from gradmix_tune.data import Benchmark, Split
from gradmix_tune.learner import Hooks, Learner


def bench(classes: int, per_class: int, tasks: int) -> Benchmark:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(per_class)
    yt = torch.arange(classes).repeat_interleave(20)
    per = classes // tasks
    return Benchmark("random", Split(torch.randn(len(y), 784, generator=g), y),
                     Split(torch.randn(len(yt), 784, generator=g), yt), classes,
                     [list(range(t * per, (t + 1) * per)) for t in range(tasks)])


def trial_time(overrides: list[str], classes: int, per_class: int, tasks: int) -> tuple[float, float]:
    cfg = load_config(None, overrides + [f"data.tasks={tasks}", "train.threads=1"])
    learner = Learner(cfg, bench(classes, per_class, tasks))
    t0 = time.perf_counter()
    for t in range(tasks):
        learner.train_task(t, Hooks())
    total = time.perf_counter() - t0
    sel = sum(e["diagnostics"].get("selection_time_s", 0.0) for e in learner.epochs)
    return total, sel


def table(title: str, factor: str, rows: list[tuple]) -> None:
    print(f"\n### {title}\n")
    print(f"| {factor} | samples | er_mixup (s) | gradmix (s) | gradmix selection (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for value, n, (mix, _), (gm, sel) in rows:
        print(f"| {value} | {n} | {mix:.2f} | {gm:.2f} | {sel:.2f} | {gm / mix:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = 0.5 if args.quick else 1.0
    per_class = int(400 * q)

    rows = []
    for tasks in (2, 5, 10):  # 2 classes and the same data per task: linear in tasks
        arms = [trial_time([m], 2 * tasks, per_class, tasks) for m in ("method=er_mixup", "method=gradmix")]
        rows.append((tasks, 2 * tasks * per_class, *arms))
    table("Tasks (2 classes a task, buffer 500)", "tasks", rows)

    rows = []
    for size in (200, 1000, 5000):
        arms = [trial_time([m, f"memory.size={size}"], 10, per_class, 5) for m in ("method=er_mixup", "method=gradmix")]
        rows.append((size, 10 * per_class, *arms))
    table("Buffer size (10 classes, 5 tasks)", "memory.size", rows)

    rows = []
    for classes in (10, 50, 100):  # fixed total data: S refresh has classes^2/2 pairs
        pc = int(4000 * q) // classes
        arms = [trial_time([m, "memory.size=1000"], classes, pc, 10) for m in ("method=er_mixup", "method=gradmix")]
        rows.append((classes, classes * pc, *arms))
    table("Classes (10 tasks, same total data, buffer 1000)", "classes", rows)


if __name__ == "__main__":
    main()
