"""Training steps per second of the learner's loop vs the pure step of the same model and batch.

    .venv/bin/python benchmarks/step_time.py            # a few hundred steps per case
    .venv/bin/python benchmarks/step_time.py --quick    # a short run (smoke test)
    .venv/bin/python benchmarks/step_time.py --models mlp --repeats 5   # one case, more timings

Cases: mlp on MNIST shape (real MNIST when <data root>/MNIST/raw exists, else random tensors of
that shape) and reduced_resnet18 on CIFAR shape (random 3x32x32 tensors, 10 classes). A batch is
10 new samples + 10 replayed from a buffer that already holds the first task (plain ER).

Columns, all measured in this one run on the same model, optimizer and batch size:
  pure        forward + cross-entropy + backward + optimizer step on one fixed 20-sample batch
  _step       Learner._batch + Learner._step, step by step (the path of every method but plain ER):
              replay sampling and the batch's gather, then the same step
  train_task  Learner.train_task on a task of exactly `steps` batches: the batches (plain ER: a chunk
              of steps planned ahead, gathered in one index op), _step, buffer insertion, loss
              bookkeeping and the end-of-task evaluation (small test set)
  overhead    pure / train_task steps per second (1.0 = the loop costs nothing on top)
Each number is the best of --repeats timings, the cases interleaved, to damp noise from other
processes. Threads default to 1 (shared machines); --threads 0 keeps torch's default. --clock cpu
times this process's CPU seconds instead of wall seconds: on cores shared with other jobs it
leaves out the time spent waiting for a core (with one thread; more threads add up their CPU time).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gradmix_tune.config import load_config
from gradmix_tune.data import Benchmark, Split, load_benchmark
from gradmix_tune.learner import Hooks, Learner

REPO = Path(__file__).resolve().parent.parent
BATCH, REPLAY = 10, 10


def default_data_root() -> str:
    return os.environ.get("GRADMIX_DATA_ROOT") or str((REPO / ".." / "shared" / "data").resolve())


def random_benchmark(shape: tuple[int, ...], per_class: int, classes: int = 10, seed: int = 0) -> Benchmark:
    """Random tensors in two tasks of classes // 2 classes, per_class training samples each:
    task 0 fills the buffer, task 1 (classes // 2 * per_class samples) is the one timed."""
    g = torch.Generator().manual_seed(seed)
    half = classes // 2
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.randn(len(y), *shape, generator=g)
    yt = torch.arange(classes).repeat_interleave(5)
    xt = torch.randn(len(yt), *shape, generator=g)
    return Benchmark("random", Split(x, y), Split(xt, yt), classes,
                     [list(range(half)), list(range(half, classes))])


def config(model: str, args, extra: list[str] = ()):
    return load_config(None, [f"model.name={model}", f"train.batch_size={BATCH}", f"memory.replay_batch_size={REPLAY}",
                              "memory.size=500", "train.epochs=1", "train.eval_every_epoch=false",
                              f"train.threads={args.threads}", f"train.device={args.device}", *extra])


def mlp_case(args, steps: int):
    root = Path(args.data_root)
    if (root / "MNIST" / "raw").is_dir():
        # 5 tasks of 2 classes, steps * BATCH / 2 samples per class: task 1 is `steps` batches
        cfg = config("mlp", args, ["data.name=mnist", f"data.root={root}", "data.download=false", "data.tasks=5",
                                   f"data.train_per_class={steps * BATCH // 2}", "data.test_per_class=100"])
        bench, source = load_benchmark(cfg), "MNIST (real)"
    else:
        cfg = config("mlp", args)
        bench, source = random_benchmark((1, 28, 28), steps * BATCH // 5), "random 1x28x28"
    return "mlp", source, cfg, bench, 1


def resnet_case(args, steps: int):
    cfg = config("reduced_resnet18", args)
    return "reduced_resnet18", "random 3x32x32", cfg, random_benchmark((3, 32, 32), steps * BATCH // 5), 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """One model + benchmark, its Learner with a pre-filled buffer, and the three timers."""

    def __init__(self, name, source, cfg, bench, task, steps, clock=time.perf_counter):
        self.name, self.source, self.steps, self.task, self.clock = name, source, steps, task, clock
        self.learner = Learner(cfg, bench)
        lr, b = self.learner, self.learner.bench
        idx0 = b.task_indices("train", 0)
        lr.buffer.add_rows(idx0.tolist(), b.train.y[idx0].tolist(), 0)  # it holds task 0: every step replays
        self.task_idx = b.task_indices("train", task)
        assert len(self.task_idx) == steps * BATCH, (len(self.task_idx), steps)
        new = self.task_idx[:BATCH]
        rx, ry = lr.buffer.gather(lr.buffer.sample(REPLAY, torch.Generator().manual_seed(0)))
        self.x = torch.cat([b.train.x[new], rx])
        self.y = torch.cat([b.train.y[new], ry])
        self.best = {"pure": float("inf"), "_step": float("inf"), "train_task": float("inf")}
        self.warmup()

    def warmup(self, n: int = 5):
        self.pure(n)
        self.step_only(n)

    def pure(self, n: int) -> None:
        model, opt = self.learner.model, self.learner.opt
        model.train()
        for _ in range(n):
            loss = F.cross_entropy(model(self.x), self.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        float(loss.detach())

    def step_only(self, n: int) -> None:
        lr = self.learner
        lr.model.train()
        total = torch.zeros((), device=lr.device)
        for i in range(n):
            j = self.task_idx[(i * BATCH) % len(self.task_idx):][:BATCH]
            x, y = lr._batch(j, self.task)
            total += lr._step(x, y, self.task, new_epoch=(i == 0))
        float(total)

    def train_task(self) -> None:
        self.learner.train_task(self.task, Hooks())

    def time(self, what: str) -> None:
        sync(self.learner.device)
        t0 = self.clock()
        {"pure": lambda: self.pure(self.steps), "_step": lambda: self.step_only(self.steps),
         "train_task": self.train_task}[what]()
        sync(self.learner.device)
        self.best[what] = min(self.best[what], self.clock() - t0)

    def rate(self, what: str) -> float:
        return self.steps / self.best[what]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run: fewer steps, one timing each")
    p.add_argument("--data-root", default=default_data_root(), help="folder with MNIST/raw (else random tensors)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--repeats", type=int, default=None, help="timings per number (best is kept)")
    p.add_argument("--models", default="mlp,reduced_resnet18", help="comma-separated cases to run")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, steadier than wall time when other jobs share the cores")
    args = p.parse_args(argv)
    mlp_steps, resnet_steps = (100, 30) if args.quick else (500, 200)
    repeats = args.repeats or (1 if args.quick else 2)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    known = {"mlp": lambda: Case(*mlp_case(args, mlp_steps), mlp_steps, clock),
             "reduced_resnet18": lambda: Case(*resnet_case(args, resnet_steps), resnet_steps, clock)}
    names = [m for m in args.models.split(",") if m]
    if unknown := [m for m in names if m not in known]:
        p.error(f"unknown --models {unknown}: choose from {sorted(known)}")
    cases = [known[m]() for m in names]
    for _ in range(repeats):
        for c in cases:
            for what in ("pure", "_step", "train_task"):
                c.time(what)

    dev = cases[0].learner.device
    print(f"step time, {'quick' if args.quick else 'full'} run: batch = {BATCH} new + {REPLAY} replayed, SGD, "
          f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, best of {repeats}, {args.clock} clock\n")
    print("| model | data | steps | pure steps/s | `_step` steps/s | `train_task` steps/s | overhead (pure / train_task) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c in cases:
        print(f"| {c.name} | {c.source} | {c.steps} | {c.rate('pure'):.0f} | {c.rate('_step'):.0f} | "
              f"{c.rate('train_task'):.0f} | {c.rate('pure') / c.rate('train_task'):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
