"""The study's storage folder (local path or URI): file I/O, the checks before Ray starts, what trials recorded there.

Results and checkpoints go to <storage>/<name>/ (one folder per trial, t<index>_<trial id>, each
with the result.json rows Ray wrote for it). The storage folder is checked before Ray starts (and
before ray is imported): writable with 1 MiB free, no old study in the way, and for --resume a
study to resume with the same trials and a whole saved state. Imports no ray (pyarrow, for URIs,
only when used).
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
from pathlib import Path

from ..config import ConfigError
from .study import Study, is_uri, join

STUDY_FILE = "gradmix_study.json"  # the Study's record (Study.record) beside Ray's state
_TRIAL_DIR = re.compile(r"^t\d{4}_")  # a trial's folder (trial.trial_dirname)


# ---------------------------------------------------------------------------- file I/O, path or URI
def filesystem(path_or_uri: str):
    """(pyarrow file system, path on it)."""
    import pyarrow.fs as pafs

    if is_uri(path_or_uri):
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), os.path.abspath(path_or_uri)


def exists(path_or_uri: str) -> bool:
    if not is_uri(path_or_uri):
        return Path(path_or_uri).exists()
    import pyarrow.fs as pafs

    fs, p = filesystem(path_or_uri)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_text(path_or_uri: str) -> str | None:
    """The file's text, or None when it is not there (or cannot be read)."""
    if not is_uri(path_or_uri):
        q = Path(path_or_uri)
        return q.read_text() if q.is_file() else None
    fs, p = filesystem(path_or_uri)
    try:
        with fs.open_input_stream(p) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def write_text(path_or_uri: str, text: str) -> None:
    if not is_uri(path_or_uri):
        Path(path_or_uri).parent.mkdir(parents=True, exist_ok=True)
        Path(path_or_uri).write_text(text)
        return
    fs, p = filesystem(path_or_uri)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def delete(path_or_uri: str) -> None:
    """Remove a folder and everything in it."""
    if not is_uri(path_or_uri):
        shutil.rmtree(path_or_uri, ignore_errors=True)
        return
    fs, p = filesystem(path_or_uri)
    fs.delete_dir(p)


def save_study_record(study: Study) -> None:
    write_text(join(study.experiment_path, STUDY_FILE), json.dumps(study.record(), indent=1))


# ---------------------------------------------------------------------------- what trials recorded
def result_rows(fs, trial_dir: str) -> list[dict]:
    """The result rows Ray recorded in a trial folder's result.json (pyarrow file system `fs`);
    a row cut short by a crash is skipped, a missing or unreadable file has none."""
    try:
        with fs.open_input_stream(posixpath.join(trial_dir, "result.json")) as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by a crash
        if isinstance(row, dict):
            rows.append(row)
    return rows


def recorded_final(trial_path: str) -> dict | None:
    """The last-task result (with final_avg_acc) recorded in a trial folder's result.json, if any."""
    try:
        rows = result_rows(*filesystem(trial_path))
    except Exception:  # noqa: BLE001 - unreadable: nothing recorded as far as we can tell
        return None
    return next((row for row in reversed(rows) if "final_avg_acc" in row), None)


# ---------------------------------------------------------------------------- checks before Ray
def check_storage(study: Study, resume: bool, overwrite: bool) -> None:
    """Before Ray starts: a new study must not land on an old one (--overwrite deletes it);
    --resume needs one, run with the same trials; the storage folder must be writable."""
    _check_writable(study)
    exp = study.experiment_path
    state_file = join(exp, STUDY_FILE)
    found = exists(exp)
    if resume:
        saved_text = read_text(state_file) if found else None
        if saved_text is None:
            raise ConfigError(exp, None, f"no study '{study.name}' to resume here",
                              "run it without --resume (or point --storage at where it ran)")
        saved = json.loads(saved_text)
        if not study.search and saved.get("trials") != json.loads(json.dumps(study.trials)):
            raise ConfigError(study.path, None,
                              f"the study's trials differ from the interrupted run's ({state_file})",
                              "resume with the ablation file (and --set / --data-root) it ran with, "
                              "or start over with --overwrite")
        _check_saved_state(study)
        return
    if found:
        if overwrite:
            delete(exp)
            return
        raise ConfigError(exp, None, f"study '{study.name}' already has results here",
                          "add --resume to continue it, --overwrite to start over, or --storage elsewhere")


