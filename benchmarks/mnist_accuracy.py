"""Final average accuracy on real Split-MNIST: er, er_mixup, er_cutmix, gradmix over 5 seeds.

    python benchmarks/mnist_accuracy.py [--seeds 0 1 2 3 4] [--epochs 1] [--workers 2]

Protocol: ablations/configs/split_mnist.yaml (5 tasks of 2 classes, class order seed 0, MLP
100-100, SGD lr 0.1, 10 new + 10 replayed samples a step, buffer 500 reservoir), `seed` varies
the model init, sampling and mixing. Prints mean +- std and a paired t-test of gradmix against
er_mixup over seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["er", "er_mixup", "er_cutmix", "gradmix"]


def one(args: tuple[str, int, int, str]) -> tuple[str, int, float, float]:
    method, seed, epochs, root = args
    from gradmix_tune.config import load_config
    from gradmix_tune.learner import run

    cfg = load_config(ROOT / "ablations/configs/split_mnist.yaml",
                      [f"method={method}", f"seed={seed}", f"train.epochs={epochs}", "train.threads=1"],
                      data_root=root)
    r = run(cfg)
    return method, seed, r.final_avg_acc, r.wall_time_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    args = ap.parse_args()
    jobs = [(m, s, args.epochs, args.data_root) for m in METHODS for s in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(one, jobs))
    acc = {m: [r[2] for r in rows if r[0] == m] for m in METHODS}
    wall = {m: statistics.mean(r[3] for r in rows if r[0] == m) for m in METHODS}
    print(f"Split-MNIST, {len(args.seeds)} seeds, {args.epochs} epoch(s) per task\n")
    print("| method | final avg acc (mean +- std) | train time per run (s) |")
    print("|---|---|---|")
    for m in METHODS:
        sd = statistics.stdev(acc[m]) if len(acc[m]) > 1 else 0.0
        print(f"| {m} | {statistics.mean(acc[m]):.4f} +- {sd:.4f} | {wall[m]:.1f} |")
    if len(args.seeds) > 1:
        from scipy import stats

        t = stats.ttest_rel(acc["gradmix"], acc["er_mixup"])
        diff = statistics.mean(a - b for a, b in zip(acc["gradmix"], acc["er_mixup"]))
        print(f"\ngradmix - er_mixup: {diff:+.4f} (paired t-test over seeds, p = {t.pvalue:.3f})")


if __name__ == "__main__":
    main()
