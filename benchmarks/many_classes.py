"""GradMix's cost over ER+Mixup as the number of classes grows: 10, 50, 100, 200 classes.

    python benchmarks/many_classes.py [--quick] [--repeats 2]

One whole trial (10 tasks, 1 epoch a task, buffer 1000, the same total data at every class count)
of an MLP 100-100 on random MNIST-shaped vectors (benchmarks/scaling.py's helpers), 1 torch
thread, 10 new + 10 replayed samples a step. Arms: er_mixup; gradmix as configured by default
(`mixing.pair_scoring: auto`: every pair up to 50 classes, the pairs batches draw above); and
gradmix scoring every class pair at each refresh (`mixing.pair_scoring=all`, the path before
issue #15), whose decisions are the same. The arms of one class count are
interleaved and repeated; the table shows the median seconds of training and the ratio to
er_mixup. Targets (issue #15): <= 1.10x at 10 classes, <= 1.15x at 100 and 200 classes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import trial_time  # noqa: E402

ARMS = (("er_mixup", ["method=er_mixup"]),
        ("gradmix", ["method=gradmix"]),
        ("gradmix, all pairs", ["method=gradmix", "mixing.pair_scoring=all"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="half the data")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--classes", default="10,50,100,200")
    args = ap.parse_args()
    torch.set_num_threads(1)
    total = 2000 if args.quick else 4000
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        pc = total // classes
        times: dict[str, list[float]] = {a: [] for a, _ in ARMS}
        sels: dict[str, list[float]] = {a: [] for a, _ in ARMS}
        for _ in range(args.repeats):  # interleaved: a load change hits every arm alike
            for arm, ov in ARMS:
                t, s = trial_time(ov + ["memory.size=1000"], classes, pc, 10)
                times[arm].append(t)
                sels[arm].append(s)
        med = {a: statistics.median(v) for a, v in times.items()}
        sel = {a: statistics.median(v) for a, v in sels.items()}
        rows.append((classes, classes * pc, med, sel))
        print(f"# {classes} classes: " + ", ".join(f"{a} {v:.2f} s" for a, v in med.items()), file=sys.stderr,
              flush=True)
    base = ARMS[0][0]
    print(f"\n### Classes (10 tasks, same total data, buffer 1000; median of {args.repeats}, arms interleaved)\n")
    print("| classes | samples | er_mixup (s) | gradmix (s) | selection (s) | ratio | "
          "gradmix, all pairs (s) | selection (s) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for classes, n, med, sel in rows:
        b = med[base]
        g, e = med[ARMS[1][0]], med[ARMS[2][0]]
        print(f"| {classes} | {n} | {b:.2f} | {g:.2f} | {sel[ARMS[1][0]]:.2f} | {g / b:.2f}x | "
              f"{e:.2f} | {sel[ARMS[2][0]]:.2f} | {e / b:.2f}x |")


if __name__ == "__main__":
    main()
