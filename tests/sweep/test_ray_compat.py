"""sweep/ray_compat.py: Ray's private APIs that gradmix-tune relies on still behave as it expects.

Each test names the private piece it guards; a Ray upgrade that changes one fails here, loudly and
by name, rather than as a resume that quietly re-runs trials or writes over a checkpoint. The
last test drives a real (tiny) Tuner through a crash, a restore and a Tuner.restore.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.trainable.function_trainable import wrap_function

from gradmix_tune.sweep import ray_compat
from gradmix_tune.sweep.search import GridSearcher, StudySearchGenerator, set_known_trials


def test_training_result_is_a_checkpoint_with_its_metrics(tmp_path):
    """ray.train._internal.session._TrainingResult(checkpoint=, metrics=): what Trainable.restore gets."""
    ckpt = tune.Checkpoint.from_directory(str(tmp_path))
    r = ray_compat.training_result(ckpt, {"tasks_done": 2})
    assert r.checkpoint is ckpt and r.metrics == {"tasks_done": 2}
    assert ray_compat.is_training_result(r)
    assert not ray_compat.is_training_result(ckpt) and not ray_compat.is_training_result(str(tmp_path))


def test_trainable_restore_still_takes_a_checkpoint_path_argument():
    """trial.Trainable overrides Trainable.restore(checkpoint_path) and calls it with a _TrainingResult."""
    import inspect

    # Ray's tracing hook adds _ray_trace_ctx to methods of classes it has made actors of
    params = [p for p in inspect.signature(tune.Trainable.restore).parameters if not p.startswith("_ray_")]
    assert params == ["self", "checkpoint_path"], params


def test_search_generator_counts_created_trials_in_counter_and_finished():
    """SearchGenerator._counter / ._finished: what set_generator_count sets is what get_state and
    is_finished read (a resume re-creates the trials Ray's saved state lacks)."""
    g = SearchGenerator(ConcurrencyLimiter(GridSearcher([{"index": 0}, {"index": 1}]), max_concurrent=1))
    g.set_state({"counter": 2, "total_samples": 2, "finished": True, "experiment": None})
    assert g.is_finished()
    ray_compat.set_generator_count(g, 1)
    assert g.get_state()["counter"] == 1 and not g.get_state()["finished"] and not g.is_finished()

    study_gen = StudySearchGenerator(ConcurrencyLimiter(GridSearcher([{"index": 0}, {"index": 1}]), max_concurrent=1))
    set_known_trials(study_gen, {0})
    study_gen.set_state({"counter": 2, "total_samples": 2, "finished": True, "experiment": None})
    assert study_gen.get_state()["counter"] == 1 and not study_gen.is_finished()


def test_tuner_internals_hold_callbacks_and_search_alg(tmp_path):
    """Tuner._local_tuner._run_config.callbacks and ._tune_config.search_alg (no Ray needed to build one)."""
    alg = StudySearchGenerator(ConcurrencyLimiter(GridSearcher([{"index": 0}]), max_concurrent=1))
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(search_alg=alg, num_samples=1),
                       run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), callbacks=[]))
    assert ray_compat.restored_search_alg(tuner) is alg
    assert ray_compat.replace_callbacks(tuner, [tune.Callback()])


class _Ended(tune.Callback):
    """Writes the number of trials at the end of a fit to a file (the driver runs callbacks)."""

    def __init__(self, path: str):
        self.path = path

    def on_experiment_end(self, trials, **info):
        Path(self.path).write_text(json.dumps(sorted(t.status for t in trials)))


