"""run_study: check the storage, run the study's trials on Ray (tuner.py), print the per-arm summary, build the report.

Exit codes (SweepOutcome.exit_code): 0 every trial ran to the end (or was stopped early by
ASHA) and MLflow took everything, 1 some trial failed or MLflow did not take every entry (kept in
the study's folder, unsent.py), 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM (resumable); bad
input (including unusable storage) raises ConfigError, which the command turns into 2. Importing
this module imports no ray: Ray is loaded only once the checks that need none have passed.
"""
from __future__ import annotations

import os
import sys

from .phases import Evaluation, fit_phases
from .preflight import check_study
from .signals import StopSignals
from .storage import check_storage
from .study import Study
from .summary import SweepOutcome, summary_table
from .unsent import describe as describe_unsent
from .unsent import keep, replay_waiting

# Set for the study's run, before ray is imported (a value the user set wins):
RAY_ENV = {
    "OMP_NUM_THREADS": "1",  # local workers inherit it; each trial sets torch threads to its CPUs
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # we snapshot at every checkpoint
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no TensorBoard / CSV writer per result (JSON is kept)
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: Ray prints no tables; the Progress callback reports
}


def run_study(study: Study, *, resume: bool = False, overwrite: bool = False, max_concurrent: int | None = None,
              num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None,
              storage_given: bool = True, dashboard: bool = False, reports_dir: str = "reports",
              heartbeat_s: float = 30.0, callbacks: list | None = None, preflight: bool = True) -> SweepOutcome:
    """Run (or resume) the study on Ray; print progress and the per-arm summary. `callbacks`:
    more Ray Tune callbacks for the driver (e.g. benchmarks/sweep_throughput.py's trial clock).
    `preflight=False`: the caller already ran preflight.check_study (the data, each arm's learner)."""
    if not overwrite:  # the cheap checks first (no torch for a study whose results are in the way)
        check_storage(study, resume, overwrite)
    if preflight:
        check_study(study)  # before Ray starts: a missing dataset is one exit-2 line, not N failed trials
    if overwrite:  # it deletes the earlier results: only once everything else is known good
        check_storage(study, resume, overwrite)
    if resume:
        replay_waiting(study)  # what an earlier session could not send to MLflow goes first
    saved_env = {k: os.environ.get(k) for k in RAY_ENV}
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    stop = StopSignals()
    try:
        with stop:
            from .tuner import fit_study  # ray: here, once the input is known to be good

            fit = fit_phases if study.evaluate else fit_study  # phases.py: tuning, then evaluation (protocol.py)
            got = fit(study, resume=resume, max_concurrent=max_concurrent, num_cpus=num_cpus,
                      num_gpus=num_gpus, address=address, storage_given=storage_given, dashboard=dashboard,
                      heartbeat_s=heartbeat_s, callbacks=list(callbacks or []))
            trials, parent_run_id, evaluation = got if study.evaluate else (*got, None)
            outcome = _finish(study, trials, storage_given, reports_dir, parent_run_id, evaluation)
    except KeyboardInterrupt:  # stopped outside Ray's own handling (while Ray started, a second signal)
        print(f"\ninterrupted: continue with\n  {_resume_command(study, storage_given)}", flush=True)
        return SweepOutcome(study, [], stop.exit_code)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if outcome.exit_code == 130:
        outcome.exit_code = stop.exit_code  # 143 after a SIGTERM
    return outcome


def _resume_command(study: Study, storage_given: bool) -> str:
    return f"gradmix-tune sweep {study.path} --resume" + (f" --storage {study.storage_path}" if storage_given else "")


def _finish(study: Study, trials: list, storage_given: bool, reports_dir: str,
            parent_run_id: str | None, evaluation: Evaluation | None = None) -> SweepOutcome:
    """After the trials: the summary, the failures, then the report on the study's MLflow parent
    run (or how to resume). `evaluation`: a study's phase 2 (phases.py), summarised after phase 1."""
    print()
    print(summary_table(study, trials))
    failed = [t for t in trials if t.status == "failed"]
    for t in failed:
        print(f"  failed: trial {t.config.get('index')} ({t.config.get('arm')}, seed {t.config.get('seed')}): "
              f"{t.error}")
    unfinished = [t for t in trials if t.status == "unfinished"]
    interrupted = bool(unfinished) or len(trials) < study.num_trials
    phase = (study, trials)  # the phase whose trials are to go, when interrupted
    if evaluation is not None and not interrupted:  # phase 2: its summary, failures and trials too
        print("\n" + evaluation.summary())
        for t in evaluation.failed:
            print(f"  failed: evaluation trial {t.config.get('index')} ({t.config.get('arm')}, seed "
                  f"{t.config.get('seed')}): {t.error}")
        failed, interrupted = failed + evaluation.failed, evaluation.interrupted
        phase, trials = (evaluation.study, evaluation.trials), trials + evaluation.trials
    print(f"\nresults  {study.experiment_path}\ntracking {study.tracking_uri}", flush=True)
    if interrupted:  # Ctrl-C: Ray saved the state; the report waits for the whole study
        left = phase[0].num_trials - sum(t.status in ("ok", "failed", "stopped") for t in phase[1])
        print(f"interrupted with {left} of {phase[0].num_trials} {'evaluation ' * bool(phase[0].phase_dir)}"
              f"trials to go: continue with\n  {_resume_command(study, storage_given)}", flush=True)
        unsent = keep(study)
        if unsent:
            print(describe_unsent(unsent, study), flush=True)
        return SweepOutcome(study, trials, 130)
    unsent = keep(study)
    if unsent:  # the report would read an incomplete store, and say it was logged when it was not
        print(describe_unsent(unsent, study), flush=True)
        return SweepOutcome(study, trials, 1)
    try:
        from ..report import after_sweep  # here: --dry-run and bad input read no report code

        report_dir = after_sweep(study, study.tracking_uri, out_dir=reports_dir, parent_run_id=parent_run_id)
    except Exception as e:  # noqa: BLE001 - the trials' results stand; the report can be rebuilt later
        print(f"warning: the report failed ({type(e).__name__}: {e}); rebuild it with "
              f"`gradmix-tune report {study.name}`", file=sys.stderr)
        report_dir = None
    return SweepOutcome(study, trials, 1 if failed else 0, str(report_dir) if report_dir else None)
