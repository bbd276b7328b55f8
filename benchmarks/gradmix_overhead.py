"""Training time per epoch of GradMix and its variants over ER+Mixup, measured in one run.

    python benchmarks/gradmix_overhead.py [--quick] [--data-root ../shared/data]

Same model, data, seed and thread count for every arm; arms are interleaved (round robin) and
the median epoch time of task 2 (where the buffer holds old classes and GradMix selects) is kept.
MLP on real MNIST (random MNIST-shaped data when it is absent); reduced ResNet-18 on
CIFAR-shaped random tensors (the loop's cost does not depend on pixel values).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from gradmix_tune.config import load_config
from gradmix_tune.data import Benchmark, Split
from gradmix_tune.learner import Hooks, Learner

ROOT = Path(__file__).resolve().parent.parent

ARMS = [
    ("er_mixup", ["method=er_mixup"]),
    ("gradmix, refresh every epoch", ["method=gradmix", "mixing.refresh_every=epoch"]),
    ("gradmix, refresh every 10 steps (default)", ["method=gradmix", "mixing.refresh_every=10"]),
    ("gradmix, refresh every step", ["method=gradmix", "mixing.refresh_every=1"]),
    ("gradmix_sample (per-sample criterion)", ["method=er_mixup", "mixing.selection=gradient_sample",
                                               "mixing.refresh_every=10"]),
]


def random_bench(shape, n_train_per_class, classes=10, tasks=5) -> Benchmark:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n_train_per_class)
    x = torch.randn(len(y), *shape, generator=g)
    yt = torch.arange(classes).repeat_interleave(100)
    xt = torch.randn(len(yt), *shape, generator=g)
    per = classes // tasks
    return Benchmark("random", Split(x, y), Split(xt, yt), classes,
                     [list(range(t * per, (t + 1) * per)) for t in range(tasks)])


def time_arm(base: list[str], extra: list[str], bench_fn, repeats_epochs: int) -> float:
    cfg = load_config(None, base + extra + [f"train.epochs={repeats_epochs}"])
    learner = Learner(cfg, bench_fn(cfg))
    times = []
    learner.train_task(0, Hooks())
    learner.train_task(1, Hooks(on_epoch=lambda r: times.append(r.time_s)))
    return statistics.median(times)


def run_setting(name, base, bench_fn, rounds, epochs) -> list[tuple[str, float]]:
    results: dict[str, list[float]] = {a: [] for a, _ in ARMS}
    for _ in range(rounds):
        for arm, extra in ARMS:
            results[arm].append(time_arm(base, extra, bench_fn, epochs))
    med = {a: statistics.median(v) for a, v in results.items()}
    ref = med["er_mixup"]
    print(f"\n### {name}\n")
    print("| arm | epoch time (s) | ratio to er_mixup |")
    print("|---|---|---|")
    for arm, _ in ARMS:
        print(f"| {arm} | {med[arm]:.3f} | {med[arm] / ref:.2f}x |")
    return list(med.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = 1 if args.quick else 3
    mnist_ok = (Path(args.data_root) / "MNIST/raw/train-images-idx3-ubyte").exists()
    if mnist_ok:
        base = ["data.name=mnist", f"data.root={args.data_root}", "train.threads=1"]
        bench_fn = None
        from gradmix_tune.data import load_benchmark

        cache = {}

        def bench_fn(cfg):  # load MNIST once, reuse the tensors for every arm
            if "b" not in cache:
                cache["b"] = load_benchmark(cfg)
            return cache["b"]
    else:
        base = ["train.threads=1"]
        bench_fn = lambda cfg: random_bench((1, 28, 28), 6000)  # noqa: E731
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores")
    run_setting("MLP 100-100 on MNIST (task 2 of 5, 12k samples/epoch, batch 10+10)", base, bench_fn,
                rounds, 2 if args.quick else 3)
    per_class = 100 if args.quick else 250
    run_setting(f"reduced ResNet-18 (nf=20) on CIFAR-shaped data (task 2 of 5, {2 * per_class} samples/epoch)",
                ["model.name=reduced_resnet18", "train.threads=1"],
                lambda cfg: random_bench((3, 32, 32), per_class), rounds, 2)


if __name__ == "__main__":
    main()
