"""Send a spilled unsent.jsonl (what a Writer could not send) to an MLflow store, idempotently.

A file holds the writer's queue as it was at the end of a sweep or run: one JSON object a line
({uri, experiment, op, key, run_id, payload}), artifact payloads naming copies under files/ beside
it. Replaying it resolves every run again: one the file names by id is used as it is (what it has
already logged is skipped, by the gradmix.steps tag), one it never created is found by its tags
(a trial by its trial_id, a parent by its session) or created. So replaying a file twice, or after
a resumed study sent part of it, writes nothing twice. After a complete replay the folder gets
`replayed.json` (the stores it reached), which `--resume` reads to skip it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .store import resolve_tracking_uri
from .writer import UNSENT, Writer

REPLAYED = "replayed.json"


class ReplayError(Exception):
    """The file cannot be read, or the store did not take everything (nothing is lost: run again)."""


def unsent_files(folder: str | Path) -> list[Path]:
    """The unsent.jsonl files in the spill folders under `folder` (oldest first)."""
    root = Path(folder)
    if root.is_file():
        return [root]
    return sorted(root.glob(f"*/{UNSENT}")) + ([root / UNSENT] if (root / UNSENT).is_file() else [])


def replayed_to(path: str | Path) -> list[str]:
    """The stores a spilled file was completely sent to."""
    try:
        return list(json.loads((Path(path).parent / REPLAYED).read_text()).get("uris", []))
    except (OSError, ValueError):
        return []


def read(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / UNSENT
    try:
        lines = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ReplayError(f"{p}: no such file") from None
    except (OSError, ValueError) as e:
        raise ReplayError(f"{p}: not an unsent.jsonl file ({type(e).__name__}: {e})") from None
    if not lines or not all(isinstance(x, dict) and {"op", "key", "payload"} <= set(x) for x in lines):
        raise ReplayError(f"{p}: not an unsent.jsonl file (expected one {{op, key, payload, ...}} a line)")
    return lines


def replay(path: str | Path, tracking_uri: str | None = None, wait_s: float = 30.0) -> dict:
    """Send the entries of `path` (an unsent.jsonl, or its folder) to `tracking_uri` (default: the
    store they were meant for). Returns what was sent: {uri, experiment, entries, runs_created,
    runs_found, metrics, metrics_there (skipped: already logged), artifacts, datasets, ends, tags,
    missing_runs}. Raises ReplayError when the store does not take all of it within `wait_s`."""
    p = Path(path)
    p = p / UNSENT if p.is_dir() else p
    lines = read(p)
    uri = tracking_uri or lines[0].get("uri") or resolve_tracking_uri(None)
    experiment = lines[0].get("experiment") or "gradmix-runs"
    w = Writer(uri, experiment)
    w.replaying = True
    missing = []
    try:
        for key, run_id in {x["key"]: x["run_id"] for x in lines if x.get("run_id")}.items():
            try:
                if not w.attach(key, run_id):
                    missing.append(key)
            except Exception as e:  # noqa: BLE001 - the store is not answering
                raise ReplayError(f"MLflow at {uri} did not answer ({type(e).__name__}: {e}); nothing was "
                                  f"sent: run the command again when it answers") from None
        for x in lines:
            payload = dict(x["payload"])
            if x["op"] == "artifact":
                payload["file"] = str(p.parent / payload["file"])
            w.put(x["op"], x["key"], payload)
        deadline = time.monotonic() + wait_s
        delay = 1.0
        while not w.flush(force=True) and time.monotonic() + delay < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        if w.pending:
            raise ReplayError(f"MLflow at {uri} stopped answering: {len(w.pending)} of {len(lines)} entries are "
                              f"still unsent. Nothing is lost (what was sent is not sent again): run the command "
                              f"again when it answers")
    finally:
        import shutil

        shutil.rmtree(w.tmpdir, ignore_errors=True)
    marker = p.parent / REPLAYED
    uris = sorted(set(replayed_to(p)) | {uri})
    try:
        marker.write_text(json.dumps({"uris": uris, "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
    except OSError:
        pass  # a read-only copy: the replay itself is done
    return {"uri": uri, "experiment": experiment, "entries": len(lines), "missing_runs": missing, **w.counts}


def summary(res: dict, path: str | os.PathLike) -> str:
    """One line saying what a replay sent."""
    what = (f"{res['runs_created']} runs created, {res['runs_found']} found again, {res['metrics']} metric values, "
            f"{res['artifacts']} artifacts, {res['datasets']} datasets, {res['ends']} run ends")
    there = f"; {res['metrics_there']} metric values were there already" if res["metrics_there"] else ""
    miss = (f"; runs {', '.join(res['missing_runs'])} are not in this store: their entries were skipped"
            if res["missing_runs"] else "")
    return f"replayed {res['entries']} entries of {path} to {res['uri']} (experiment {res['experiment']}): {what}{there}{miss}"