def _check_writable(study: Study) -> None:
    """A local storage folder must be a folder we can create and write (1 MiB, so a full disk
    shows here too), checked before Ray starts. Remote storage (s3://...) is Ray's to check."""
    if is_uri(study.storage_path):
        return
    for folder in (Path(study.storage_path), Path(study.experiment_path)):
        probe = folder / f".gradmix-write-test-{os.getpid()}"
        try:
            if folder != Path(study.storage_path) and not folder.is_dir():
                continue  # a new study's folder: Ray creates it; its parent was checked
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            what, where = e.strerror or type(e).__name__, ""
            if isinstance(e, (NotADirectoryError, FileExistsError)):
                f = next((a for a in [folder, *folder.parents] if a.exists() and not a.is_dir()), None)
                what = f"{f} is a file, not a folder" if f is not None else what
            elif e.filename and str(e.filename) != str(probe):
                where = f" ({e.filename})"
            raise ConfigError("--storage", None, f"results and checkpoints cannot be written to {folder}: "
                                                 f"{what}{where}",
                              "pass --storage a writable folder with free space (shared storage for a "
                              "multi-node cluster)") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass


def _check_saved_state(study: Study) -> None:
    """Ray resumes from its newest experiment_state-*.json: it must be there and whole (Ray
    writes it in place, so a full disk or a crash mid-write can cut it short). Read as plain
    JSON: no ray import before the checks pass."""
    if is_uri(study.storage_path):
        return  # Ray reports it
    states = sorted(Path(study.experiment_path).glob("experiment_state-*.json"))
    if not states:
        raise ConfigError(study.experiment_path, None,
                          "the study was stopped before Ray saved its state: there is nothing to resume",
                          "start over with --overwrite")
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(str(states[-1]), None,
                          f"Ray's saved state of the study is cut short or corrupt ({type(e).__name__}: {e}); "
                          "it was probably being written when the disk filled up or the machine went down",
                          "free space and start over with --overwrite (finished trials' results stay in "
                          "MLflow and in their trial folders until then)") from None


def raise_if_storage_full(study: Study, error: BaseException) -> None:
    """Ray's own writes (trial errors, results, the study's state) fail in odd ways on a full
    disk (e.g. EOFError reading back an error file it could not write): say what happened."""
    if is_uri(study.storage_path):
        return
    try:
        free = shutil.disk_usage(study.storage_path).free
    except OSError:
        return
    if free < (1 << 20) or getattr(error, "errno", None) == 28:
        raise ConfigError("--storage", None,
                          f"the storage folder {study.storage_path} ran out of space during the study "
                          f"({free // 1024} KiB free; Ray stopped with {type(error).__name__}: "
                          f"{str(error).strip().splitlines()[-1][:200] if str(error).strip() else ''})",
                          "free some space, then continue with --resume: finished trials are kept and "
                          "unfinished ones continue from their last complete checkpoint") from error


# ---------------------------------------------------------------------------- tidying after a run
def remove_orphans(study: Study, trials: list) -> None:
    """A trial the driver created just before it was killed, and never recorded, is created
    again on resume under a new id. Its old folder holds no result: remove it. `trials`: the
    study's TrialOutcomes. Local folder or URI (s3://...)."""
    import pyarrow.fs as pafs

    ids = {t.trial_id for t in trials}
    if len(ids) != len(trials) or "" in ids:
        return  # not sure which folders are the study's: leave them
    configs = {json.dumps(t.config, sort_keys=True) for t in trials if t.status != "unfinished"}
    fs, exp = filesystem(study.experiment_path)
    try:
        folders = [i for i in fs.get_file_info(pafs.FileSelector(exp, allow_not_found=True))
                   if i.type == pafs.FileType.Directory and _TRIAL_DIR.match(i.base_name)]
    except OSError:
        return
    for d in folders:
        if d.base_name.split("_", 1)[1] in ids:
            continue
        try:
            files = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(d.path, recursive=False))}
        except OSError:
            continue
        empty = set(files) <= {"params.json", "params.pkl", "result.json"} and \
            ("result.json" not in files or files["result.json"].size == 0)
        try:  # it got as far as a result or a checkpoint: the same trial has ended under its new id
            with fs.open_input_stream(posixpath.join(d.path, "params.json")) as f:
                again = json.dumps(json.loads(f.read()), sort_keys=True) in configs
        except (OSError, ValueError):
            again = False
        if empty or again:
            try:
                fs.delete_dir(d.path)
            except OSError:
                pass
