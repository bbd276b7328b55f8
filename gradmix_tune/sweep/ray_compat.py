"""Every use of Ray's private APIs in gradmix-tune, each behind a small named function saying why no public API serves.

Ray is pinned (constraints.txt); tests/sweep/test_ray_compat.py fails loudly when an upgrade
changes any of these. Everything else in sweep/ uses Ray's public (or DeveloperAPI) surface.
"""
from __future__ import annotations

from typing import Any

# Trainable.restore receives (and hands on to Ray) a _TrainingResult: the checkpoint together
# with the metrics recorded with it. Ray exports no public type for it.
from ray.train._internal.session import _TrainingResult


# ---------------------------------------------------------------------------- restoring a trial
def training_result(checkpoint, metrics: dict) -> Any:
    """What Ray passes to Trainable.restore: a checkpoint and the result recorded with it. A
    restore that picks another checkpoint (sweep.checkpoints.usable_checkpoint) must hand Ray's
    restore the same type; there is no public constructor."""
    return _TrainingResult(checkpoint=checkpoint, metrics=metrics)


def is_training_result(obj: Any) -> bool:
    """Trainable.restore also takes a path or a Checkpoint (legacy); only Ray's own restore of a
    trial passes a _TrainingResult."""
    return isinstance(obj, _TrainingResult)


def raise_checkpoint_index(trainable, at_least: int) -> None:
    """The next checkpoint a restored trial writes goes to checkpoint_<index+1>. Ray takes the
    index from its saved state, which can lag the trial's folder (a driver killed between the
    two): raise it past the newest folder there, so no checkpoint is written over. The index
    lives on the trainable's private StorageContext (`_storage`); no public API sets it."""
    storage = getattr(trainable, "_storage", None)
    if storage is not None:
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, at_least)


# ---------------------------------------------------------------------------- resuming a study
def _local_tuner(tuner):
    """Tuner.restore builds the Tuner's internals from its pickle; only the private TunerInternal
    (`_local_tuner`, None with Ray Client) holds its run and tune configs."""
    return getattr(tuner, "_local_tuner", None)


def replace_callbacks(tuner, callbacks: list) -> bool:
    """A restored Tuner runs with the callbacks pickled when the study started; Tuner.restore
    takes no RunConfig. Give it fresh ones (the MLflow writer reopens its runs, the progress
    lines start over). False when this Tuner has no local internals (Ray Client)."""
    inner = _local_tuner(tuner)
    if inner is None:
        return False
    inner._run_config.callbacks = callbacks
    return True


def restored_search_alg(tuner):
    """The restored Tuner's search algorithm (its saved position already loaded), to adjust
    before fit(): Tuner.restore takes no TuneConfig and the Tuner does not expose it."""
    inner = _local_tuner(tuner)
    return inner._tune_config.search_alg if inner is not None else None


def set_generator_count(generator, trials_created: int) -> None:
    """SearchGenerator counts the trials it created in `_counter` (and stops at num_samples, or
    once `_finished`); its saved count can be ahead of Ray's saved trial list. Set it to the
    trials the state holds, so the missing ones are created again; no public setter."""
    generator._counter = trials_created
    generator._finished = False


# ---------------------------------------------------------------------------- saving a study's state
# The driver writes the study's state (experiment_state-*.json, the searcher's and the callbacks'
# state) to a staging folder and a background thread copies it into the study's folder, in place:
# a driver killed mid-copy leaves a file cut short, and --resume then fails to restore (a
# truncated callback-states pickle, an experiment_state Ray cannot parse). Ray's syncer takes no
# upload function; its private _FilesystemSyncer builds the copy command.

_UPLOADED: dict[str, tuple[int, int]] = {}  # destination file -> (size, mtime_ns) of the copy made


def _atomic_local_upload(local_path: str, fs_path: str) -> None:
    """Copy the staging folder's files to fs_path (a local folder), each through a hidden
    temporary file renamed over the old one, so a reader (or a resume after a crash) sees the
    old file or the new one, never a part. The study's state goes last: a crash between files
    leaves the searcher ahead of it, which a resume already reconciles (sweep.search). The folder
    holds every trial's result.json and params too: a file unchanged since its last copy (same
    size and modification time, still there) is not copied again, where Ray copies them all."""
    import os
    import shutil

    files = []
    for root, _dirs, names in os.walk(local_path):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local_path)
            files.append((name.startswith("experiment_state-"), rel))
    made = set()
    for _last, rel in sorted(files):
        src, dest = os.path.join(local_path, rel), os.path.join(fs_path, rel)
        st = os.stat(src)
        stamp = (st.st_size, st.st_mtime_ns)
        if _UPLOADED.get(dest) == stamp and os.path.exists(dest):
            continue
        folder = os.path.dirname(dest)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        tmp = os.path.join(folder, f".{os.path.basename(dest)}.partial")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        _UPLOADED[dest] = stamp


