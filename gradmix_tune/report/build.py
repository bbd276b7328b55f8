"""A study's report folder from MLflow (`build_report`; `after_sweep` at a sweep's end), and logging it back there.

    OUT/STUDY/report.md, report.html (self-contained), summary.json (every number, NaN as null),
    figures/*.png. With log_to_parent, the study's parent run also gets: per-arm metrics
    `<arm>/<metric>_mean|_std|_ci_low|_ci_high|_n`, the table `arm_summary.json` (mlflow log_table),
    the question and findings as its description (`mlflow.note.content`), and the folder (`report/`).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

from ..tracking.store import http_limits, resolve_tracking_uri, study_info, tag_value
from ..values import is_finite
from .analysis import analyse
from .charts import figures_of, slug
from .document import Context, write
from .runs import load_study
from .reproduce import per_seed_entries, study_span_s
from . import tuning  # noqa: F401 - registers its section (document.OPTIONAL_SECTIONS) before `write`

log = logging.getLogger(__name__)
NOTE = "mlflow.note.content"


def jsonable(x):
    """`x` with NaN/inf as None and tuples as lists, for json.dumps."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def note_text(res: dict) -> str:
    """The parent run's description: the question first, then the findings (markdown)."""
    f = res["findings"]
    lines = [f"**Question:** {f['question']}" if f["question"] else f"**Study** {res['study']}", "",
             "**Findings**", ""]
    if f["warning"]:
        lines += [f"Warning: {f['warning']}", ""]
    lines += [f"- {s}" for s in f["sentences"]] + ["", *([f["baseline"], ""] if f["baseline"] else []),
                                                    "Full report: artifacts `report/report.html`."]
    return "\n".join(lines)


def arm_summary(res: dict) -> dict:
    """Per arm: the study metric's n, mean, std and 95% CI (t, clipped), as columns."""
    m = res["test_metric"]
    cols = {"arm": [], "method": [], "n": [], f"{m}_mean": [], f"{m}_std": [], f"{m}_ci_low": [], f"{m}_ci_high": []}
    for a in res["arms"]:
        st = a["stats"][m]
        for k, v in (("arm", a["arm"]), ("method", a["method"]), ("n", st["n"]), (f"{m}_mean", st["mean"]),
                     (f"{m}_std", st["std"]), (f"{m}_ci_low", st["ci_low"]), (f"{m}_ci_high", st["ci_high"])):
            cols[k].append(v if not isinstance(v, float) or math.isfinite(v) else None)
    return cols


def log_to_parent_run(client, res: dict, folder: Path) -> None:
    """Per-arm metrics, the summary table, the description and the report folder on the parent run."""
    from mlflow.entities import Metric

    rid, m = res["parent_run_id"], res["test_metric"]
    now = int(time.time() * 1000)
    metrics = []
    for a in res["arms"]:
        st = a["stats"][m]
        for k in ("mean", "std", "ci_low", "ci_high", "n"):
            if is_finite(st[k]):
                metrics.append(Metric(f"{slug(a['arm'])}/{m}_{k}"[:250], float(st[k]), now, 0))
    with http_limits():
        for i in range(0, len(metrics), 500):
            client.log_batch(rid, metrics=metrics[i:i + 500])
        with warnings.catch_warnings():  # pandas' deprecation notes from inside mlflow's log_table
            warnings.simplefilter("ignore")
            client.log_table(rid, data=arm_summary(res), artifact_file="arm_summary.json")
        client.set_tag(rid, NOTE, tag_value(note_text(res)))
        client.log_artifacts(rid, str(folder), artifact_path="report")


def summary_of(res: dict, sr) -> dict:
    """summary.json: the analysis, with each arm's per_seed as [{seed, <metric>, run_id, reproduce}]
    (`reproduce`: the command line that re-makes that trial alone, report/reproduce.py)."""
    by_id = {tr.run_id: tr for tr in sr.runs}
    arms = [{**a, "per_seed": per_seed_entries(a, by_id, res["test_metric"])} for a in res["arms"]]
    return {**res, "arms": arms, "study_wall_time_s": study_span_s(sr)}


def build_report(study: str, tracking_uri: str | None = None, out_dir: str | Path = "reports",
                 experiment: str | None = None, parent_run_id: str | None = None,
                 log_to_parent: bool = False, ui_url: str | None = None) -> Path:
    """Read the study from MLflow and write OUT/STUDY/; returns that folder."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    sr = load_study(client, study, experiment, parent_run_id)
    res = analyse(sr)
    folder = Path(out_dir) / slug(study)
    fig_dir = folder / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # no stale figures from an earlier build
    folder.mkdir(parents=True, exist_ok=True)
    figs = figures_of(res, fig_dir)
    write(Context(res, figs, uri, ui_url, runs=sr, fig_dir=fig_dir), folder)
    (folder / "summary.json").write_text(json.dumps(jsonable(summary_of(res, sr)), indent=1, default=str))
    if log_to_parent:
        log_to_parent_run(client, res, folder)
    return folder


def after_sweep(study, tracking_uri: str, out_dir: str = "reports", parent_run_id: str | None = None):
    """Build the study's report at the end of a sweep and log it to its parent run (the sweep's
    `StudyLogger.parent_run_id`; else the study's latest parent); returns the folder or None."""
    info = study_info(study)
    uri = resolve_tracking_uri(tracking_uri)
    try:
        folder = build_report(info["name"], uri, out_dir, experiment=info["experiment"],
                              parent_run_id=parent_run_id, log_to_parent=True)
    except Exception as e:  # noqa: BLE001 - the sweep itself succeeded; say how to retry
        log.warning("could not build the report of study %s: %s. Build it later with: gradmix-tune report %s "
                    "--tracking-uri %s", info["name"], e, info["name"], uri)
        return None
    print(f"report: {folder / 'report.md'} and {folder / 'report.html'} (also logged to the study's MLflow run)")
    return folder
