"""`gradmix-tune`: run one experiment, sweep an ablation, build a report.

Exit codes: 0 ok, 1 a run (or a trial of a study) failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError

COMMANDS = ("run", "sweep", "report", "ui")


def _table(result) -> str:
    a = result.accuracy_matrix
    t = len(a)
    lines = ["accuracy matrix (row: after task i, column: test on task j)",
             "        " + " ".join(f"  T{j:<4}" for j in range(t))]
    for i, row in enumerate(a):
        lines.append(f"  T{i:<4} " + " ".join(f"{v:6.3f} " for v in row))
    lines += ["",
              f"  final average accuracy   {result.final_avg_acc:.4f}",
              f"  average incremental acc  {result.avg_incremental_acc:.4f}",
              f"  forgetting               {result.forgetting:.4f}",
              f"  backward transfer (BWT)  {result.bwt:.4f}",
              f"  wall time                {result.wall_time_s:.1f} s"]
    if result.val_metrics:  # held-out part of the training data (data.val_fraction)
        lines.append(f"  validation final avg acc {result.val_metrics['val_final_avg_acc']:.4f}")
    u = result.u_shape
    if len(result.epochs) > len(a) and u:  # several epochs per task: where the last task peaked
        lines.append(f"  last task's peak epoch   {u['peak_epoch']:.0f} (acc {u['peak_acc']:.4f}, "
                     f"drop to the end {u['u_shape_drop']:.4f})")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.set, data_root=args.data_root)
    from .data import load_benchmark  # torch import after the config is known good
    from .learner import DivergedError, Hooks, pick_device, run

    bench = load_benchmark(cfg, pick_device(cfg.train.device))  # a missing dataset is bad input: exit 2
    tracker = None
    if not args.no_track:  # MLflow: a run without a parent, logged like a sweep's trial
        from .tracking import RunLogger, resolve_tracking_uri

        tracker = RunLogger(cfg, resolve_tracking_uri(args.tracking_uri), args.experiment, args.config)
        print(f"tracking: {tracker.uri} (experiment {tracker.experiment}; --no-track to skip)", flush=True)

    def on_task(rec, state):
        accs = " ".join(f"{a:.3f}" for a in rec.accuracies)
        print(f"task {rec.task + 1}: avg acc {rec.avg_acc:.4f}  [{accs}]  ({rec.time_s:.1f} s)", flush=True)
        if tracker:
            tracker.on_task(rec, state)

    try:
        result = run(cfg, Hooks(on_epoch=tracker.on_epoch if tracker else None, on_task=on_task), bench=bench)
    except DivergedError as e:
        print(f"error: run failed: {e}", file=sys.stderr)
        if tracker:
            tracker.end("FAILED", f"DivergedError: {e}")
        return 1
    except BaseException as e:
        if tracker:
            import traceback

            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", traceback.format_exc())
        raise
    if tracker:
        tracker.end("FINISHED")
        if tracker.run_id:
            print(f"MLflow run {tracker.run_id}")
    print()
    print(_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.summary(), indent=2))
        print(f"\nwrote {args.json}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """`mlflow ui` on the tracking store, bound to 127.0.0.1 unless --host says otherwise."""
    import os
    import subprocess

    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: open it in a browser")
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving the MLflow UI on {args.host}: anyone who can reach it sees every run",
              file=sys.stderr)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} ({uri}); Ctrl-C to stop", flush=True)
    try:
        return subprocess.call(cmd, env=os.environ.copy())
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradmix-tune",
        description="Class-incremental learning with replay and GradMix. "
                    "`gradmix-tune ABLATION.yaml` runs a study (same as `gradmix-tune sweep`).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run one experiment without Ray",
                       description="Run one experiment (no Ray) and print its metrics table.")
    r.add_argument("config", nargs="?", help="experiment YAML (defaults: digits, mlp, ER)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. memory.size=200")
    r.add_argument("--data-root", help="dataset folder (else $GRADMIX_DATA_ROOT, else ./data)")
    r.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    r.add_argument("--experiment", default="gradmix-runs", help="MLflow experiment (default: gradmix-runs)")
    r.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    r.set_defaults(func=cmd_run)
    from . import report, sweep  # each adds its own subcommand (light imports only)

    sweep.register(sub)
    report.register(sub)
    u = sub.add_parser("ui", help="open the MLflow UI on the tracking store",
                       description="Serve the MLflow UI for the tracking store (127.0.0.1 unless --host).")
    u.add_argument("--tracking-uri", help="else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["sweep"] + argv  # `gradmix-tune ablations/x.yaml`
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
