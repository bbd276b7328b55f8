"""Conventions of the MLflow store shared by the writers and the report: URI, tags, limits, errors."""
from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_RUN_EXPERIMENT = "gradmix-runs"

# tags
ROLE = "gradmix.role"  # parent | trial | run
SESSION = "gradmix.session"  # the logger instance that created a parent run
STEPS = "gradmix.steps"  # JSON high-water marks of the logged metric steps of a child run
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # a run's description in the UI
# an experiment tag: earlier MLflow 3 UIs read it to open an experiment on its runs rather than on
# the GenAI pages; 3.17's ignores it and goes by the browser's workflow type, which
# `gradmix-tune ui` makes "Model training" by default (ui.py)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
ARMS_VIEW = "arms"  # the UI's shared view of a study's runs: <ui>/#/experiments/<id>/runs?viewStateShareKey=arms
# a study that selects hyperparameters (sweep/protocol.py): the trial config keys that become child
# run tags. phase: tune | evaluate; an evaluation run's tune_rank (1 = best), tune_arm (the tuned
# configuration's arm), tune_trial (its tuning trials' study indices) and tune_trial_id (their Ray ids)
PHASE_TAGS = ("phase", "tune_rank", "tune_arm", "tune_trial", "tune_trial_id")
ALLOW_TEST_METRIC = "allow_test_metric"  # parent tag: the study selected on a test metric on purpose

PARAM_MAX = 6000  # MLflow's limit on a param value
TAG_MAX = 5000
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                    "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
                    "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_FOUND", "MALFORMED_REQUEST"}


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """`--tracking-uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (what `mlflow ui` opens)."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_root(uri: str) -> str | None:
    """For a sqlite store, artifacts go to `mlruns/` beside the database file (MLflow's own
    default is ./mlruns under whatever the current folder is); a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    return (db.parent / "mlruns").as_uri()


@contextmanager
def http_limits():
    """Fail fast on HTTP errors (the writer's queue retries) and print no run links, unless the
    user set these."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # not one "View run" line per trial
    added = [k for k in defaults if k not in os.environ]
    for k in added:
        os.environ[k] = defaults[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def method_of(factors: dict, config: dict) -> str:
    """The method a trial runs: the swept `method`, else the `method:` preset (config.METHODS) that
    the config's settings amount to (a config with no preset and no mixing is `er`, with no
    buffer `finetune`), else its `method:`, else its mixing selection."""
    from ..config import METHODS, flatten  # torch-free

    if factors.get("method"):
        return str(factors["method"])
    flat = flatten(config)
    for name in ("finetune", *(m for m in METHODS if m != "finetune")):  # finetune: er with no buffer
        if all(k in flat and flat[k] == v for k, v in METHODS[name].items()):
            return name
    if config.get("method"):
        return str(config["method"])
    return str((config.get("mixing") or {}).get("selection") or "unknown")


def question_of(ablation_text: str, description: str = "") -> str:
    """The question of an ablation file: its header comment from the line that starts with
    "Question" up to the last "?" before the sizing line ("N ... x ... = M runs") or Time/Data
    lines; else its `description:`; else ""."""
    lines = []
    for line in (ablation_text or "").splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("#"):
            break
        lines.append(line.lstrip()[1:].strip())
    start = next((i for i, t in enumerate(lines) if re.match(r"Questions?\b", t)), None)
    if start is None:
        return description.strip()
    kept = []
    for t in lines[start:]:
        if not t or re.match(r"\d+ .*\bx\b.*=", t) or re.match(r"(Time|Data)\b", t):
            break
        kept.append(t)
    text = re.sub(r"^Question:\s*", "", " ".join(kept))
    return text[:text.rfind("?") + 1] if "?" in text else text


def arms_view(metric: str = "final_avg_acc") -> tuple[str, str]:
    """The experiment tag behind MLflow 3's shared-view links (`?viewStateShareKey=arms`): a
    study's trial runs grouped by their `arm` tag (mean over seeds in the chart view), sorted by the
    study's metric, with the final metrics, method, seed and dataset as columns."""
    cols = ["attributes.`Dataset`", f"metrics.`{metric}`", "metrics.`forgetting`", "metrics.`avg_incremental_acc`",
            "tags.`method`", "tags.`seed`"]
    state = {"searchFilter": f"tags.`{ROLE}` = 'trial'", "orderByKey": f"metrics.`{metric}`", "orderByAsc": False,
             "selectedColumns": list(dict.fromkeys(cols)), "runsHiddenMode": "SHOW_ALL",
             "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "arm"}]},
             "useGroupedValuesInCharts": True, "hideEmptyCharts": True}
    return f"mlflow.sharedViewState.{ARMS_VIEW}", json.dumps(state)


