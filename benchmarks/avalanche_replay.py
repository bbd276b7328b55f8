"""Avalanche 0.6's Replay on our Split-MNIST ER protocol, timed as a whole process (start, imports,
data, training, evaluation), beside `gradmix-tune run` on ablations/configs/split_mnist.yaml.

Avalanche lives in its own virtualenv (.venv-avalanche, git-ignored), outside our dependencies
(`make bench-avalanche` makes it and runs this):

    python3 -m venv .venv-avalanche
    .venv-avalanche/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-avalanche/bin/pip install avalanche-lib==0.6.0

(torch 2.14.1 / torchvision 0.29.1, the builds our .venv has; avalanche-lib 0.6.0 pins no torch and
was installed with its own requirements as pip resolved them, patched in nothing. qpsolvers 4.13
no longer has the `open_source_solvers` extra Avalanche asks for, so no QP solver is installed:
only GEM/A-GEM-style strategies need one, Replay does not; importing Avalanche warns about it.)

Run (from the repo root):

    .venv-avalanche/bin/python benchmarks/avalanche_replay.py [--repeats 3] [--ours]
        [--data-root ../shared/data] [--storage reservoir|experience_balanced]
        [--data tensor_mnist|pil|preloaded] [--eval end|each]
        [--gradmix .venv/bin/gradmix-tune]

Each Avalanche run is a fresh `.venv-avalanche/bin/python benchmarks/avalanche_replay.py --child`
process (it writes its accuracy and a phase breakdown as JSON); the whole subprocess is timed.
--ours also times, interleaved with it (Avalanche repeat 1, ours repeat 1, Avalanche repeat 2, ...)
so that the machine's load hits both alike, the command a user runs, tracked to a new sqlite store:

    .venv/bin/gradmix-tune run ablations/configs/split_mnist.yaml --data-root ../shared/data \\
        --set train.threads=1 --tracking-uri sqlite:////tmp/<tmp>/mlflow.db --json /tmp/<tmp>/m.json

Prints the median and best whole-process wall time per arm, the final average accuracy (mean over
the 5 experiences' test sets after the last one) and the Avalanche / ours ratio of the medians
(the project's target: >= 5x at no loss of accuracy).

The protocol (ours: ablations/configs/split_mnist.yaml): real MNIST (torchvision layout, no
download), normalised with (0.1307, 0.3081); 5 experiences of 2 classes in our class order
(numpy RandomState(data.class_order_seed=0).permutation(10) = 2 8 | 4 9 | 1 6 | 7 3 | 0 5); the
same MLP as gradmix_tune.models (Flatten, Linear 784-100, ReLU, Linear 100-100, ReLU, head Linear
100-10, PyTorch's default init, built right after torch.manual_seed(0) as ours is, so the same
initial weights); SGD lr 0.1, no momentum; cross-entropy over the concatenated batch of 10 new + 10
replayed samples (ReplayPlugin(mem_size=500, batch_size=10, batch_size_mem=10): its
ReplayDataLoader concatenates a 10-sample mini-batch of the experience with a 10-sample mini-batch
of the buffer into one batch of 20, the epoch ends with the experience's data, the buffer is cycled);
1 epoch per experience; 1 torch thread; CPU; eval mini-batch 1000 (ours: train.eval_batch_size).
Avalanche gets an EvaluationPlugin with experience/stream accuracy and no logger (no
InteractiveLogger, TensorBoard or text logger) and no MLflow; ours logs to MLflow.

--storage reservoir (default, as our memory.policy: reservoir): ReplayPlugin with
ReservoirSamplingBuffer(500), a uniform sample of all the data seen so far.
--storage experience_balanced: Avalanche's stock `Replay` strategy (ReplayPlugin(mem_size) with its
default ExperienceBalancedBuffer: 500 split evenly over the experiences seen).
--data tensor_mnist (default): Avalanche's own SplitMNIST data path (its TensorMNIST, a
torchvision MNIST subclass returning float tensors, + Normalize as a transform), built with
nc_benchmark(fixed_class_order=...) and download=False. pil: torchvision.datasets.MNIST with
ToTensor() + Normalize (PIL per sample, how a user would write it by hand). preloaded: the whole
data set normalised once into tensors (Avalanche's fastest input path; no per-sample transform:
the strictest baseline for a speed claim).
--eval end (default): one pass over the test stream after the last experience. each: also the
test stream seen so far after every experience (the accuracy matrix ours computes and logs).

Differences from ours that remain (Avalanche has no switch for them):
- Avalanche fills its buffer after each experience (after_training_exp), ours online at every
  step. So in the first experience Avalanche trains on 10 new samples a step and replays nothing
  (ours replays that task's samples from its second step on: 20 a step), and later Avalanche replays only earlier
  experiences while ours' reservoir also holds the current task's samples.
- Avalanche cycles through the buffer (shuffled, without replacement within a pass); ours draws
  10 buffer samples uniformly without replacement at each step.
- The shuffles draw from different RNG streams (same seed, different consumers).
- Ours evaluates all seen tasks after every task (twice: the epoch's seen accuracy and the
  accuracy-matrix row) and logs to MLflow; with --eval end Avalanche evaluates once, logs nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "ablations/configs/split_mnist.yaml"
MEAN, STD = 0.1307, 0.3081
SEED = 0  # ours: seed 0, data.class_order_seed 0


# ---------------------------------------------------------------- child: one Avalanche run

def class_order(seed: int = 0) -> list[int]:
    import numpy as np  # as gradmix_tune.data.class_order

    return [int(c) for c in np.random.RandomState(seed).permutation(10)]


def make_model():
    import torch
    from torch import nn

    class Classifier(nn.Module):  # gradmix_tune.models.Classifier with _mlp(hidden=[100, 100])
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(),
                                          nn.Linear(100, 100), nn.ReLU())
            self.head = nn.Linear(100, 10)

        def forward(self, x):
            return self.head(self.backbone(x))

    torch.manual_seed(SEED)
    return Classifier()


def datasets(kind: str, root: str):
    import torch
    from torchvision.datasets import MNIST
    from torchvision.transforms import Compose, Normalize, ToTensor

    if kind == "tensor_mnist":
        from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST

        tr = TensorMNIST(root, train=True, download=False)
        te = TensorMNIST(root, train=False, download=False)
        return tr, te, Compose([Normalize((MEAN,), (STD,))])
    if kind == "pil":
        tf = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
        return MNIST(root, train=True, download=False), MNIST(root, train=False, download=False), tf

    class Preloaded(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.x = ((ds.data.float() / 255.0 - MEAN) / STD).unsqueeze(1)
            self.targets = ds.targets.long()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.x[i], int(self.targets[i])

    return (Preloaded(MNIST(root, train=True, download=False)),
            Preloaded(MNIST(root, train=False, download=False)), None)


def child(args) -> None:
    t0 = time.perf_counter()
    import random

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from avalanche.benchmarks import nc_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import Naive, Replay

    t_import = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    order = class_order(0)
    tr, te, tf = datasets(args.data, args.data_root)
    bench = nc_benchmark(tr, te, n_experiences=5, task_labels=False, fixed_class_order=order,
                         train_transform=tf, eval_transform=tf)
    t_data = time.perf_counter()

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    common = dict(model=model, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=10,
                  train_epochs=1, eval_mb_size=1000, device="cpu",
                  evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]))
    if args.storage == "experience_balanced":  # the stock strategy: ReplayPlugin(mem_size) inside
        strategy = Replay(mem_size=500, **common)
    else:
        strategy = Naive(plugins=[ReplayPlugin(mem_size=500, batch_size=10, batch_size_mem=10,
                                               storage_policy=ReservoirSamplingBuffer(500))], **common)
    t_train = t_eval = 0.0
    for i, exp in enumerate(bench.train_stream):
        t = time.perf_counter()
        strategy.train(exp, num_workers=0)
        t_train += time.perf_counter() - t
        if args.eval == "each" and i < len(bench.train_stream) - 1:
            t = time.perf_counter()
            strategy.eval(bench.test_stream[:i + 1], num_workers=0)
            t_eval += time.perf_counter() - t
    t = time.perf_counter()
    res = strategy.eval(bench.test_stream, num_workers=0)
    t_eval += time.perf_counter() - t
    # keys: Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00e (the task part: 0.6's naming)
    exp_keys = {k.rsplit("/Exp", 1)[1]: k for k in res if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")}
    accs = [float(res[exp_keys[f"{e:03d}"]]) for e in range(5)]
    stream = next(v for k, v in res.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
    out = {"final_avg_acc": sum(accs) / len(accs), "per_exp_acc": accs, "stream_acc": float(stream),
           "classes": [list(map(int, c)) for c in bench.original_classes_in_exp],
           "buffer": len(strategy.plugins[0].storage_policy.buffer) if args.storage == "reservoir" else None,
           "s_import": t_import - t0, "s_data": t_data - t_import, "s_train": t_train, "s_eval": t_eval}
    Path(args.child).write_text(json.dumps(out))


# ---------------------------------------------------------------- driver

def once_avalanche(args) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--data-root", args.data_root,
               "--storage", args.storage, "--data", args.data, "--eval", args.eval]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp)
        took = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"Avalanche run failed ({p.returncode}):\n{p.stderr[-4000:]}")
        return took, json.loads(out.read_text())


def once_ours(args) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [args.gradmix, "run", str(CONFIG), "--data-root", args.data_root, "--set", "train.threads=1",
               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--json", str(out)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp)
        took = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"gradmix-tune run failed ({p.returncode}):\n{p.stderr[-4000:]}")
        return took, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ours", action="store_true", help="also time gradmix-tune run (tracked), interleaved")
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    ap.add_argument("--storage", choices=["reservoir", "experience_balanced"], default="reservoir")
    ap.add_argument("--data", choices=["tensor_mnist", "pil", "preloaded"], default="tensor_mnist")
    ap.add_argument("--eval", choices=["end", "each"], default="end")
    ap.add_argument("--gradmix", default=str(ROOT / ".venv/bin/gradmix-tune"))
    ap.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from importlib.metadata import version  # not `import avalanche`: it takes seconds and warns

    versions = {"avalanche": version("avalanche-lib"), "torch": version("torch")}
    arms = ["avalanche"] + (["ours"] if args.ours else [])
    times: dict = {a: [] for a in arms}
    res: dict = {a: [] for a in arms}
    load0 = os.getloadavg()[0]
    for r in range(args.repeats):  # interleaved
        for a in arms:
            t, out = once_avalanche(args) if a == "avalanche" else once_ours(args)
            times[a].append(t)
            res[a].append(out)
            extra = (f" (import {out['s_import']:.1f}, data {out['s_data']:.1f}, train {out['s_train']:.1f}, "
                     f"eval {out['s_eval']:.1f} s; per exp {[round(x, 4) for x in out['per_exp_acc']]})"
                     if a == "avalanche" else "")
            print(f"# repeat {r + 1}: {a}: {t:.2f} s, final avg acc {out['final_avg_acc']:.4f}{extra}",
                  file=sys.stderr, flush=True)
    med = {a: statistics.median(v) for a, v in times.items()}
    print(f"\n(Avalanche {versions['avalanche']}, torch {versions['torch']}; storage {args.storage}, data "
          f"{args.data}, eval {args.eval}; {os.cpu_count()} CPUs, load average {load0:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {args.repeats} repeats" + (", arms interleaved)\n" if args.ours else ")\n"))
    print("| run | whole process, median (s) | best (s) | final avg acc | vs ours |")
    print("|---|---|---|---|---|")
    names = {"avalanche": f"Avalanche {versions['avalanche']} Replay ({args.storage}, no logger)",
             "ours": "gradmix-tune run (ER, MLflow sqlite)"}
    for a in arms:
        ratio = f"{med[a] / med['ours']:.2f}x" if args.ours else "-"
        print(f"| {names[a]} | {med[a]:.2f} | {min(times[a]):.2f} | "
              f"{statistics.mean(o['final_avg_acc'] for o in res[a]):.4f} | {ratio} |")
    if args.ours:
        print(f"\nAvalanche / ours (medians): {med['avalanche'] / med['ours']:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
