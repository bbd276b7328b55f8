"""A whole Split-MNIST ER run as a user runs it: `gradmix-tune run`, process start included.

    python benchmarks/split_mnist_er.py [--repeats 3] [--data-root ../shared/data]

Prints the median wall time of the whole command and the final average accuracy.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    args = ap.parse_args()
    rows = []
    for threads in (1, 2):
        times, accs = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "m.json"
                cmd = [sys.executable, "-m", "gradmix_tune", "run", str(ROOT / "ablations/configs/split_mnist.yaml"),
                       "--data-root", args.data_root, "--set", f"train.threads={threads}", "--json", str(out)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
                times.append(time.perf_counter() - t0)
                accs.append(json.loads(out.read_text())["final_avg_acc"])
        rows.append((threads, statistics.median(times), min(times), statistics.mean(accs)))
    print("| torch threads | whole command, median (s) | best (s) | final avg acc |")
    print("|---|---|---|---|")
    for t, med, best, acc in rows:
        print(f"| {t} | {med:.2f} | {best:.2f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
