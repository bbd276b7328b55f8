"""How stable are GradMix's helpful/harmful pair decisions? Flip rate and error against a
large-probe reference, versus mixing.probes_per_class (k) and mixing.score_momentum (m).

    python benchmarks/decision_stability.py [--datasets digits mnist] [--seeds 0 1 2] [--training]

Fixed model (always): train ER on tasks 0 and 1 (the dataset's config: ablations/configs/
digits.yaml at --digits-epochs a task, split_mnist.yaml at 1 epoch), then hold the model fixed
at the start of task 2 (4 old classes in the buffer, 2 new: 21 class pairs) and refresh S
`--refreshes` times for every (k, m), with fresh probe draws each time, exactly as training
would. Reported per (k, m), averaged over seeds (each seed: another model and buffer):
  flip      share of seen pairs whose decision changed since the previous refresh (the
            logged `decision_flip_rate`), after a warm-up of 1/(1-m) refreshes
  flip6     share of pairs that changed at least once over 6 consecutive refreshes
            (with m = 0 these are 6 independent probe draws)
  err       share of pairs decided otherwise than the reference: the mean S of --ref-n (200)
            refreshes at k = --ref-k (10), all the rest of the buffer for the buffer gradient,
            m = 0 (the decision with the probe noise averaged out)
  ms        time of one refresh (MLP, 1 thread)
--training: GradMix trained for real (tasks 0-4, the same protocol) with each (k, m); the
logged decision_flip_rate (mean over tasks 1-4) and `err_t`: at every 10th refresh, the share of
pairs decided otherwise than a reference for the *current* model (the mean of --ref-n-training
refreshes, own RNG, so the run itself is untouched): noise and the lag a momentum adds, together;
`ref. floor`: how often two such references disagree with each other (the floor of err_t).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gradmix_tune.config import MixingConfig, load_config
from gradmix_tune.learner import Hooks, Learner
from gradmix_tune.memory import draw_probes
from gradmix_tune.mixing import MixContext, Mixer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"digits": "ablations/configs/digits.yaml", "mnist": "ablations/configs/split_mnist.yaml"}


def _cfg(dataset: str, seed: int, epochs: int, root: str, extra=()):
    return load_config(ROOT / CONFIGS[dataset], [f"seed={seed}", f"train.epochs={epochs}", "train.threads=1",
                                                  *extra], data_root=root)


def _probe_fn(learner: Learner, task: int, rng: np.random.Generator):
    bench = learner.bench
    classes = bench.task_classes[task]
    y = bench.train.y.cpu().numpy()
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    return lambda k, buffer_k=0: draw_probes(learner.buffer, bench.train.x, by_class, classes, k, rng, buffer_k)


def _ctx(learner: Learner, task: int, probe) -> MixContext:
    return MixContext(learner.model, probe, buffer_empty=False, class_counts=None, new_epoch=False, task=task,
                      current_classes=tuple(learner.bench.task_classes[task]))


def _decisions(S: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    iu = np.triu_indices(S.shape[0])
    s = S.numpy()[iu]
    seen = np.isfinite(s)
    return (s >= 0)[seen], seen


def reference(learner: Learner, task: int, k: int, seed: int, n: int) -> np.ndarray:
    """The decisions of the mean fresh S over n refreshes (k parents, the whole rest of the buffer
    for the buffer gradient), on an RNG of its own."""
    mixer = Mixer(MixingConfig(selection="gradient", probes_per_class=k), learner.bench.num_classes, seed + 1000)
    ctx = _ctx(learner, task, _probe_fn(learner, task, mixer.rng))
    acc = []
    for _ in range(n):
        mixer.S = mixer.helpful = None  # independent fresh estimates
        acc.append(mixer.refresh(ctx).clone())
    return _decisions(torch.stack(acc).mean(dim=0))[0]


def fixed_model(dataset: str, seeds, ks, bps, moms, refreshes: int, ref_k: int, ref_n: int, root: str,
                epochs: int) -> dict:
    out: dict = {}
    for seed in seeds:
        learner = Learner(_cfg(dataset, seed, epochs, root, ["method=er"]))
        for t in (0, 1):
            learner.train_task(t, Hooks())
        learner.model.eval()
        ref = reference(learner, 2, ref_k, seed, ref_n)
        for k, bp, m in itertools.product(ks, bps, moms):
            mixer = Mixer(MixingConfig(selection="gradient", probes_per_class=k, buffer_probes=_bp(bp, k),
                                       score_momentum=m), learner.bench.num_classes, seed)
            ctx = _ctx(learner, 2, _probe_fn(learner, 2, mixer.rng))
            warm = int(round(1 / (1 - m)))
            decisions, flips, errs, times = [], [], [], []
            for r in range(warm + refreshes):
                mixer.stats.flips = mixer.stats.compared = 0
                t0 = time.perf_counter()
                S = mixer.refresh(ctx)
                times.append(time.perf_counter() - t0)
                if r < warm:
                    continue
                d = _decisions(S)[0]
                decisions.append(d)
                flips.append(mixer.stats.flips / max(mixer.stats.compared, 1))
                errs.append(float((d != ref).mean()))
            D = np.array(decisions)
            flip6 = np.mean([(D[i:i + 6] != D[i]).any(axis=0).mean() for i in range(0, len(D) - 5, 6)])
            o = out.setdefault((k, bp, m), {"flip": [], "flip6": [], "err": [], "ms": []})
            o["flip"].append(np.mean(flips))
            o["flip6"].append(flip6)
            o["err"].append(np.mean(errs))
            o["ms"].append(1000 * statistics.median(times))
    return out


def training(dataset: str, seeds, ks, bps, moms, ref_k: int, ref_n: int, root: str, epochs: int) -> dict:
    out: dict = {}
    for seed in seeds:
        for k, bp, m in itertools.product(ks, bps, moms):
            cfg = _cfg(dataset, seed, epochs, root, ["method=gradmix", f"mixing.probes_per_class={k}",
                                                      f"mixing.buffer_probes={_bp(bp, k)}",
                                                      f"mixing.score_momentum={m}"])
            learner = Learner(cfg)
            orig, errs, floor, count = learner.mixer.refresh, [], [], [0]

            def refresh(ctx, orig=orig, learner=learner, errs=errs, floor=floor, count=count, seed=seed):
                S = orig(ctx)
                count[0] += 1
                if count[0] % 10 == 0:
                    ref = reference(learner, ctx.task, ref_k, seed + count[0], ref_n)
                    ref2 = reference(learner, ctx.task, ref_k, seed + count[0] + 500_000, ref_n)
                    errs.append(float((_decisions(S)[0] != ref).mean()))
                    floor.append(float((ref2 != ref).mean()))
                return S

            learner.mixer.refresh = refresh
            epochs_log = []
            hooks = Hooks(on_epoch=epochs_log.append)
            for t in range(learner.bench.num_tasks):
                learner.train_task(t, hooks)
            flips = [e.diagnostics["decision_flip_rate"] for e in epochs_log if e.task >= 1]
            o = out.setdefault((k, bp, m), {"flip_t": [], "err_t": [], "floor": [], "acc": [], "mixed": []})
            o["floor"].append(float(np.mean(floor)) if floor else float("nan"))
            o["flip_t"].append(float(np.nanmean(flips)))
            o["err_t"].append(float(np.mean(errs)) if errs else float("nan"))
            o["acc"].append(learner.result().final_avg_acc)
            o["mixed"].append(float(np.mean([e.diagnostics["frac_mixed"] for e in epochs_log if e.task >= 1])))
    return out


def _bp(bp: str, k: int) -> int:
    return k if bp == "k" else int(bp)


def _fmt(v: list[float]) -> str:
    return f"{np.mean(v):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=sorted(CONFIGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--buffer-probes", nargs="+", default=["k", "0"],
                    help="mixing.buffer_probes values: k (as many as the parents) or a number (0 = all)")
    ap.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9])
    ap.add_argument("--refreshes", type=int, default=60)
    ap.add_argument("--ref-k", type=int, default=10, help="parents per class of a reference refresh")
    ap.add_argument("--ref-n", type=int, default=200, help="refreshes averaged into the fixed-model reference")
    ap.add_argument("--ref-n-training", type=int, default=20, help="... into each reference while training")
    ap.add_argument("--digits-epochs", type=int, default=5)
    ap.add_argument("--training", action="store_true", help="also train GradMix with each (k, m)")
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for ds in args.datasets:
        epochs = args.digits_epochs if ds == "digits" else 1
        res = fixed_model(ds, args.seeds, args.k, args.buffer_probes, args.momentum, args.refreshes, args.ref_k,
                          args.ref_n, args.data_root, epochs)
        print(f"\n{ds}: fixed model at the start of task 2 ({epochs} epoch(s) a task, seeds {args.seeds}, "
              f"{args.refreshes} refreshes; reference: mean S of {args.ref_n} refreshes at k = {args.ref_k})\n")
        print("| k | buffer_probes | m | flip | flip6 | err | ms |")
        print("|---|---|---|---|---|---|---|")
        for (k, bp, m), o in res.items():
            print(f"| {k} | {bp} | {m} | {_fmt(o['flip'])} | {_fmt(o['flip6'])} | {_fmt(o['err'])} "
                  f"| {np.mean(o['ms']):.2f} |")
        if args.training:
            tr = training(ds, args.seeds, args.k, args.buffer_probes, args.momentum, args.ref_k, args.ref_n_training,
                          args.data_root, epochs)
            print(f"\n{ds}: GradMix trained with each setting (tasks 1-4; seeds {args.seeds})\n")
            print("| k | buffer_probes | m | decision_flip_rate | err_t | ref. floor | frac_mixed | final avg acc |")
            print("|---|---|---|---|---|---|---|---|")
            for (k, bp, m), o in tr.items():
                print(f"| {k} | {bp} | {m} | {_fmt(o['flip_t'])} | {_fmt(o['err_t'])} | {_fmt(o['floor'])} "
                      f"| {_fmt(o['mixed'])} | {_fmt(o['acc'])} |")


if __name__ == "__main__":
    main()
