"""`gradmix-tune`: run one experiment, sweep an ablation, build a report.

Exit codes: 0 ok, 1 a run (or a trial of a study) failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError

COMMANDS = ("run", "sweep", "report", "ui", "tracking")


def _table(result) -> str:
    a = result.accuracy_matrix
    t = len(a)
    lines = ["accuracy matrix (row: after task i, column: test on task j)",
             "        " + " ".join(f"  T{j + 1:<4}" for j in range(t))]
    for i, row in enumerate(a):
        lines.append(f"  T{i + 1:<4} " + " ".join(f"{v:6.3f} " for v in row))
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
    if not args.no_track:  # the logging process imports mlflow (seconds) on the other core meanwhile
        from .tracking.loggers import start_run_child

        start_run_child()
    from .data import load_benchmark  # torch import after the config is known good
    from .learner import DivergedError, Hooks, pick_device, run

    try:
        bench = load_benchmark(cfg, pick_device(cfg.train.device))  # a missing dataset is bad input: exit 2
    except ConfigError as e:  # name the file the data section came from
        raise ConfigError(e.where or args.config or "gradmix-tune run", e.key, e.problem, e.fix) from None
    tracker = None
    if not args.no_track:  # MLflow: a run without a parent, logged like a sweep's trial
        from .tracking import RunLogger, resolve_tracking_uri

        from .data import describe

        tracker = RunLogger(cfg, resolve_tracking_uri(args.tracking_uri), args.experiment, args.config,
                            dataset=describe(bench, cfg))
        print(f"tracking: {tracker.uri} (experiment {tracker.experiment}; --no-track to skip)", flush=True)

    def on_task(rec, state):
        if tracker:  # handed to the logging process first: a task the console shows is never lost
            tracker.on_task(rec, state)
        accs = " ".join(f"{a:.3f}" for a in rec.accuracies)
        print(f"task {rec.task + 1}: avg acc {rec.avg_acc:.4f}  [{accs}]  ({rec.time_s:.1f} s)", flush=True)

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
        unsent = tracker.end("FINISHED")
        if unsent:
            print(f"warning: MLflow at {tracker.uri} did not take everything: kept in {unsent}; send it "
                  f"with `gradmix-tune tracking replay {unsent}`", file=sys.stderr)
        elif tracker.run_id:
            print(f"MLflow run {tracker.run_id}")
    print()
    print(_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.summary(), indent=2))
        print(f"\nwrote {args.json}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep.study import load_study, trial_table  # no ray, no torch: --dry-run stays fast

    study = load_study(args.ablation, args.set, data_root=args.data_root, storage=args.storage,
                       tracking_uri=args.tracking_uri)
    if args.resume and args.overwrite:
        raise ConfigError("--resume", None, "--resume and --overwrite contradict each other", "pick one")
    for flag in ("max_concurrent", "num_cpus", "num_gpus"):
        v = getattr(args, flag)
        if v is not None and v < (1 if flag == "max_concurrent" else 0):
            raise ConfigError(f"--{flag.replace('_', '-')}", None, f"got {v}", "a positive number")
    if args.dry_run:  # what `run` checks before training, for every arm's data (run_study does it too)
        from .sweep.preflight import check_study

        check_study(study)
        print(trial_table(study))
        return 0
    from .sweep.runner import run_study

    outcome = run_study(study, resume=args.resume, overwrite=args.overwrite, max_concurrent=args.max_concurrent,
                        num_cpus=args.num_cpus, num_gpus=args.num_gpus, address=args.address,
                        storage_given=args.storage is not None, dashboard=args.dashboard,
                        reports_dir=args.reports)
    return outcome.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, build_comparison, build_report
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if len(args.study) > 1 and not args.compare:
        raise ConfigError("gradmix-tune report", None, f"{len(args.study)} studies given",
                          "add --compare for one report over them, or give one study")
    if args.compare and len(args.study) < 2:
        raise ConfigError("gradmix-tune report", "--compare", "needs at least two studies",
                          "gradmix-tune report A B --compare")
    try:
        if args.compare:
            if args.experiment or args.parent_run or args.log_to_parent:
                raise ConfigError("gradmix-tune report", "--compare",
                                  "--experiment, --parent-run and --log-to-parent name one study",
                                  "leave them out: each study's latest parent run is used")
            folder = build_comparison(args.study, uri, args.out, name=args.name, ui_url=args.ui_url)
            res = json.loads((folder / "summary.json").read_text())["comparison"]
            print(f"wrote {folder / 'report.md'}, {folder / 'report.html'} and {folder / 'table.tex'}: "
                  f"{len(res['shared_arms'])} arms shared by {len(res['studies'])} studies")
            return 0
        folder = build_report(args.study[0], uri, args.out, experiment=args.experiment,
                              parent_run_id=args.parent_run, log_to_parent=args.log_to_parent, ui_url=args.ui_url)
    except ReportError as e:
        raise ConfigError(uri, None, str(e), "check the study name, --experiment and --tracking-uri "
                          "(or MLFLOW_TRACKING_URI)") from None
    res = json.loads((folder / "summary.json").read_text())
    print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}: {res['n_runs']} runs in "
          f"{len(res['arms'])} arms, {len(res['failed'])} failed or unfinished")
    return 0


def _wait_until_answering(url: str, proc, timeout_s: float = 120.0) -> bool:
    """Poll the server until it answers (mlflow ui takes a while to accept connections)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def cmd_tracking_replay(args: argparse.Namespace) -> int:
    """Send unsent.jsonl files (what MLflow did not take) to a tracking store; idempotent."""
    from .tracking.replay import ReplayError, read, replay, summary, unsent_files

    target = Path(args.file)
    if not target.exists():
        raise ConfigError(args.file, None, "no such file or folder",
                          "give the unsent.jsonl that a sweep or run named (a study keeps them in "
                          "<storage>/<study>/mlflow-unsent/)")
    files = unsent_files(target)
    if not files:
        raise ConfigError(args.file, None, "no unsent.jsonl here", "give the file, or the folder that holds it")
    for f in files:
        try:
            read(f)
        except ReplayError as e:
            raise ConfigError(str(f), None, str(e).split(": ", 1)[-1], "give an unsent.jsonl a gradmix-tune "
                                                                         "sweep or run wrote") from None
    for f in files:
        try:
            res = replay(f, args.tracking_uri)
        except ReplayError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(summary(res, f), flush=True)
    return 0