def atomic_state_uploads() -> None:
    """From now on in this process, Ray copies a study's state into a local study folder file by
    file atomically (_atomic_local_upload). Object stores (s3://, gs://) need nothing: an
    object appears whole or not at all. Idempotent."""
    import pyarrow.fs
    from ray.train._internal.storage import _FilesystemSyncer

    original = _FilesystemSyncer._sync_up_command
    if getattr(original, "atomic", False):
        return

    def _sync_up_command(self, local_path, uri, exclude=None):
        if not exclude and isinstance(self.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return _atomic_local_upload, {"local_path": local_path, "fs_path": uri}
        return original(self, local_path, uri, exclude)

    _sync_up_command.atomic = True
    _FilesystemSyncer._sync_up_command = _sync_up_command


# With CheckpointConfig(num_to_keep) set, Ray forces a save of the whole study state whenever a
# trial has checkpointed num_to_keep times since the last save: with num_to_keep=1, after every
# checkpoint. The state grows with the trials (~50 KB each), so a study of many short trials
# spent most of its driver time saving it (gradmix_replicate: 600 trials, a 38 MB state saved
# ~3000 times). Its timed saves Ray already keeps to ~5% of the time (a period of 19x the last
# save's duration, at least 10 s); forced ones get the same budget here. Nothing depends on every
# checkpoint being in the saved state: a resume continues from the newest checkpoint on storage
# whose result is recorded (checkpoints.usable_checkpoint), whatever the state names.
FORCED_SAVE_SHARE = 0.05  # the most of the driver's time forced state saves may take


def throttle_forced_state_saves() -> None:
    """From now on in this process, a trial's checkpoint forces a save of the study's state only
    if the last save is at least (1 - share) / share times its duration ago (share =
    FORCED_SAVE_SHARE): a small study, whose state saves in ~5 ms, saves within ~0.1 s of a
    checkpoint; a large one at most every few seconds. A save resets Ray's timer as
    well, so timed and forced saves together keep to that share. Idempotent."""
    import time

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    if getattr(Manager.on_trial_checkpoint, "throttled", False):
        return
    on_checkpoint, update = Manager.on_trial_checkpoint, Manager._update_auto_checkpoint_time

    def _update_auto_checkpoint_time(self, time_taken: float):
        self._gradmix_save_s = time_taken  # the last save's duration, serialising and copying
        update(self, time_taken)

    def on_trial_checkpoint(self, trial):
        gap = getattr(self, "_gradmix_save_s", 0.0) * (1 - FORCED_SAVE_SHARE) / FORCED_SAVE_SHARE
        if time.monotonic() - self._last_save_time >= gap:
            on_checkpoint(self, trial)

    on_trial_checkpoint.throttled = True
    Manager.on_trial_checkpoint = on_trial_checkpoint
    Manager._update_auto_checkpoint_time = _update_auto_checkpoint_time


# ---------------------------------------------------------------------------- after fit()
def result_trials(result_grid) -> list:
    """The live Trial objects behind a ResultGrid (status, id, error file), in its order. A
    Result has no trial status (RUNNING, TERMINATED, ERROR): only the grid's private
    ExperimentAnalysis keeps the Trials. [] when they cannot be had."""
    try:
        return list(result_grid._experiment_analysis.trials)
    except Exception:  # noqa: BLE001
        return []


# ---------------------------------------------------------------------------- joining a cluster
# Ray 2.60 turns token authentication on for a cluster that `ray start --head` launches on a
# machine with a token (~/.ray/auth_token: every local ray.init() writes one). A driver finds that
# out by itself only for address "auto"; with an explicit address it connects without its token,
# is refused, and Ray retries for ~20 s before a ConnectionError. Ray's public API has no way to
# ask whether a token is available, to turn token mode on for this process, or to try the GCS
# once with a deadline.

_HAS_TOKEN = r"""
from ray._raylet import AuthenticationTokenLoader
print(bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)))
"""


def token_available(timeout_s: float = 60.0) -> bool:
    """A token Ray would send: $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token (Ray's own loader, whatever the auth mode now is). Asked in a child
    process: the loader is a process-wide singleton, and once it holds a token this process's
    Ray servers demand it on every call, so a driver that then joins a cluster without token
    auth has its actors cancelled ("Missing authorization header")."""
    import subprocess
    import sys

    try:
        res = subprocess.run([sys.executable, "-c", _HAS_TOKEN], capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return res.stdout.strip().endswith("True")


def enable_token_auth_if_available() -> bool:
    """What ray.init(address="auto") does for a found cluster, for an explicit address too: with
    RAY_AUTH_MODE unset and a token available, set RAY_AUTH_MODE=token for this process (and the
    processes it starts). Returns whether token mode is on; an explicit RAY_AUTH_MODE is kept."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


_PROBE = r"""
import sys
from ray._raylet import InnerGcsClient
from ray.exceptions import AuthenticationError
try:
    InnerGcsClient.standalone(sys.argv[1], None, int(sys.argv[2]))
except AuthenticationError as e:
    print("auth", str(e).split(".")[0])
except Exception as e:
    print("error", (str(e).strip().splitlines() or [type(e).__name__])[0])
else:
    print("ok")
"""


def probe_gcs(address: str, timeout_s: float = 60.0, rpc_timeout_ms: int = 5000) -> tuple[str, str]:
    """Ask the GCS at host:port for its cluster id once, with this process's environment (auth
    mode, token), in a child process: ("ok", ""), ("auth", why) when it refuses the token (or
    its absence), ("error", why) otherwise (a port that does not answer as a GCS: after about
    3 x rpc_timeout_ms), ("timeout", "") when the child has not answered in timeout_s (which
    includes its import of Ray: seconds on a loaded machine). A child, because Ray's GCS client
    logs to the process's stderr, aborts the process when token mode is on without a token, and
    retries a silent port for a while."""
    import subprocess
    import sys

    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, address, str(int(rpc_timeout_ms))],
                             capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    words = (res.stdout.strip().splitlines() or [""])[-1].split(" ", 1)
    if words[0] in ("ok", "auth", "error"):
        return words[0], words[1] if len(words) > 1 else ""
    return "error", f"the check exited with code {res.returncode}"
