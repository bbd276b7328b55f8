"""A study's unsent MLflow entries: kept in its results folder, sent again by `--resume` (no ray).

When the tracking store cannot be reached at the end of a sweep, the driver's writer keeps what it
could not send in <storage>/<name>/mlflow-unsent/<time>-<pid>/ (unsent.jsonl + the artifacts it
names), beside the study's results and checkpoints, where a reboot or a tmp cleaner does not reach.
For remote storage (s3://...) the writer spills to ./mlflow-unsent/<name>/ and the folder is then
copied to the storage. `gradmix-tune tracking replay FILE` sends one file; `--resume` sends every
file the study's store has not had yet (tracking/replay.py: idempotent) before Ray starts.
"""
from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path

from ..tracking.replay import ReplayError, replay, replayed_to, summary, unsent_files
from .study import Study, is_uri, join

UNSENT_DIR = "mlflow-unsent"


def unsent_dir(study: Study) -> str:
    """<storage>/<name>/mlflow-unsent (a path or a URI): where the study keeps what MLflow did not take."""
    return join(join(study.storage_path, study.name), UNSENT_DIR)


def spill_dir(study: Study) -> str:
    """The local folder the driver's writer spills to: unsent_dir itself for local storage."""
    if not is_uri(study.storage_path):
        return unsent_dir(study)
    return os.path.abspath(os.path.join(UNSENT_DIR, study.name))


def waiting(study: Study) -> list[Path]:
    """The unsent.jsonl files of the study (local copies) not yet sent to its tracking store."""
    return [p for p in unsent_files(spill_dir(study)) if study.tracking_uri not in replayed_to(p)] \
        if os.path.isdir(spill_dir(study)) else []


def keep(study: Study) -> list[Path]:
    """After a run: the files still waiting; with remote storage also copied there."""
    files = waiting(study)
    if files and is_uri(study.storage_path):
        _copy(spill_dir(study), unsent_dir(study), up=True)
    return files


def replay_waiting(study: Study) -> None:
    """Before a resumed study starts: send the entries an earlier session could not. A store that
    still does not answer is a warning (the files stay; the new session's entries join them)."""
    if is_uri(study.storage_path):
        try:
            _copy(unsent_dir(study), spill_dir(study), up=False)
        except Exception as e:  # noqa: BLE001 - nothing kept there (or unreadable): nothing to send
            if not isinstance(e, FileNotFoundError):
                print(f"warning: could not read {unsent_dir(study)} ({type(e).__name__}: {e})", file=sys.stderr)
    for path in waiting(study):
        try:
            res = replay(path, study.tracking_uri)
        except ReplayError as e:
            print(f"warning: {e}", file=sys.stderr)
            continue
        print(summary(res, path), flush=True)
        if is_uri(study.storage_path):
            try:
                _copy(spill_dir(study), unsent_dir(study), up=True)  # the replayed.json markers
            except Exception:  # noqa: BLE001 - the local marker counts for this machine
                pass


def _copy(src: str, dst: str, up: bool) -> None:
    """Copy a spill folder tree between the local disk and remote storage (pyarrow)."""
    import pyarrow.fs as pafs

    from .storage import filesystem

    local = pafs.LocalFileSystem()
    remote, rpath = filesystem(dst if up else src)
    if up:
        remote.create_dir(rpath, recursive=True)
        pafs.copy_files(src, rpath, source_filesystem=local, destination_filesystem=remote)
    else:
        if remote.get_file_info(rpath).type == pafs.FileType.NotFound:
            return
        os.makedirs(dst, exist_ok=True)
        pafs.copy_files(rpath, dst, source_filesystem=remote, destination_filesystem=local)


def describe(files: list[Path], study: Study) -> str:
    """The final lines of a study whose tracking is incomplete."""
    where = unsent_dir(study)
    first = files[0]
    shown = posixpath.join(where, first.parent.name, first.name) if is_uri(study.storage_path) else str(first)
    more = f" (and {len(files) - 1} more in {where})" if len(files) > 1 else ""
    return (f"tracking incomplete: MLflow at {study.tracking_uri} did not take every entry; they are kept in "
            f"{shown}{more}.\n  Send them when it answers: gradmix-tune tracking replay {first}"
            f"\n  (or continue the study with --resume, which sends them first); then the report: "
            f"gradmix-tune report {study.name}" + (f" --tracking-uri {study.tracking_uri}"
                                                   if study.tracking_uri else ""))
