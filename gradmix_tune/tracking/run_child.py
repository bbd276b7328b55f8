"""The process that logs one `gradmix-tune run` to MLflow, beside the training process.

    python -m gradmix_tune.tracking.run_child      # started by loggers.start_run_child()

Importing mlflow and matplotlib, opening the store and drawing the figures take seconds of Python;
on a thread of the training process they compete with training for the GIL. Here they run on
the machine's other core while training runs. The training process writes JSON lines to this
process's stdin; it answers on stdout:

    in:  {"open": {uri, experiment, spill_dir, name, tags, params, config_yaml, dataset}}
         {"result": {...}, "flush": true|false}      (results.epoch_result / task_result)
         {"end": {"status": ..., "error": ...}}
    out: {"run_id": ..., "unsent": path or null}     (once, after the end)

End of input without an "end" (the training process was killed) ends the run KILLED. What MLflow
does not take is kept in spill_dir/unsent.jsonl, as with any Writer.
"""
from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger(__name__)


def _warm() -> None:
    """Import what the run will need while the training process loads its data."""
    try:
        import matplotlib.figure  # noqa: F401 - figures.py draws with it at the end
        import matplotlib.ticker  # noqa: F401
        from mlflow import MlflowClient  # noqa: F401
        from mlflow.entities import Metric, RunTag  # noqa: F401
    except Exception as e:  # noqa: BLE001 - the Writer imports (and reports) it again
        log.debug("warm: %s", e)


def serve(lines, out) -> None:
    """Apply the messages of `lines` (an iterable of JSON strings) to a Writer; report to `out`."""
    from .runlog import RunLog
    from .store import short
    from .writer import Writer

    w = rl = None
    ended = False
    for line in lines:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            if "open" in msg:
                o = msg["open"]
                w = Writer(o["uri"], o["experiment"], spill_dir=o.get("spill_dir"))
                rl = RunLog(w, "run")
                w.put("run", "run", {"name": o["name"], "tags": o["tags"], "params": o["params"],
                                     "find": o["find"]})
                w.put("artifact", "run", {"file": w.file("config.yaml", o["config_yaml"]), "tmp": True})
                if o.get("dataset"):
                    w.put("input", "run", o["dataset"])
                w.flush()
            elif "result" in msg and rl is not None:
                rl.result(msg["result"])
                if msg.get("flush"):  # an epoch's metrics wait for the task's: one log_batch a task
                    w.flush()
            elif "end" in msg and rl is not None:
                _finish(rl, msg["end"].get("status", "FINISHED"), msg["end"].get("error"))
                ended = True
                break
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            log.warning("MLflow tracking failed (training goes on): %s", short(e))
    if rl is not None and not ended:  # the training process went away mid-run
        _finish(rl, "KILLED", "the training process ended without ending its run")
    unsent = w.close() if w is not None else None
    try:
        out.write(json.dumps({"run_id": w.run_ids.get("run") if w else None, "unsent": unsent}) + "\n")
        out.flush()
    except (BrokenPipeError, OSError):  # the training process is gone: the run is ended all the same
        pass


def _finish(rl, status: str, error: str | None) -> None:
    from .store import short

    try:
        rl.figures(fetch_history=False)
    except Exception as e:  # noqa: BLE001
        log.warning("could not draw the run's figures: %s", short(e))
    rl.end(status, error)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    _warm()
    serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