def _print_study_links(uri: str, url: str, most: int = 5) -> None:
    """The latest studies' runs grouped by arm, as a table and as charts (the links name the
    "Model training" view, so they open the runs in any MLflow 3 UI and browser)."""
    try:
        from mlflow import MlflowClient

        from .tracking.store import ARMS_VIEW, ui_links

        exps = MlflowClient(uri).search_experiments(max_results=50, order_by=["last_update_time DESC"])
        studies = [e for e in exps if f"mlflow.sharedViewState.{ARMS_VIEW}" in e.tags][:most]
    except Exception:  # noqa: BLE001 - the links are a convenience
        return
    for e in studies:
        links = ui_links(url, e.experiment_id)
        print(f"  study {e.name}, runs grouped by arm: {links['table']}\n    as charts: {links['charts']}", flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    """`mlflow ui` on the tracking store, bound to 127.0.0.1 unless --host says otherwise."""
    import os
    import signal
    import subprocess

    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: open it in a browser")
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving the MLflow UI on {args.host}: anyone who can reach it sees every run",
              file=sys.stderr)
    # `mlflow ui`, whose index page makes experiments open on their runs ("Model training"), not on
    # MLflow 3's GenAI overview (tracking/ui.py says why the experiment's tags cannot)
    cmd = [sys.executable, "-m", "gradmix_tune.tracking.ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    print(f"starting the MLflow UI for {uri} ...", flush=True)
    # its own process group: `mlflow ui` runs uvicorn and its workers as children, which a signal
    # to it alone leaves serving; stopping the group stops them all
    proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)

    def end_server() -> None:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(signum, frame):  # SIGTERM (a service manager, `kill`): stop the server too, as Ctrl-C does
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        pass
    try:
        if not _wait_until_answering(f"{url}/health", proc):
            code = proc.poll()
            end_server()
            print(f"error: the MLflow UI did not start on {url} (exit {code}). Fix: pick a free --port",
                  file=sys.stderr)
            return 1
        print(f"MLflow UI ready on {url}; Ctrl-C to stop", flush=True)
        _print_study_links(uri, url)
        return proc.wait()
    except KeyboardInterrupt:
        end_server()
        return 0


