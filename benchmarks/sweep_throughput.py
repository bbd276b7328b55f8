"""Sweep throughput: the quickstart study under Ray Tune (1, then 2 trials at a time) against the
same trials run one after another in a plain loop (gradmix_tune.learner.run: no Ray, no MLflow),
and Ray's per-trial overhead for long trials (Split-MNIST, several epochs a task).

    python benchmarks/sweep_throughput.py [--quick] [--data-root ../shared/data] [--long-epochs N] [--per-epoch]

A trial reports once a task (its epochs' results inside the task's result); --per-epoch times
the trainable that reports every epoch as well (what a scheduler over global_epoch gets, and what
every study did before): one blocking round trip to the driver per epoch.

The Ray path is the project's own: sweep.load_study + sweep.run_study (a local Ray started for the
study with 2 CPUs, a checkpoint after every task, the driver-side MLflow callback writing to a
temporary sqlite store - sweeps have no switch to turn tracking off, so MLflow's cost counts as
Ray's here - and the report at the end). Every trial gets 1 CPU and 1 torch thread; so does the
loop (in this process).

Numbers (trial start and end as the driver sees them, from a Tune callback):
  trials phase  = first trial's start -> last trial's end; fixed = wall - trials phase (Ray start
                  and stop, worker processes, MLflow setup, the report)
  s/trial       = steady state: (last trial's end - first trial's end) / (trials - 1), which
                  leaves out a worker's first-trial warm-up (importing torch, ...: shown apart)
  overhead      = Ray's s/trial (1 at a time) - the loop's s/trial (the same trials, the first left out)
  speed-up of 2 at a time = s/trial (1 at a time) / s/trial (2 at a time)
The 30 s estimate fits overhead = a + b * (results a trial) on the two studies (a trial reports
one result per epoch and one, with a checkpoint, per task) and evaluates it for a Split-MNIST
trial with as many epochs as take 30 s in the loop. With 2 long trials run 2 at a time there is
no steady state: that speed-up is from the trials phase. The machine is shared: the load average
is printed with the tables.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from ray.tune import Callback  # noqa: E402

from gradmix_tune import sweep  # noqa: E402
from gradmix_tune.config import from_dict  # noqa: E402
from gradmix_tune.data import load_benchmark  # noqa: E402
from gradmix_tune.learner import run  # noqa: E402

LOAD0 = os.getloadavg()


class TrialClock(Callback):
    """Driver-side start and end time of every trial."""

    def __init__(self):
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start.setdefault(trial.trial_id, time.perf_counter())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end[trial.trial_id] = time.perf_counter()

    def phase(self) -> float:
        return max(self.end.values()) - min(self.start.values())

    def steady(self) -> float:
        """Seconds per trial once running: between the first and the last trial's end, per trial
        (leaves out each worker's first-trial warm-up: importing torch, the first data load)."""
        ends = sorted(self.end.values())
        return (ends[-1] - ends[0]) / (len(ends) - 1)

    def first(self) -> float:
        tid = min(self.start, key=self.start.get)
        return self.end[tid] - self.start[tid]


def loop_times(study) -> list[float]:
    """Each trial's config run by the learner directly, one after another: seconds per trial
    (data loading and model building included, as in a trial)."""
    torch.set_num_threads(1)
    out = []
    for t in study.trials:
        cfg = from_dict(json.loads(json.dumps(t["config"])))
        cfg.train.device = "cpu"
        t0 = time.perf_counter()
        run(cfg)
        out.append(time.perf_counter() - t0)
    return out


def ray_run(path: Path, work: Path, tag: str, concurrent: int, data_root: str | None) -> dict:
    """One study through sweep.run_study: wall time and the trials phase."""
    study = sweep.load_study(path, storage=str(work / f"rr-{tag}"), tracking_uri=f"sqlite:///{work}/mlflow-{tag}.db",
                             data_root=data_root)
    clock = TrialClock()
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        res = sweep.run_study(study, max_concurrent=concurrent, num_cpus=2, num_gpus=0,
                              reports_dir=str(work / f"reports-{tag}"), heartbeat_s=1e9, callbacks=[clock])
    wall = time.perf_counter() - t0
    ok = sum(t.status == "ok" for t in res.trials)
    if res.exit_code != 0 or ok != study.num_trials or len(clock.end) != study.num_trials:
        raise SystemExit(f"{tag}: exit {res.exit_code}, {ok}/{study.num_trials} ok\n{out.getvalue()[-3000:]}")
    return {"wall": wall, "phase": clock.phase(), "steady": clock.steady(), "first": clock.first(),
            "n": study.num_trials}


def write_study(work: Path, name: str, base: str, grid: str, seeds: str) -> Path:
    p = work / f"{name}.yaml"
    p.write_text(f"name: {name}\nbase: {base}\ngrid: {grid}\nseeds: {seeds}\nresources: {{cpu: 1, gpu: 0}}\n")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="long trials of 3 epochs a task (~10 s), and no "
                                                         "2-at-a-time run of them")
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT") or str(ROOT.parent / "shared" / "data"),
                    help="folder with MNIST/raw (default $GRADMIX_DATA_ROOT, else ../shared/data)")
    ap.add_argument("--long-epochs", type=int, help="epochs a task of the long trials (default 9, about 30 s "
                                                     "a trial on one core; --quick: 3)")
    ap.add_argument("--per-epoch", action="store_true", help="trials report every epoch (EpochTrainable), "
                                                              "not once a task")
    args = ap.parse_args()
    if args.per_epoch:  # the driver picks the trainable; workers only unpickle it
        from gradmix_tune.sweep import trial as trial_mod, tuner as tuner_mod

        tuner_mod.trainable_for = lambda study: trial_mod.EpochTrainable
    long_epochs = args.long_epochs or (3 if args.quick else 9)
    logging.getLogger("ray").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="gradmix-throughput-"))
    t_start = time.perf_counter()
    try:
        quick_path = ROOT / "ablations" / "quickstart.yaml"
        split = ROOT / "ablations" / "configs" / "split_mnist.yaml"
        long_path = write_study(work, "long", f"{{extends: {split}, train: {{epochs: {long_epochs}}}}}",
                                "{method: [er]}", "[0, 1]")
        quick, long_study = sweep.load_study(quick_path), sweep.load_study(long_path, data_root=args.data_root)

        loop_q, loop_long = loop_times(quick), loop_times(long_study)
        t0 = time.perf_counter()
        load_benchmark(from_dict(json.loads(json.dumps(long_study.trials[0]["config"]))), "cpu")
        load_s = time.perf_counter() - t0

        runs = {("quickstart", 1): ray_run(quick_path, work, "q1", 1, None),
                ("quickstart", 2): ray_run(quick_path, work, "q2", 2, None),
                ("long", 1): ray_run(long_path, work, "l1", 1, args.data_root)}
        if not args.quick:
            runs[("long", 2)] = ray_run(long_path, work, "l2", 2, args.data_root)
        total = time.perf_counter() - t_start

        n_q, n_l = len(loop_q), len(loop_long)
        per_q, per_l = sum(loop_q[1:]) / (n_q - 1), sum(loop_long[1:]) / (n_l - 1)
        print(f"\n## Sweep throughput ({os.cpu_count()} CPUs; load average {LOAD0[0]:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after; the benchmark took {total:.0f} s)\n")
        print("Ray: sweep.run_study, local Ray with 2 CPUs, MLflow to a temporary sqlite store (no switch "
              "turns it off), report at the end. Loop: learner.run per trial, no Ray, no MLflow. "
              "1 CPU and 1 torch thread a trial. s/trial: steady state (first trial left out).\n")
        print(f"### Quickstart study: {n_q} trials (digits, 5 tasks, MLP 100-100, 1 epoch a task)\n")
        print("| how | at a time | wall (s) | trials/min (wall) | trials phase (s) | s/trial | trials/min (s/trial) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| plain loop | 1 | {sum(loop_q):.1f} | {n_q / sum(loop_q) * 60:.0f} | {sum(loop_q):.1f} | "
              f"{per_q:.2f} | {60 / per_q:.0f} |")
        for c in (1, 2):
            r = runs[("quickstart", c)]
            print(f"| Ray Tune | {c} | {r['wall']:.1f} | {r['n'] / r['wall'] * 60:.0f} | {r['phase']:.1f} | "
                  f"{r['steady']:.2f} | {60 / r['steady']:.0f} |")
        print(f"\n### Long trials: Split-MNIST, 5 tasks, {long_epochs} epochs a task, {n_l} trials\n")
        print("| how | at a time | wall (s) | trials phase (s) | s/trial |")
        print("|---|---|---|---|---|")
        print(f"| plain loop | 1 | {sum(loop_long):.1f} | {sum(loop_long):.1f} | {per_l:.1f} |")
        for c in (1, 2):
            if ("long", c) in runs:
                r = runs[("long", c)]
                steady = f"{r['steady']:.1f}" if c == 1 else "-"  # 2 trials side by side: no steady state
                print(f"| Ray Tune | {c} | {r['wall']:.1f} | {r['phase']:.1f} | {steady} |")

        # results a trial: one per task (carrying its epochs'); --per-epoch: one per epoch, one per task
        res_q, res_l = (5 * (1 + 1), 5 * (long_epochs + 1)) if args.per_epoch else (5, 5)
        ov_q = runs[("quickstart", 1)]["steady"] - per_q
        ov_l = runs[("long", 1)]["steady"] - per_l
        # per task, both studies send 5 results: no per-result slope; the long trial's overhead is the estimate
        b = (ov_l - ov_q) / (res_l - res_q) if res_l != res_q else 0.0
        a = ov_q - b * res_q if res_l != res_q else ov_l
        per_epoch = (per_l - load_s) / (5 * long_epochs)  # training only: loading is paid once a trial
        epochs30 = max(1, round((30 - load_s) / per_epoch / 5))
        res30 = 5 * (epochs30 + 1) if args.per_epoch else 5
        ov30 = a + b * res30
        print("\n### Ray's overhead per trial (1 trial at a time, steady state)\n")
        print("| trial | loop s/trial | Ray s/trial | overhead s/trial | overhead % of the trial |")
        print("|---|---|---|---|---|")
        print(f"| quickstart (digits, {res_q} results) | {per_q:.2f} | {runs[('quickstart', 1)]['steady']:.2f} | "
              f"{ov_q:.2f} | {ov_q / per_q * 100:.0f}% |")
        print(f"| Split-MNIST, {long_epochs} epochs ({res_l} results) | {per_l:.1f} | "
              f"{runs[('long', 1)]['steady']:.1f} | {ov_l:.2f} | {ov_l / per_l * 100:.1f}% |")
        print(f"| estimate: 30 s trial (Split-MNIST, {epochs30} epochs, {res30} results) | 30 | "
              f"{30 + ov30:.1f} | {ov30:.2f} | {ov30 / 30 * 100:.1f}% |")
        warm = {k: r["first"] - (loop_q if k[0] == "quickstart" else loop_long)[0] for k, r in runs.items() if k[1] == 1}
        fixed = {k: r["wall"] - r["phase"] for k, r in runs.items()}
        print(f"\nOverhead model: {a:.3f} s + {b * 1000:.1f} ms per reported result. First trial on a worker, "
              "extra over the loop (warm-up): " + ", ".join(f"{k[0]} {v:.1f} s" for k, v in warm.items())
              + ". Fixed costs of a study (wall - trials phase: Ray start/stop, workers, MLflow setup, report): "
              + ", ".join(f"{k[0]} x{k[1]} {v:.1f} s" for k, v in fixed.items())
              + f". Split-MNIST loading: {load_s:.1f} s a trial, in both columns.")
        print("\n### Speed-up from 2 trials at a time (2 CPUs)\n")
        print("| study | 1 at a time | 2 at a time | speed-up | wall-clock speed-up |")
        print("|---|---|---|---|---|")
        r1, r2 = runs[("quickstart", 1)], runs[("quickstart", 2)]
        print(f"| quickstart (s/trial) | {r1['steady']:.2f} | {r2['steady']:.2f} | {r1['steady'] / r2['steady']:.2f}x | "
              f"{r1['wall'] / r2['wall']:.2f}x |")
        if ("long", 2) in runs:
            r1, r2 = runs[("long", 1)], runs[("long", 2)]
            print(f"| long (trials phase, s) | {r1['phase']:.1f} | {r2['phase']:.1f} | {r1['phase'] / r2['phase']:.2f}x | "
                  f"{r1['wall'] / r2['wall']:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
