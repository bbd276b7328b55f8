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
    for threads, track in ((1, False), (2, False), (1, "new"), (1, "existing")):
        times, accs = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "m.json"
                cmd = [sys.executable, "-m", "gradmix_tune", "run", str(ROOT / "ablations/configs/split_mnist.yaml"),
                       "--data-root", args.data_root, "--set", f"train.threads={threads}", "--json", str(out)]
                cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"] if track else ["--no-track"]
                if track == "existing":  # the usual case: mlflow.db already has its tables
                    subprocess.run(cmd[:4] + ["--set", "data.name=digits"] + cmd[5:], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
                times.append(time.perf_counter() - t0)
                accs.append(json.loads(out.read_text())["final_avg_acc"])
        rows.append((threads, track, statistics.median(times), min(times), statistics.mean(accs)))
    print("| torch threads | MLflow logging | whole command, median (s) | best (s) | final avg acc |")
    print("|---|---|---|---|---|")
    for t, track, med, best, acc in rows:
        what = {False: "off (--no-track)", "new": "on, new sqlite store", "existing": "on, existing sqlite store"}[track]
        print(f"| {t} | {what} | {med:.2f} | {best:.2f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