# ---------------------------------------------------------------------------- argument parsing
TRACKING_HELP = "MLflow tracking URI (else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
DATA_ROOT_HELP = "dataset folder (else data.root, else $GRADMIX_DATA_ROOT, else ./data)"


class _Help(argparse.RawDescriptionHelpFormatter):
    """--help shows every option's default (those that have one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradmix-tune")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradmix-tune", formatter_class=_Help,
        description="Class-incremental learning with replay and GradMix. "
                    "`gradmix-tune ABLATION.yaml` runs a study (same as `gradmix-tune sweep`).")
    p.add_argument("--version", action="version", version=f"gradmix-tune {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run one experiment without Ray", formatter_class=_Help,
                       description="Run one experiment (no Ray) and print its metrics table.")
    r.add_argument("config", nargs="?", help="experiment YAML (defaults: digits, mlp, ER)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. memory.size=200")
    r.add_argument("--data-root", help=DATA_ROOT_HELP)
    r.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    r.add_argument("--tracking-uri", help=TRACKING_HELP)
    r.add_argument("--experiment", default="gradmix-runs", help="MLflow experiment")
    r.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "sweep", help="run an ablation study with Ray Tune", formatter_class=_Help,
        description="Run an ablation study (ablations/*.yaml) with Ray Tune: every arm x seed (or the "
                    "search's samples) as a trial, live progress, a per-arm summary, then the report. "
                    "Exit code 0: all trials ok; 1: some failed (the others still finish), or MLflow did not take "
                    "everything (kept in the results folder: `gradmix-tune tracking replay`); 2: bad input; "
                    "130/143: stopped by Ctrl-C/SIGTERM (continue with --resume).")
    s.add_argument("ablation", help="ablation YAML file")
    s.add_argument("--dry-run", action="store_true", help="check everything, print the trial table, exit (no Ray)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. train.epochs=2 (repeatable)")
    s.add_argument("--data-root", help=DATA_ROOT_HELP)
    s.add_argument("--max-concurrent", type=int, metavar="N", help="run at most N trials at a time")
    s.add_argument("--num-cpus", type=int, metavar="N", help="CPUs for the local Ray (None: all)")
    s.add_argument("--num-gpus", type=int, metavar="N", help="GPUs for the local Ray (None: all)")
    s.add_argument("--resume", action="store_true",
                   help="continue the interrupted study in --storage: finished trials are kept, unfinished "
                        "and failed ones continue from their last checkpoint; MLflow entries kept unsent are sent first")
    s.add_argument("--overwrite", action="store_true", help="discard earlier results of this study and start over")
    s.add_argument("--address", help="join an existing Ray cluster (None: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--storage", metavar="PATH_OR_URI",
                   help="where results and checkpoints go (None: ./ray_results); a multi-node cluster "
                        "needs shared storage: an NFS path on every node or s3://...")
    s.add_argument("--tracking-uri", help=TRACKING_HELP)
    s.add_argument("--reports", default="reports", metavar="DIR", help="where the report goes")
    s.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local Ray")
    s.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="build reports/STUDY/ from the MLflow store", formatter_class=_Help,
                         description="Build OUT/STUDY/report.md and report.html (findings, tables, tests, "
                                     "figures) from the study's runs in MLflow. Needs only the tracking "
                                     "store, not Ray's results. With --compare: one report over several "
                                     "studies that share arms (OUT/compare_A_B/, with a LaTeX table).")
    rep.add_argument("study", nargs="+", help="study name (the ablation's `name:`); several with --compare")
    rep.add_argument("--compare", action="store_true",
                     help="one report over the studies given, side by side on the arms they share")
    rep.add_argument("--name", help="folder name of a --compare report (None: compare_A_B)")
    rep.add_argument("--tracking-uri", help=TRACKING_HELP)
    rep.add_argument("--out", default="reports", help="parent folder of the report")
    rep.add_argument("--experiment", help="MLflow experiment (None: the study name; searched in all "
                                          "experiments when absent)")
    rep.add_argument("--parent-run", metavar="RUN_ID", help="report on this parent run instead of the "
                                                           "study's latest")
    rep.add_argument("--log-to-parent", action="store_true",
                     help="also log the report, per-arm metrics and the findings to the parent run")
    rep.add_argument("--ui-url", metavar="URL", help="MLflow UI that run links point to (None: the tracking "
                                                     "server; for a local store http://127.0.0.1:5000, what "
                                                     "`gradmix-tune ui` serves)")
    rep.set_defaults(func=cmd_report)

    u = sub.add_parser("ui", help="open the MLflow UI on the tracking store", formatter_class=_Help,
                       description="Serve the MLflow UI for the tracking store (127.0.0.1 unless --host); "
                                   "says ready once the server answers. Experiments open on their runs "
                                   "(\"Model training\") unless the browser chose GenAI with the toggle.")
    u.add_argument("--tracking-uri", help=TRACKING_HELP)
    u.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000, help="port to serve on")
    u.set_defaults(func=cmd_ui)

    t = sub.add_parser("tracking", help="MLflow tracking chores: send what could not be sent",
                       formatter_class=_Help, description="MLflow tracking chores.")
    tsub = t.add_subparsers(dest="tracking_command", metavar="ACTION")
    tr = tsub.add_parser("replay", formatter_class=_Help, help="send an unsent.jsonl to a tracking store",
                         description="Send the MLflow entries that a sweep or run could not send (its "
                                     "unsent.jsonl, with the artifacts beside it) to a tracking store. "
                                     "Idempotent: runs are found again, what a run already has is skipped, "
                                     "so replaying twice writes nothing twice. Exit 1 when the store does "
                                     "not answer (nothing is lost: run it again).")
    tr.add_argument("file", help="an unsent.jsonl, or a folder of them (e.g. <storage>/<study>/mlflow-unsent)")
    tr.add_argument("--tracking-uri", help="where to send them (None: the store they were meant for)")
    tr.set_defaults(func=cmd_tracking_replay)
    t.set_defaults(func=lambda a: (t.print_help(), 2)[1])
    return p


def _usage_error(argv: list[str]) -> str | None:
    """Mistakes argparse would misread: a mistyped command taken for a study file, `--set K V`."""
    from .values import closest

    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        word = argv[0]
        if not Path(word).exists() and not word.endswith((".yaml", ".yml")):
            near = closest(word, COMMANDS)
            fix = f"did you mean '{near}'?" if near else f"commands: {', '.join(COMMANDS)}, or a study YAML file"
            return f"error: unknown command {word!r}. Fix: {fix}"
    for i, a in enumerate(argv[:-1]):
        if a == "--set" and "=" not in argv[i + 1]:
            key = argv[i + 1]
            val = argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("-") else "VALUE"
            return f"error: --set {key}: expected KEY=VALUE. Fix: write --set {key}={val}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = _usage_error(argv)
    if problem:
        print(problem, file=sys.stderr)
        return 2
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
