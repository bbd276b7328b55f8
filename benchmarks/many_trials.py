"""The driver's cost in a study of many short trials: Ray's forced state saves against the
throttled ones (ray_compat.throttle_forced_state_saves).

    python benchmarks/many_trials.py [--trials 300] [--quick]

One study of N trials (digits, 5 tasks, MLP 100-100, 1 epoch a task: ~0.3 s of training each,
a checkpoint after every task), 2 at a time on 2 CPUs, through the project's own
sweep.load_study + sweep.run_study (MLflow to a temporary sqlite store, the report at the end).
Two arms, each in its own process, run one after the other in this one run:

  ray        Ray's rule: with CheckpointConfig(num_to_keep=1) the whole study state (~50 KB a
             trial) is saved after every checkpoint, so the cost of a study grows as trials^2
  throttled  forced saves only while they take <= 5% of the driver's time (the default)

Numbers: wall = the whole run_study call; trials phase = first trial's start -> last trial's
end (as the driver sees them); state saves = how many times the driver wrote the study's state
(Ray's TuneController.save_to_dir, forced or timed), and their total seconds on the driver loop
(serialising it; the copy into the study folder runs on Ray's background thread). --quick: 100 trials.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arm(name: str, trials: int, work: Path) -> dict:
    """One study in this process; `ray` switches the throttle off (Ray's forced saves)."""
    from ray.tune import Callback
    from ray.tune.execution.tune_controller import TuneController

    from gradmix_tune import sweep
    from gradmix_tune.sweep import ray_compat

    if name == "ray":
        ray_compat.throttle_forced_state_saves = lambda: None
    saves: list[float] = []
    save = TuneController.save_to_dir

    def timed_save(self):
        t0 = time.perf_counter()
        save(self)
        saves.append(time.perf_counter() - t0)
    TuneController.save_to_dir = timed_save

    class Clock(Callback):
        def __init__(self):
            self.start: dict[str, float] = {}
            self.end: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start.setdefault(trial.trial_id, time.perf_counter())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.perf_counter()

    digits = ROOT / "ablations" / "configs" / "digits.yaml"
    path = work / f"many_{name}.yaml"
    path.write_text(f"name: many_{name}\nbase: {{extends: {digits}, train: {{epochs: 1}}}}\n"
                    f"grid: {{method: [er]}}\nseeds: {list(range(trials))}\nresources: {{cpu: 1, gpu: 0}}\n")
    logging.getLogger("ray").setLevel(logging.ERROR)
    study = sweep.load_study(path, storage=str(work / f"rr-{name}"), tracking_uri=f"sqlite:///{work}/mlflow-{name}.db")
    clock, out = Clock(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        res = sweep.run_study(study, max_concurrent=2, num_cpus=2, num_gpus=0, reports_dir=str(work / f"rep-{name}"),
                              heartbeat_s=1e9, callbacks=[clock])
    wall = time.perf_counter() - t0
    ok = sum(t.status == "ok" for t in res.trials)
    if res.exit_code != 0 or ok != trials:
        raise SystemExit(f"{name}: exit {res.exit_code}, {ok}/{trials} ok\n{out.getvalue()[-3000:]}")
    state = max((work / f"rr-{name}" / f"many_{name}").glob("experiment_state-*.json"), key=os.path.getmtime)
    return {"wall": wall, "phase": max(clock.end.values()) - min(clock.start.values()), "saves": len(saves),
            "save_s": sum(saves), "state_mb": state.stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, help="trials in the study (default 300; --quick 100)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arm", choices=("ray", "throttled"), help=argparse.SUPPRESS)  # one arm, as a child
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    trials = args.trials or (100 if args.quick else 300)
    if args.arm:
        print(json.dumps(arm(args.arm, trials, Path(args.work))))
        return
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="gradmix-many-trials-"))
    try:
        rows = {}
        for name in ("ray", "throttled"):
            p = subprocess.run([sys.executable, __file__, "--arm", name, "--trials", str(trials), "--work", str(work)],
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stdout[-2000:] + p.stderr[-3000:])
            rows[name] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"# {name}: {rows[name]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n### A study of {trials} short trials, 2 at a time ({os.cpu_count()} CPUs; load average "
          f"{load0:.1f} before, {os.getloadavg()[0]:.1f} after)\n")
    print("| forced state saves | wall (s) | trials phase (s) | s/trial (phase / trials) | state saves | "
          "time saving state (s) | final state (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("ray", "Ray's: after every checkpoint"), ("throttled", "throttled to 5% (default)")):
        r = rows[name]
        print(f"| {label} | {r['wall']:.1f} | {r['phase']:.1f} | {r['phase'] / trials:.2f} | {r['saves']} | "
              f"{r['save_s']:.1f} | {r['state_mb']:.1f} |")
    print(f"\nWall-time ratio (Ray's / throttled): {rows['ray']['wall'] / rows['throttled']['wall']:.2f}x")


if __name__ == "__main__":
    main()
