"""One Ray Tune run of a study: the Tuner (new, or restored for --resume), its fit, each trial's outcome.

Every Ray trial's config is a dict made by study.make_trial. Results and checkpoints go to
<storage>/<name>/ (one folder per trial, t<index>_<trial id>); `--resume` restores the study
from there without re-running finished trials.
"""
from __future__ import annotations

import logging
import os

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from ..config import ConfigError
from . import ray_compat
from .callbacks import MlflowCallback, Progress, error_text
from .checkpoints import prune_checkpoints
from .cluster import check_cluster, init_ray
from .preflight import datasets
from .search import (make_scheduler, make_search_alg, set_known_trials, set_search_concurrency,
                     set_unfinished_trials)
from .signals import rearm
from .storage import raise_if_storage_full, recorded_final, remove_orphans, save_study_record
from .study import Study, join
from .summary import TrialOutcome
from .trial import trainable_for, trial_dirname
from .unsent import spill_dir


def fit_study(study: Study, *, resume: bool, max_concurrent: int | None, num_cpus: int | None,
              num_gpus: int | None, address: str | None, storage_given: bool, dashboard: bool,
              heartbeat_s: float, callbacks: list, parent_run_id: str | None = None,
              phase: str = "") -> tuple[list[TrialOutcome], str | None]:
    """Run (or resume) the study's trials on Ray, printing progress: their outcomes by index and
    the study's MLflow parent run. `callbacks`: more Ray Tune callbacks for the driver. Shuts down
    a Ray it started. A study's second phase (phases.py: `phase` "evaluate") logs its runs under
    the first phase's parent run (`parent_run_id`; else the study's latest)."""
    started = init_ray(address, num_cpus, num_gpus, dashboard)
    ray_compat.atomic_state_uploads()  # a driver killed mid-save leaves whole state files
    ray_compat.throttle_forced_state_saves()  # state saves stay ~5% of the driver's time
    rearm()  # ray.init put its own SIGTERM handler in place of the study's
    try:
        slots = check_cluster(study, storage_given)
        concurrency = max_concurrent or slots
        tracker = MlflowCallback(study, study.tracking_uri, resume or bool(phase), phase=phase)
        if parent_run_id:
            tracker.set_state({"parent": parent_run_id})
        tracker.spill_dir = spill_dir(study)  # unsent entries stay with the study's results (unsent.py)
        tracker.datasets = datasets(study)  # what preflight loaded: each run's mlflow.log_input
        callbacks = [Progress(study.num_trials, study.metric, study.mode, heartbeat_s=heartbeat_s),
                     JsonLoggerCallback(), tracker, *callbacks]
        # one report a task carrying its epochs; per epoch only for a scheduler over global_epoch
        trainable = tune.with_resources(trainable_for(study),
                                        {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})
        if resume:
            tuner = tune.Tuner.restore(study.experiment_path, trainable, resume_unfinished=True,
                                       resume_errored=True)
            # fresh callbacks (tracking resumes its runs); new concurrency; the trials Ray saved
            if ray_compat.replace_callbacks(tuner, callbacks):
                search_alg = ray_compat.restored_search_alg(tuner)
                if max_concurrent:
                    set_search_concurrency(search_alg, max_concurrent)
                if not study.search:
                    set_known_trials(search_alg, _saved_indices(study.experiment_path))
                saved = saved_trials(study.experiment_path)
                set_unfinished_trials(search_alg, None if saved is None else
                                      {t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR")})
            print(f"resuming study {study.name} from {study.experiment_path}", flush=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_search_alg(study, concurrency),
                                            scheduler=make_scheduler(study), num_samples=study.num_trials,
                                            reuse_actors=True, trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=study.ray_name, storage_path=study.ray_storage, callbacks=callbacks, verbose=0,
                    failure_config=tune.FailureConfig(max_failures=study.max_failures),
                    # one per trial: Ray then saves the study's state after a checkpoint (it forces
                    # a snapshot every num_to_keep checkpoints; ray_compat.throttle_forced_state_saves
                    # keeps those to ~5% of the driver's time). Ray deletes the previous checkpoint
                    # before that snapshot: a restore never trusts the state blindly
                    # (checkpoints.usable_checkpoint).
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            save_study_record(study)
            print(f"study {study.name}: {study.num_trials} trials, up to {concurrency} at a time "
                  f"-> {study.experiment_path}", flush=True)
        quiet = logging.getLogger("ray.tune")  # trial tracebacks: the progress lines say it shorter
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        restore = _RestoreFailure()
        try:
            grid = tuner.fit()
            trials = outcomes(grid, study)
        except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM cut Ray's own stop short
            tracker.abort()  # open runs end KILLED, not RUNNING
            raise
        except Exception as e:
            raise_if_storage_full(study, e)
            if restore.error is not None:
                tracker.abort()  # runs the resume reopened end KILLED, not RUNNING
                raise restore.as_config_error(study) from restore.error
            raise
        finally:
            restore.close()
            quiet.setLevel(level)
        if resume:
            remove_orphans(study, trials)
        prune_checkpoints(study, grid)
    finally:
        if started:
            ray.shutdown()
    return trials, tracker.parent_run_id


class _RestoreFailure(logging.Handler):
    """Why Ray could not restore a study's saved state. Ray logs it ("Failed to restore the run
    state.") and goes on as if the study were new, which then fails on an assertion that says
    nothing; the progress lines keep Ray's log quiet, so this handler keeps the reason."""

    NAME = "ray.tune.execution.tune_controller"

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.error: BaseException | None = None
        self.logger = logging.getLogger(self.NAME)
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.ERROR)  # "ray.tune" is held at CRITICAL meanwhile
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and self.error is None and "restore" in record.getMessage():
            self.error = record.exc_info[1]

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]
        super().close()

    def as_config_error(self, study: Study) -> ConfigError:
        return ConfigError(study.experiment_path, None,
                           f"Ray could not restore the study's saved state ({type(self.error).__name__}: "
                           f"{self.error})",
                           "start over with --overwrite (finished trials' results stay in MLflow and in "
                           "their trial folders until then)")


def saved_trials(experiment_path: str) -> list | None:
    """The trials in the study's saved Ray state, as --resume restores them (running ones read
    back as PENDING); None when there is none or it cannot be read."""
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")  # "no result.json yet"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return list(tune.ExperimentAnalysis(experiment_path).trials)
    except Exception:  # noqa: BLE001 - a resume lets Ray's own restore report it
        return None
    finally:
        quiet.setLevel(level)


def _saved_indices(experiment_path: str) -> set[int] | None:
    """Study indices of the trials in the saved state (None: unreadable)."""
    saved = saved_trials(experiment_path)
    try:
        return None if saved is None else {int(t.config["index"]) for t in saved}
    except (KeyError, TypeError, ValueError):  # not a state this study wrote: let Ray's restore report it
        return None


def outcomes(result_grid, study: Study) -> list[TrialOutcome]:
    """Each trial's end: ok (ran to the last task), failed, stopped (early, by ASHA) or unfinished
    (Ctrl-C: Ray stops running trials and marks them terminated, without their final result)."""
    trials = ray_compat.result_trials(result_grid)  # the live Trial objects, in the same order
    if len(trials) != len(result_grid):
        trials = [None] * len(result_grid)
    saved: dict[str, str] = {}
    if study.scheduler["type"] != "fifo" and any("final_avg_acc" not in (r.metrics or {}) for r in result_grid):
        # ASHA stops trials too: ask the saved state which ones Ctrl-C cut
        saved = {t.trial_id: t.status for t in saved_trials(study.experiment_path) or []}
    out = []
    for r, trial in zip(result_grid, trials):
        # (Result.config comes from the last result: a trial that failed before any has none)
        cfg = r.config or dict(getattr(trial, "config", None) or {})
        m = dict(r.metrics or {})
        st = getattr(trial, "status", None)
        tid = getattr(trial, "trial_id", None) or m.get("trial_id", "")
        if r.error is None and st != "ERROR" and "final_avg_acc" not in m and r.path:
            # resumed from a checkpoint newer than the driver's saved state (checkpoints.usable_checkpoint):
            # the trial had ended, its final result is recorded in its folder, not reported again
            m = recorded_final(join(study.experiment_path, os.path.basename(r.path.rstrip("/")))) or m
        if r.error is not None or st == "ERROR":
            err = error_text(trial) if trial is not None else (str(r.error).strip().splitlines() or ["?"])[-1]
            out.append(TrialOutcome(cfg, m, "failed", err, tid))
        elif "final_avg_acc" in m:  # only the last task's result has it (Ray's `done` is also set
            # on the last result of a trial the scheduler stopped early)
            out.append(TrialOutcome(cfg, m, "ok", trial_id=tid))
        elif st not in (None, "TERMINATED") or study.scheduler["type"] == "fifo" or \
                saved.get(tid, "TERMINATED") != "TERMINATED":
            out.append(TrialOutcome(cfg, m, "unfinished", trial_id=tid))  # FIFO never stops a trial early
        else:
            out.append(TrialOutcome(cfg, m, "stopped", trial_id=tid))
    out.sort(key=lambda o: o.config.get("index", 0))
    return out
