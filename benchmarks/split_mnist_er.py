"""A whole Split-MNIST ER run as a user runs it: `gradmix-tune run`, process start included, and
what MLflow tracking costs on top of it.

    python benchmarks/split_mnist_er.py [--repeats 3] [--data-root ../shared/data] [--tracking-only]

Arms: 1 and 2 torch threads untracked (--no-track); 1 thread tracked to a new sqlite store and to
an existing one (the usual case: mlflow.db already has its tables). The arms are interleaved
(repeat 1 of every arm, then repeat 2, ...) so a change of the machine's load hits them alike.
Prints the median and best wall time of the whole command per arm, the final average accuracy,
and the tracked / untracked ratio (medians; target <= 1.25x). --tracking-only: the 1-thread arms only.
--src DIR: time the gradmix_tune package in DIR instead of the installed one (a before/after
comparison: `git archive OLD gradmix_tune | tar -x -C DIR`).
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
WHAT = {False: "off (--no-track)", "new": "on, new sqlite store", "existing": "on, existing sqlite store"}


# `python -m gradmix_tune` from another source folder: the editable install's import hook would win
# over PYTHONPATH, so drop it and put the folder first
_FROM_SRC = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
             "sys.path.insert(0, sys.argv.pop(1)); from gradmix_tune.cli import main; sys.exit(main())")


def once(threads: int, track, data_root: str, src: str | None = None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [sys.executable, *(["-c", _FROM_SRC, src] if src else ["-m", "gradmix_tune"]), "run", str(ROOT / "ablations/configs/split_mnist.yaml"),
               "--data-root", data_root, "--set", f"train.threads={threads}", "--json", str(out)]
        cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"] if track else ["--no-track"]
        if track == "existing":  # make the store first (a tiny run on digits), not timed
            i = cmd.index("run") + 1  # the default config, on digits
            subprocess.run(cmd[:i] + ["--set", "data.name=digits"] + cmd[i + 1:], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        took = time.perf_counter() - t0
        return took, json.loads(out.read_text())["final_avg_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    ap.add_argument("--tracking-only", action="store_true", help="only the 1-thread arms (off, new, existing)")
    ap.add_argument("--src", help="folder holding the gradmix_tune package to time (default: the installed one)")
    args = ap.parse_args()
    arms = [(1, False), (1, "new"), (1, "existing")] if args.tracking_only else \
        [(1, False), (2, False), (1, "new"), (1, "existing")]
    times: dict = {a: [] for a in arms}
    accs: dict = {a: [] for a in arms}
    load0 = os.getloadavg()[0]
    for r in range(args.repeats):  # interleaved
        for a in arms:
            t, acc = once(*a, args.data_root, args.src)
            times[a].append(t)
            accs[a].append(acc)
            print(f"# repeat {r + 1}: {a[0]} thread(s), tracking {WHAT[a[1]]}: {t:.2f} s", file=sys.stderr, flush=True)
    med = {a: statistics.median(v) for a, v in times.items()}
    print(f"\n({os.cpu_count()} CPUs, load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{args.repeats} repeats, arms interleaved)\n")
    print("| torch threads | MLflow logging | whole command, median (s) | best (s) | vs untracked | final avg acc |")
    print("|---|---|---|---|---|---|")
    base = med[(1, False)]
    for a in arms:
        print(f"| {a[0]} | {WHAT[a[1]]} | {med[a]:.2f} | {min(times[a]):.2f} | {med[a] / base:.2f}x | "
              f"{statistics.mean(accs[a]):.4f} |")


if __name__ == "__main__":
    main()
