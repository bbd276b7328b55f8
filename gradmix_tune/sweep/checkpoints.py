"""A trial's checkpoint folders on storage: which one a restored trial may trust, and pruning them after a run.

A checkpoint that is missing, half-written or corrupt is never loaded (usable_checkpoint): the
trial continues from an older recorded one, or starts over, and says so. torch is imported only
to read a checkpoint (on the trial's worker).
"""
from __future__ import annotations

import os
import posixpath
import re

import pyarrow.fs as pafs
from ray.tune import Checkpoint

from . import ray_compat
from .storage import filesystem, result_rows
from .study import Study

CHECKPOINT_FILE = "learner.pt"  # the learner's state_dict, in every checkpoint folder
_CKPT_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_problem(checkpoint) -> str | None:
    """None when the checkpoint's learner state loads; else why it cannot be used."""
    import torch

    try:
        if checkpoint.filesystem.get_file_info(checkpoint.path).type == pafs.FileType.NotFound:
            return "it is missing"
        with checkpoint.as_directory() as d:
            f = os.path.join(d, CHECKPOINT_FILE)
            if not os.path.isfile(f):
                return f"it has no {CHECKPOINT_FILE} (half-written?)"
            state = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "next_task", "tasks"} <= set(state):
            return f"its {CHECKPOINT_FILE} is not a learner checkpoint"
    except Exception as e:  # noqa: BLE001 - truncated zip, unpickling error, I/O error, ...
        text = str(e).strip().splitlines()
        return f"it cannot be read, half-written or corrupt ({type(e).__name__}: {text[0][:200] if text else ''})"
    return None


def trial_checkpoints(fs, trial_dir: str) -> tuple[list[tuple[int, str]], dict[str, dict]]:
    """(index, path) of the checkpoint folders in a trial folder, newest first, and the result
    the driver recorded with each (result.json rows carry checkpoint_dir_name)."""
    found = []
    try:
        for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
            m = _CKPT_RE.match(info.base_name)
            if m and info.type == pafs.FileType.Directory:
                found.append((int(m.group(1)), info.path))
    except OSError:
        pass
    recorded = {row["checkpoint_dir_name"]: row for row in result_rows(fs, trial_dir)
                if row.get("checkpoint_dir_name")}
    return sorted(found, reverse=True), recorded


def newest_checkpoint_index(fs, trial_dir: str) -> int:
    """The index of the newest checkpoint folder in a trial folder (-1: none)."""
    found, _ = trial_checkpoints(fs, trial_dir)
    return found[0][0] if found else -1


def usable_checkpoint(checkpoint_result):
    """What a restored trial should continue from: (training result or None, note or None).

    Ray restores a trial from the checkpoint its saved experiment state names. That one can be
    gone: Ray deletes the oldest checkpoint beyond CheckpointConfig(num_to_keep) as soon as it
    registers a new one, but saves its state a moment later, so a driver killed in between leaves
    a state naming a deleted checkpoint (Ray then fails the trial: "Could not recover from
    checkpoint as it does not exist on storage anymore"). It can also be half-written (a crash or
    a full disk while it was copied) or corrupt. Such a checkpoint is never used: the trial
    continues from the newest other checkpoint in its folder that loads and whose result is in
    the trial's result.json on storage (saved together with the state, so results continue
    without a gap), else it starts over from task 0 (its metrics are not logged twice to
    MLflow). The note says which. A newer checkpoint whose result is not in result.json is not
    used: that task's rows would be missing from the trial's results. A trial whose final result
    is recorded has ended, whatever its checkpoints: it continues from its final one, which
    runs nothing (trial.train_trial does not load it)."""
    ckpt = checkpoint_result.checkpoint
    name = posixpath.basename(ckpt.path.rstrip("/"))
    found, recorded = trial_checkpoints(ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/")))
    # the trial had ended (its final result is recorded) though the saved state names an earlier
    # checkpoint: continue from the final one, so nothing is run, or reported, a second time
    final = next((p for _, p in found if "final_avg_acc" in recorded.get(posixpath.basename(p), {})), None)
    if final is not None:
        cand, base = Checkpoint(final, filesystem=ckpt.filesystem), posixpath.basename(final)
        problem = checkpoint_problem(cand)
        if problem is not None:  # its recorded result stands: running it again would end it twice
            return (ray_compat.training_result(cand, recorded[base]),
                    f"the trial had ended: its final result is recorded with {base}, whose checkpoint is "
                    f"unusable ({problem}); the recorded result stands, nothing to run again")
        if base != name:
            return (ray_compat.training_result(cand, recorded[base]),
                    f"the trial had ended: its final result is recorded with {base} "
                    f"(the saved state named {name}); nothing to run again")
    problem = checkpoint_problem(ckpt)
    if problem is None:
        return checkpoint_result, None
    for _, path in found:
        other = posixpath.basename(path)
        if other == name or other not in recorded:
            continue
        cand = Checkpoint(path, filesystem=ckpt.filesystem)
        if checkpoint_problem(cand) is None:
            row = recorded[other]
            return (ray_compat.training_result(cand, row),
                    f"checkpoint {name} is unusable ({problem}); continued from {other} "
                    f"(after task {row.get('tasks_done', '?')})")
    return None, f"checkpoint {name} is unusable ({problem}) and no other usable one is recorded; " \
                 "started over from task 0"


def prune_checkpoints(study: Study, result_grid) -> None:
    """After a study's run (Ray's state saved and consistent): each trial keeps the newest
    checkpoint whose result is recorded (the final one, for a finished trial) and the one the
    saved state names (the same, unless a killed driver's state lagged). The others are ones a
    killed driver never recorded or Ray no longer tracks (restores never write over an existing
    checkpoint folder, see trial.Trainable.restore). Local folder or URI (s3://...)."""
    fs, exp = filesystem(study.experiment_path)
    for r in result_grid:
        if not r.path:
            continue
        d = posixpath.join(exp, posixpath.basename(r.path.rstrip("/")))
        found, recorded = trial_checkpoints(fs, d)
        keep = {posixpath.basename(p) for _, p in found if posixpath.basename(p) in recorded}
        keep = set(sorted(keep)[-1:])  # the newest whose result is recorded (the final one, if ended)
        if r.checkpoint is not None:  # and the one the saved state names
            keep.add(posixpath.basename(r.checkpoint.path.rstrip("/")))
        if not keep & {posixpath.basename(p) for _, p in found}:
            continue  # nothing we are sure of: leave them all
        for _, p in found:
            if posixpath.basename(p) not in keep:
                try:
                    fs.delete_dir(p)
                except OSError:
                    pass
