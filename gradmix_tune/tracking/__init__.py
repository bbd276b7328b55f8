"""MLflow writing: store conventions, the durable writer, and the run and study loggers (no Ray).

    store.py    tracking URI, artifact root, tag names, HTTP limits, method_of, error kinds, the
                question, datasets (log_input) and the UI's arms view
    writer.py   Writer: the ordered, retried queue of MLflow operations (unsent.jsonl fallback)
    replay.py   replay: send an unsent.jsonl to a store, idempotently (`gradmix-tune tracking replay`)
    runlog.py   RunLog: one run's result dicts -> metrics (epoch/, task/, final) and figures
    loggers.py  StudyLogger (a sweep: parent and child runs; Ray Tune's callback hooks without
                Ray) and RunLogger (one `gradmix-tune run`, logged by run_child.py's process)
    run_child.py  the process that logs one `gradmix-tune run` beside its training
    ui.py       `gradmix-tune ui`'s server: `mlflow ui`, experiments opening on their runs, not the
                GenAI overview (ui_app.py: the app its uvicorn serves; imports mlflow's server)

Importing this package imports neither ray nor mlflow nor matplotlib: `gradmix-tune run` pays for
mlflow only when it logs, and sweep/ wraps StudyLogger in its Ray Tune callback.
"""
from .loggers import EPOCH_FLUSH_S, RunLogger, StudyLogger
from .runlog import RunLog
from .store import (DEFAULT_RUN_EXPERIMENT, DEFAULT_TRACKING_URI, PARENT, ROLE, SESSION, STEPS, artifact_root,
                    git_info, http_limits, method_of, param_value, resolve_tracking_uri, source_tags, study_info,
                    tag_value)
from .writer import Writer

__all__ = ["DEFAULT_RUN_EXPERIMENT", "DEFAULT_TRACKING_URI", "EPOCH_FLUSH_S", "PARENT", "ROLE", "SESSION", "STEPS",
           "RunLog", "RunLogger", "StudyLogger", "Writer", "artifact_root", "git_info", "http_limits", "method_of",
           "param_value", "resolve_tracking_uri", "source_tags", "study_info", "tag_value"]
