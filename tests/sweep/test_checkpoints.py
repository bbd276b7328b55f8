"""sweep/checkpoints.py on real checkpoints of a real learner (no Ray cluster needed): which
checkpoint a restored trial continues from when the one Ray names is missing, torn or stale."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs
import pytest
import torch
from ray.tune import Checkpoint

from gradmix_tune.config import from_dict
from gradmix_tune.learner import Hooks, run
from gradmix_tune.sweep import ray_compat
from gradmix_tune.sweep.checkpoints import CHECKPOINT_FILE, newest_checkpoint_index, usable_checkpoint

pytestmark = pytest.mark.integration


def test_checkpoint_choice_on_restore(tmp_path):
    """usable_checkpoint on real checkpoints of a real learner (no Ray cluster needed): which
    checkpoint a restored trial continues from when the one Ray names is missing or torn."""
    cfg = from_dict({"data": {"name": "digits", "tasks": 3}, "model": {"name": "mlp", "hidden": [16]},
                     "train": {"epochs": 1, "batch_size": 20}, "memory": {"size": 40}})
    trial = tmp_path / "t0000_abc"
    trial.mkdir()
    lines = []

    def on_task(rec, learner):
        name = f"checkpoint_{rec.task:06d}"
        (trial / name).mkdir()
        torch.save(learner.state_dict(), trial / name / CHECKPOINT_FILE)
        lines.append(json.dumps({"kind": "task", "tasks_done": rec.task + 1, "checkpoint_dir_name": name,
                                 "training_iteration": rec.task + 1}))

    run(cfg, Hooks(on_task=on_task))
    (trial / "result.json").write_text("\n".join(lines[:2]) + "\n{\"kind\": \"ta")  # task 3 unrecorded, a torn row

    def choose(name):
        res = ray_compat.training_result(Checkpoint(str(trial / name)), {})
        chosen, note = usable_checkpoint(res)
        return (Path(chosen.checkpoint.path).name if chosen else None), note, chosen

    assert choose("checkpoint_000001")[:2] == ("checkpoint_000001", None)  # fine: Ray's choice stands
    shutil.rmtree(trial / "checkpoint_000000")
    name, note, chosen = choose("checkpoint_000000")  # the num_to_keep race: a newer one was recorded
    assert name == "checkpoint_000001" and chosen.metrics["tasks_done"] == 2
    assert note == "checkpoint checkpoint_000000 is unusable (it is missing); continued from " \
                   "checkpoint_000001 (after task 2)"
    # checkpoint_000002 exists and loads, but the driver never recorded its result: not used
    # (its task's metrics would be missing from the results and MLflow)
    f = trial / "checkpoint_000001" / CHECKPOINT_FILE
    f.write_bytes(f.read_bytes()[:1000])  # torn
    name, note, _ = choose("checkpoint_000001")
    assert name is None and note.startswith("checkpoint checkpoint_000001 is unusable (it cannot be read")
    assert note.endswith("no other usable one is recorded; started over from task 0")
    (trial / "checkpoint_000001" / CHECKPOINT_FILE).unlink()  # a folder whose copy never started
    assert "has no learner.pt (half-written?)" in choose("checkpoint_000001")[1]
    torch.save({"model": {}}, f)  # loads, but is not a learner checkpoint
    assert "not a learner checkpoint" in choose("checkpoint_000001")[1]
    assert newest_checkpoint_index(pyarrow.fs.LocalFileSystem(), str(trial)) == 2
    # the trial had ended (its final result recorded) but the state names an earlier checkpoint:
    # continue from the final one (nothing is run or reported twice), even though the named one is fine
    final = {"kind": "task", "tasks_done": 3, "checkpoint_dir_name": "checkpoint_000002", "final_avg_acc": 0.5}
    (trial / "result.json").write_text("\n".join(lines[:2] + [json.dumps(final)]) + "\n")
    shutil.copytree(trial / "checkpoint_000002", trial / "checkpoint_000000")
    name, note, chosen = choose("checkpoint_000000")
    assert name == "checkpoint_000002" and chosen.metrics["final_avg_acc"] == 0.5
    assert note.startswith("the trial had ended: its final result is recorded with checkpoint_000002")
    # ... and its final checkpoint torn (a crash, a full disk): it still ended, with its recorded
    # result; running it again would end it twice (a second final row). Named or not, it stands.
    f2 = trial / "checkpoint_000002" / CHECKPOINT_FILE
    f2.write_bytes(f2.read_bytes()[:1000])
    for named in ("checkpoint_000000", "checkpoint_000002"):
        name, note, chosen = choose(named)
        assert name == "checkpoint_000002" and chosen.metrics["final_avg_acc"] == 0.5, (named, note)
        assert note.startswith("the trial had ended: its final result is recorded with checkpoint_000002, "
                               "whose checkpoint is unusable (it cannot be read"), note
        assert note.endswith("the recorded result stands, nothing to run again")