def ui_links(base: str, experiment_id: str) -> dict[str, str]:
    """The MLflow UI pages of a study: its runs grouped by arm, as a table and as charts."""
    runs = (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={ARMS_VIEW}")
    return {"table": runs, "charts": runs + "&compareRunsMode=CHART"}


def data_key(data: dict) -> str:
    """A data section as a key: the runs whose data sections are equal share a dataset."""
    return json.dumps(data, sort_keys=True, default=str)


def dataset_input(info: dict) -> dict:
    """What `mlflow.log_input` records of a run's dataset, from Benchmark.describe(): its name, a
    digest of what was loaded (data section, sizes, class order), where it came from, the tensor
    shapes (schema) and a profile with the sizes and the class order per task."""
    import hashlib

    digest = hashlib.sha1(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:12]
    shape = [-1, *info.get("input_shape", [])]
    spec = {"features": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": shape}}]),
            "targets": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}])}
    profile = {k: info[k] for k in ("train_size", "test_size", "num_classes", "tasks", "class_order",
                                    "task_classes") if k in info}
    return {"name": str(info.get("name", "dataset")), "digest": digest,
            "source_type": "local" if info.get("source", "").startswith("/") else "code",
            "source": json.dumps({"uri": info.get("source", "")}),
            "schema": json.dumps({"mlflow_tensorspec": spec}), "profile": json.dumps(profile)}


def study_info(study) -> dict:
    """What the store keeps of a study (a sweep's Study, or a dict with its fields): name,
    experiment (default: the name), ablation path and text, grid, seeds, metric, mode, and whether
    it selects on a test metric on purpose (allow_test_metric)."""
    get = (lambda k, d=None: study.get(k, d)) if isinstance(study, dict) else \
        (lambda k, d=None: getattr(study, k, d))
    name = str(get("name") or "study")
    return {"name": name, "experiment": str(get("experiment") or name), "path": str(get("path") or ""),
            "raw_text": get("raw_text") or "", "grid": dict(get("grid") or {}),
            "seeds": list(get("seeds") or []), "metric": str(get("metric") or "final_avg_acc"),
            "mode": str(get("mode") or "max"), "allow_test_metric": bool(get("allow_test_metric") or False)}


def param_value(v: Any) -> str:
    """A param as MLflow stores it: lists and dicts as JSON, cut to MLflow's limit."""
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= PARAM_MAX else s[:PARAM_MAX - 3] + "..."


def tag_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= TAG_MAX else s[:TAG_MAX - 3] + "..."


def git_info(cwd: str | None = None) -> dict[str, str]:
    """Commit and dirty flag of the checkout the command runs in (else of this package)."""
    for where in (cwd or os.getcwd(), str(Path(__file__).resolve().parent)):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                    text=True, timeout=10).stdout.strip()
            if not commit:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
        except (OSError, subprocess.SubprocessError):
            continue
    return {"git_commit": "unknown", "git_dirty": "unknown"}


def source_tags(command: str | None = None) -> dict[str, str]:
    """Tags naming where a run came from: command line, git commit and dirty flag, user."""
    g = git_info()
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    tags = {"command": command if command is not None else " ".join(sys.argv),
            "git_commit": g["git_commit"], "git_dirty": g["git_dirty"],
            "mlflow.user": user, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "gradmix-tune"}
    if g["git_commit"] != "unknown":
        tags["mlflow.source.git.commit"] = g["git_commit"]
    return tags


def is_network_error(e: BaseException) -> bool:
    """A transient failure: server unreachable, timeout, a locked or busy database."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    mod = type(e).__module__ or ""
    if mod.startswith(("requests", "urllib3", "http.client", "sqlalchemy", "sqlite3")):
        return True
    text = str(e)
    return any(s in text for s in ("API request to", "Max retries exceeded", "Connection refused",
                                   "database is locked", "timed out", "TEMPORARILY_UNAVAILABLE"))


def is_permanent(e: BaseException) -> bool:
    """MLflow refused the request for good (a bad value, a missing run): retrying cannot help."""
    code = getattr(e, "error_code", None)
    return code in _PERMANENT_CODES and not is_network_error(e)


def short(e: BaseException) -> str:
    """An exception in one line of at most 300 characters, for a warning."""
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) < 300 else s[:297] + "..."
