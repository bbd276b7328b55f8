"""The trainable: train_trial (one config, one seed) and the Trainable Ray runs, whose restore trusts no bad checkpoint.

The trainable reports `results.task_result` with a checkpoint after every task, carrying the
task's `results.epoch_result`s (results.with_epochs: one blocking report a task, not one an epoch);
EpochTrainable, for a scheduler that acts per epoch (ASHA over global_epoch), reports every epoch
result as it comes. On restore (a retried trial, `--resume`) it continues at the last
finished task. torch and the learner are imported inside train_trial: the driver, which only
pickles the Trainable, never loads them.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import posixpath
import sys
import tempfile

from ray import tune
from ray.tune.trainable.function_trainable import wrap_function

from .. import results
from ..config import ConfigError, from_dict, tasks_trained, val_fraction
from . import ray_compat
from .checkpoints import CHECKPOINT_FILE, newest_checkpoint_index, usable_checkpoint

# Trial id -> what Trainable.restore did about an unusable checkpoint (set in the trial's actor
# by Trainable.restore, read by train_trial in the same process).
_RESTORE_NOTES: dict[str, str] = {}
_ENDED: set[str] = set()  # trials restored to their recorded final result: nothing to run


def train_trial(config: dict, per_epoch: bool = False) -> None:
    """Ray Tune function trainable: one ExperimentConfig (config["config"]), one seed.

    Reports results.task_result with a checkpoint (the learner's state_dict) after every task,
    with the task's results.epoch_result list in it (`per_epoch`: each epoch result reported when
    it comes, for a scheduler acting per epoch); resumes at the last finished task."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from ..learner import Hooks, run

    if config.get("invalid"):
        raise ConfigError("search", None, config["invalid"])  # a sampled value the config rejects
    cfg = from_dict(copy.deepcopy(config["config"]), f"trial arm '{config['arm']}' seed {config['seed']}")
    cpus, gpus = _trial_resources()
    torch.set_num_threads(max(1, int(cpus)))
    cfg.train.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"

    state = None
    last_avg = [float("nan")]
    # with a validation split every result carries val_avg_acc too (ASHA may stop on it)
    last_val = [float("nan")] if val_fraction(cfg) > 0 else None
    # what Trainable.restore had to do about a missing or unreadable checkpoint (see
    # checkpoints.usable_checkpoint): said in the first result, which the driver's progress lines print
    trial_id = tune.get_context().get_trial_id()
    note = [_RESTORE_NOTES.pop(trial_id, None)]
    if trial_id in _ENDED:  # its final result is recorded (and is Ray's last result): not loaded, not run
        _ENDED.discard(trial_id)
        return
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        try:
            with ckpt.as_directory() as d:
                # weights_only=True works: the state is tensors, numbers, strings, lists, dicts, tuples
                state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - checked in restore; changed on storage since
            raise RuntimeError(f"checkpoint {ckpt.path} cannot be read ({type(e).__name__}: {e})") from e
        if state["next_task"] >= tasks_trained(cfg):
            return  # finished before the driver recorded it: its last result is the checkpoint's
        if state["tasks"]:
            last_avg[0] = state["tasks"][-1]["avg_acc"]
            held = state["tasks"][-1].get("val_accuracies") or []
            if last_val is not None and held:
                last_val[0] = sum(held) / len(held)

    def on_epoch(rec):
        avg = last_avg[0]
        if not math.isfinite(avg):  # during the first task: the accuracy on its classes so far
            avg = rec.seen_acc if math.isfinite(rec.seen_acc) else 0.0
        val = None
        if last_val is not None:
            val = last_val[0]
            if not math.isfinite(val):  # the first task: held-out accuracy on its classes so far
                v = rec.diagnostics.get("val_seen_acc")
                val = v if isinstance(v, float) and math.isfinite(v) else 0.0
        r = results.epoch_result(rec, avg, val)
        if note[0]:
            r["restore_note"], note[0] = note[0], None
        if per_epoch:
            tune.report(r)
        else:
            epochs.append(r)  # sent with the task's result

    epochs: list[dict] = []

    def on_task(rec, learner):
        last_avg[0] = rec.avg_acc
        metrics = results.with_epochs(results.task_result(rec, learner), epochs)
        epochs.clear()
        if last_val is not None and "val_avg_acc" in metrics:
            last_val[0] = metrics["val_avg_acc"]
        with tempfile.TemporaryDirectory(prefix="gradmix-ckpt-") as d:
            torch.save(learner.state_dict(), os.path.join(d, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        run(cfg, Hooks(on_epoch=on_epoch, on_task=on_task), resume=state, bench=_cached_benchmark(cfg))
    except BaseException:
        if epochs:  # the epochs of the task cut short (a DivergedError): logged as they were per epoch
            tune.report(results.with_epochs(None, list(epochs)))
        raise


def train_trial_per_epoch(config: dict) -> None:
    """train_trial reporting every epoch result as it comes (ASHA over global_epoch)."""
    train_trial(config, per_epoch=True)


def _trial_resources() -> tuple[float, float]:
    try:
        req = tune.get_context().get_trial_resources().required_resources
        return float(req.get("CPU", 1)), float(req.get("GPU", 0))
    except Exception:  # noqa: BLE001 - outside a Tune session
        return 1.0, 0.0


_BENCH_CACHE: dict = {}


def _cached_benchmark(cfg):
    """The last dataset this worker loaded, reused while the data section is the same: with
    reuse_actors, a study's trials on MNIST load it once per worker, not once per trial.
    (The learner never changes the tensors in place.)"""
    from ..data import load_benchmark
    from ..learner import pick_device

    device = pick_device(cfg.train.device)
    key = json.dumps([dataclasses.asdict(cfg.data), str(device)], sort_keys=True)
    if key not in _BENCH_CACHE:
        _BENCH_CACHE.clear()  # one dataset at a time: bounded memory
        _BENCH_CACHE[key] = load_benchmark(cfg, device)
    return _BENCH_CACHE[key]


def trial_dirname(trial) -> str:
    """A trial's folder in the study's storage: t<index>_<trial id> (TuneConfig.trial_dirname_creator)."""
    return f"t{int(trial.config.get('index', 0)):04d}_{trial.trial_id}"


class _SafeRestore:
    """A restore that never trusts a missing or unreadable checkpoint
    (checkpoints.usable_checkpoint) and never writes over an existing checkpoint folder."""

    def restore(self, checkpoint_path):
        if not ray_compat.is_training_result(checkpoint_path):
            return super().restore(checkpoint_path)
        ckpt = checkpoint_path.checkpoint
        # the saved state can lag the folder: the next checkpoint goes after the newest there
        # (Ray raises the index, then writes checkpoint_<index>)
        newest = newest_checkpoint_index(ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/")))
        ray_compat.raise_checkpoint_index(self, newest)
        chosen, note = usable_checkpoint(checkpoint_path)
        if note:
            _RESTORE_NOTES[self.trial_id] = note
            print(f"gradmix-tune: trial {self.trial_id}: {note}", file=sys.stderr, flush=True)
        if chosen is None:  # Ray's restore skipped: train_trial gets no checkpoint and starts at task 0
            return None
        if "final_avg_acc" in (chosen.metrics or {}):
            _ENDED.add(self.trial_id)
        return super().restore(chosen)


class Trainable(_SafeRestore, wrap_function(train_trial)):
    """train_trial as Ray runs it (one report a task), with _SafeRestore's restore."""


class EpochTrainable(_SafeRestore, wrap_function(train_trial_per_epoch)):
    """train_trial reporting per epoch (a scheduler over global_epoch), with _SafeRestore's restore."""


def trainable_for(study) -> type:
    """EpochTrainable when the study's scheduler acts per epoch (time_attr global_epoch), else Trainable."""
    sched = getattr(study, "scheduler", None) or {}
    return EpochTrainable if sched.get("time_attr") == "global_epoch" else Trainable