@pytest.mark.integration
def test_a_tiny_tuner_crash_restore_and_resume_use_them_as_expected(tmp_path, ray_address, monkeypatch):
    """Two trials count to 3 with a checkpoint per step and crash once after 2 (max_failures=1):
    Ray's retry calls Trainable.restore with a _TrainingResult; raising the storage's
    current_checkpoint_index moves the next checkpoint folder past it; skipping Ray's restore starts
    the function over without a checkpoint. result_trials reads the grid's Trials. Tuner.restore then
    takes fresh callbacks (replace_callbacks) and a search algorithm whose known trials make the
    generator's count (set_generator_count) re-create the one trial left out."""

    def counting(config):
        ckpt = tune.get_checkpoint()
        n = 0
        if ckpt is not None:
            with ckpt.as_directory() as d:
                n = int((Path(d) / "n").read_text())
        while n < 3:
            n += 1
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "n").write_text(str(n))
                tune.report({"n": n, "index": config["index"]}, checkpoint=tune.Checkpoint.from_directory(d))
            if n == 2 and not os.path.exists(config["marker"]):
                Path(config["marker"]).write_text("")
                raise RuntimeError("crash once")

    class Probe(wrap_function(counting)):  # defined here: pickled by value to the workers
        def restore(self, checkpoint_path):
            with open(self.config["log"], "a") as f:
                f.write(json.dumps({"index": self.config["index"],
                                    "training_result": ray_compat.is_training_result(checkpoint_path)}) + "\n")
            ray_compat.raise_checkpoint_index(self, 9)
            if self.config["drop"]:
                return None  # skip Ray's restore: the function gets no checkpoint
            return super().restore(checkpoint_path)

    trials = [{"index": i, "drop": i == 1, "marker": str(tmp_path / f"crashed{i}"), "log": str(tmp_path / "log")}
              for i in range(2)]
    alg = StudySearchGenerator(ConcurrencyLimiter(GridSearcher(trials), max_concurrent=2))
    tuner = tune.Tuner(
        Probe, tune_config=tune.TuneConfig(search_alg=alg, num_samples=2),
        run_config=tune.RunConfig(name="tiny", storage_path=str(tmp_path / "rr"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    assert not grid.errors
    restores = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert sorted(r["index"] for r in restores) == [0, 1] and all(r["training_result"] for r in restores)

    live = ray_compat.result_trials(grid)
    assert len(live) == 2 and {t.status for t in live} == {"TERMINATED"}
    by_index = {}
    for r, t in zip(grid, live):
        assert r.config["index"] == t.config["index"]
        by_index[r.config["index"]] = (r, Path(r.path))
    for i, (r, folder) in by_index.items():
        ns = [json.loads(line)["n"] for line in (folder / "result.json").read_text().splitlines()]
        ckpts = sorted(p.name for p in folder.glob("checkpoint_*"))
        if i == 0:  # restored from n=2; its next checkpoint after the raised index
            assert ns == [1, 2, 3], ns
            assert ckpts == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000010"], ckpts
        else:  # restore skipped: started over, checkpoints still after the raised index
            assert ns == [1, 2, 1, 2, 3], ns
            assert ckpts[-3:] == ["checkpoint_000010", "checkpoint_000011", "checkpoint_000012"], ckpts

    # --resume as tuner.py does it: fresh callbacks; the saved state "knows" only trial 0, so the
    # generator's count drops to 1 and the grid searcher hands out trial 1 again
    restored = tune.Tuner.restore(str(tmp_path / "rr" / "tiny"), Probe, resume_unfinished=True, resume_errored=True)
    ended = tmp_path / "ended.json"
    assert ray_compat.replace_callbacks(restored, [_Ended(str(ended))])
    search_alg = ray_compat.restored_search_alg(restored)
    assert isinstance(search_alg, StudySearchGenerator)
    set_known_trials(search_alg, {0})
    grid2 = restored.fit()
    assert json.loads(ended.read_text()) == ["TERMINATED"] * 3  # the fresh callback ran
    assert sorted(r.config["index"] for r in grid2) == [0, 1, 1]
    assert len(ray_compat.result_trials(grid2)) == 3


_UPLOADER = r"""
import os
import sys
import pyarrow.fs
from ray.train._internal.storage import _FilesystemSyncer
from gradmix_tune.sweep import ray_compat

ray_compat.atomic_state_uploads()
syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=0, sync_timeout=60)
fn, kwargs = syncer._sync_up_command(local_path=sys.argv[1], uri=sys.argv[2])
print(fn.__name__, flush=True)
names = [os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])]
while True:
    for p in names:  # changed each time, as Ray's state is: every round copies every file
        os.utime(p)
    fn(**kwargs)
"""


def test_a_driver_killed_while_saving_leaves_whole_state_files(tmp_path):
    """_FilesystemSyncer._sync_up_command builds the copy of the driver's staging folder into the
    study's folder. Ray copies in place: a driver SIGKILLed mid-copy left an experiment_state
    (or callback-states) file cut short, and --resume failed. With atomic_state_uploads each
    file is the old one or the new one at every moment the copier can be killed."""
    import random
    import signal
    import subprocess
    import sys
    import time

    staging, study = tmp_path / "staging", tmp_path / "study"
    staging.mkdir()
    state = {"trial_data": ["x" * 1000] * 20_000}  # ~20 MB: Ray's state of a 200-trial study is ~12 MB
    (staging / "experiment_state-s.json").write_text(json.dumps(state))
    (staging / "callback-states-s.pkl").write_bytes(os.urandom(8 << 20))
    sizes = {p.name: p.stat().st_size for p in staging.iterdir()}
    for kill in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(staging), str(study)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "_atomic_local_upload"
        time.sleep(random.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for name, size in sizes.items():
            if (study / name).exists():
                assert (study / name).stat().st_size == size, f"kill {kill}: {name} cut short"
        if (study / "experiment_state-s.json").exists():
            assert json.loads((study / "experiment_state-s.json").read_text()) == state
    assert set(sizes) <= {p.name for p in study.iterdir()}, "never got a whole copy down"
    assert not [p for p in study.iterdir() if p.name.startswith("experiment_state") and p.name not in sizes]


def test_state_uploads_copy_what_changed_and_what_is_missing(tmp_path):
    """The staging folder also holds every trial's result.json and params: a file unchanged since
    its last copy is not copied again; a changed or missing one is."""
    import pyarrow.fs
    from ray.train._internal.storage import _FilesystemSyncer

    ray_compat.atomic_state_uploads()
    staging, study = tmp_path / "staging", tmp_path / "study"
    (staging / "t0000_a").mkdir(parents=True)
    (staging / "t0000_a" / "result.json").write_text('{"a": 1}\n')
    (staging / "experiment_state-s.json").write_text("{}")
    fn, kwargs = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=0,
                                   sync_timeout=60)._sync_up_command(local_path=str(staging), uri=str(study))
    fn(**kwargs)
    assert (study / "t0000_a" / "result.json").read_text() == '{"a": 1}\n'
    (study / "t0000_a" / "result.json").write_text("changed in the study folder")  # not by the upload
    fn(**kwargs)
    assert (study / "t0000_a" / "result.json").read_text() == "changed in the study folder"  # unchanged: not copied
    with open(staging / "t0000_a" / "result.json", "a") as f:  # Ray appends a result
        f.write('{"a": 2}\n')
    (study / "experiment_state-s.json").unlink()
    fn(**kwargs)
    assert (study / "t0000_a" / "result.json").read_text() == '{"a": 1}\n{"a": 2}\n'
    assert (study / "experiment_state-s.json").read_text() == "{}"
    assert not [p for p in study.rglob("*.partial")]



def test_forced_state_saves_keep_to_their_share_of_the_driver_time(tmp_path, ray_address):
    """_ExperimentCheckpointManager.on_trial_checkpoint forces a save of the whole study state
    after every trial checkpoint (num_to_keep=1), and a study of many trials spent most of its
    driver time on it. Throttled, a checkpoint forces a save only once the last one is at least
    19 times its own duration ago: at once after a fast save, not soon after a slow one."""
    import time

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    ray_compat.throttle_forced_state_saves()
    ray_compat.throttle_forced_state_saves()  # idempotent
    storage = StorageContext(storage_path=str(tmp_path / "results"), experiment_dir_name="exp")
    manager = _ExperimentCheckpointManager(storage=storage, checkpoint_period="auto",
                                           sync_every_n_trial_checkpoints=1)
    saves: list[float] = []

    def save_taking(seconds: float):
        def save():
            time.sleep(seconds)
            staging = Path(storage.experiment_driver_staging_path)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / "experiment_state-x.json").write_text(json.dumps({"saves": len(saves)}))
            saves.append(seconds)
        return save

    t0 = time.monotonic()
    manager.sync_up_experiment_state(save_taking(0.01), force=True, wait=True)
    took = time.monotonic() - t0  # at least what the manager timed (serialising, waiting for the copy)
    time.sleep(max(0.0, 19 * took - (time.monotonic() - t0)) + 0.05)  # a fast save: ~0.2 s later a
    manager.on_trial_checkpoint("trial_a")  # checkpoint forces the next one
    manager.sync_up_experiment_state(save_taking(0.3), wait=True)
    assert saves == [0.01, 0.3]
    for _ in range(3):  # 0.3 s a save: no forced save for the next 5.7 s
        manager.on_trial_checkpoint("trial_a")
        manager.on_trial_checkpoint("trial_b")
        manager.sync_up_experiment_state(save_taking(0.3), wait=True)
    assert saves == [0.01, 0.3]
    manager._last_save_time -= 6.0  # ... later: a checkpoint forces the save again
    manager.on_trial_checkpoint("trial_b")
    manager.sync_up_experiment_state(save_taking(0.01), wait=True)
    assert saves == [0.01, 0.3, 0.01]
    assert json.loads((Path(storage.experiment_fs_path) / "experiment_state-x.json").read_text()) == {"saves": 2}
