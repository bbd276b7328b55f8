"""`gradmix-tune`: run one experiment, sweep an ablation, build a report.

Exit codes: 0 ok, 1 a run (or a trial of a study) failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError

COMMANDS = ("run", "sweep", "report")


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
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.set, data_root=args.data_root)
    from .learner import DivergedError, Hooks, run  # torch import after the config is known good

    def on_task(rec, _state):
        accs = " ".join(f"{a:.3f}" for a in rec.accuracies)
        print(f"task {rec.task + 1}: avg acc {rec.avg_acc:.4f}  [{accs}]  ({rec.time_s:.1f} s)", flush=True)

    try:
        result = run(cfg, Hooks(on_task=on_task))
    except DivergedError as e:
        print(f"error: run failed: {e}", file=sys.stderr)
        return 1
    print()
    print(_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.summary(), indent=2))
        print(f"\nwrote {args.json}")
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
    r.set_defaults(func=cmd_run)
    from . import report, sweep  # each adds its own subcommand (light imports only)

    sweep.register(sub)
    report.register(sub)
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
