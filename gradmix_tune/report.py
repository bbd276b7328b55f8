"""MLflow runs -> reports/<study>/: tables, paired significance tests and figures.

Reads the tracking store only (the parent run of the study and its child runs: tags, params,
final metrics and metric histories), so a report can be rebuilt later, on another machine:

    gradmix-tune report STUDY [--tracking-uri URI] [--out DIR] [--experiment NAME]

writes OUT/STUDY/report.md, report.html, summary.json (every number of the report, NaN as null)
and figures/*.png. A sweep calls `after_sweep` at its end, which also logs the folder to the
study's parent run (artifact path `report/`).

Definitions (documented in the report itself):
- arm = the trials of one grid point (factor values), repeated over seeds; a trial counts once
  (its latest FINISHED run); failed or unfinished trials are listed apart.
- per arm: mean, sample std (ddof=1) and the 95% confidence interval of the mean,
  mean +- t(0.975, n-1) * std / sqrt(n), over seeds.
- paired tests on the study metric across seeds (pairs = the same seed in both arms, i.e. the
  same initialisation and sampling stream): a paired t-test (scipy.stats.ttest_rel), and a
  Wilcoxon signed-rank test (scipy.stats.wilcoxon) when at least 6 pairs exist.
- method of a trial = its swept `method`, else the config's `method`, else `mixing.selection`;
  the baseline is er_mixup (selection `random` when methods are named by selection).

The module top level imports neither mlflow nor matplotlib.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS = ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt")
LABELS = {"final_avg_acc": "final average accuracy", "avg_incremental_acc": "average incremental accuracy",
          "forgetting": "forgetting", "bwt": "backward transfer (BWT)", "wall_time_s": "wall time (s)"}
HIGHER_IS_BETTER = {"final_avg_acc": True, "avg_incremental_acc": True, "forgetting": False, "bwt": True}
BASELINES = ("er_mixup", "random")  # ER+Mixup, by preset name or by selection name
GRADMIX = ("gradmix", "gradient")
NAN = float("nan")


# =========================================================================== figures (also used
# by tracking.py for the per-trial artifacts). Figure() draws without pyplot's global state.
def _figure(w: float = 6.0, h: float = 4.5):
    from matplotlib.figure import Figure  # drawn with Agg by savefig; no pyplot, no GUI backend

    return Figure(figsize=(w, h), layout="constrained")


def _nan_matrix(rows: list[list], size: int | None = None):
    import numpy as np

    n = size or max((len(r) for r in rows), default=0)
    m = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        for j, v in enumerate(r[:n]):
            m[i, j] = NAN if v is None else float(v)
    return m


def draw_accuracy_matrix(acc: list[list[float]], path: str | Path, title: str = "accuracy matrix") -> None:
    """A[i][j] = accuracy on task j after training task i (lower triangle)."""
    import numpy as np

    m = _nan_matrix(acc, len(acc))
    t = len(acc)
    fig = _figure(1.2 + 0.75 * max(t, 2) + 1.2, 1.0 + 0.7 * max(t, 2))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap="viridis")
    for i in range(t):
        for j in range(t):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.6 else "black")
    ax.set_xticks(range(t), [f"T{j}" for j in range(t)])
    ax.set_yticks(range(t), [f"T{i}" for i in range(t)])
    ax.set_xlabel("tested on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)


def draw_s_matrix(smat: list[list[float | None]], path: str | Path,
                  title: str = "GradMix pair scores S (last refresh)") -> None:
    """S[a][b] >= threshold marks a helpful pair; None = class not seen at that refresh."""
    import numpy as np

    m = _nan_matrix(smat)
    c = m.shape[0]
    fin = m[np.isfinite(m)]
    vmax = float(np.max(np.abs(fin))) if fin.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig = _figure(2.0 + 0.45 * max(c, 4), 1.5 + 0.4 * max(c, 4))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu", vmin=-vmax, vmax=vmax)
    if c <= 12:
        for a in range(c):
            for b in range(m.shape[1]):
                if np.isfinite(m[a, b]):
                    ax.text(b, a, f"{m[a, b]:.2g}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("class b")
    ax.set_ylabel("class a")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)


def _peak(steps: list[int], accs: list[float], epochs_per_task: int | None, task_of: dict | None = None) -> dict:
    """Peak and drop of a seen-class accuracy curve within its last task (where the seen classes,
    hence the test set, no longer change), and the mean within-task drop over all tasks. The task
    of a global epoch: `task_of[step]` when logged, else (step - 1) // epochs_per_task."""
    pts = [(s, a) for s, a in zip(steps, accs) if a is not None and math.isfinite(a)]
    if not pts:
        return {"peak_epoch": None, "peak_acc": NAN, "final_acc": NAN, "drop": NAN, "mean_task_drop": NAN}
    e = epochs_per_task if epochs_per_task and epochs_per_task > 0 else len(pts)
    by_task: dict[int, list] = {}
    for s, a in pts:
        t = task_of.get(s) if task_of else None
        by_task.setdefault(int(t) if t is not None else (s - 1) // e, []).append((s, a))
    last = by_task[max(by_task)]
    ps, pa = max(last, key=lambda p: (p[1], -p[0]))
    drops = [max(a for _, a in v) - v[-1][1] for v in by_task.values()]
    return {"peak_epoch": int(ps), "peak_acc": pa, "final_acc": last[-1][1], "drop": pa - last[-1][1],
            "mean_task_drop": sum(drops) / len(drops)}


def draw_epoch_curve(steps: list[int], accs: list[float], losses: list[float | None] | None,
                     path: str | Path, task_of: list | None = None, title: str = "per-epoch curve",
                     epochs_per_task: int | None = None) -> None:
    fig = _figure(6.5, 4.0)
    ax = fig.subplots()
    ax.plot(steps, accs, "o-", color="tab:blue", label="seen-class test accuracy", ms=3)
    _mark_boundaries(ax, steps, task_of if task_of and all(t is not None for t in task_of) else None,
                     epochs_per_task)
    known = task_of and all(t is not None for t in task_of)
    pk = _peak(steps, accs, epochs_per_task, dict(zip(steps, task_of)) if known else None)
    if pk["peak_epoch"] is not None:
        ax.plot([pk["peak_epoch"]], [pk["peak_acc"]], "*", color="tab:red", ms=12,
                label=f"peak (last task) epoch {pk['peak_epoch']}")
        ax.annotate(f"drop {pk['drop']:.3f}", (steps[-1], pk["final_acc"]), textcoords="offset points",
                    xytext=(-40, -14), fontsize=8, color="tab:red")
    ax.set_xlabel("global epoch")
    ax.set_ylabel("accuracy")
    _integer_ticks(ax)
    if losses and any(v is not None and math.isfinite(v) for v in losses):
        ax2 = ax.twinx()
        ax2.plot(steps, [NAN if v is None else v for v in losses], "--", color="tab:gray", label="train loss")
        ax2.set_ylabel("train loss")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_boundaries(ax, steps, task_of=None, epochs_per_task=None) -> None:
    if task_of:
        for k in range(1, len(steps)):
            if task_of[k] != task_of[k - 1]:
                ax.axvline(steps[k] - 0.5, color="0.8", ls=":", lw=1)
    elif epochs_per_task and steps:
        b = epochs_per_task + 0.5
        while b < max(steps):
            ax.axvline(b, color="0.8", ls=":", lw=1)
            b += epochs_per_task


# =========================================================================== reading MLflow
@dataclass
class TrialRun:
    run_id: str
    name: str
    status: str
    start_time: int
    arm: str
    seed: Any
    method: str
    factors: dict
    others: tuple  # the factors other than the method, as ((key, value), ...)
    metrics: dict
    acc_matrix: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # [(global_epoch, seen_acc)]
    task_of: dict = field(default_factory=dict)  # global_epoch -> task
    epochs_per_task: int | None = None
    error: str = ""
    trial_id: str = ""


@dataclass
class StudyRuns:
    study: str
    experiment: str
    experiment_id: str
    parent_id: str
    parent_tags: dict
    runs: list  # one FINISHED run per (arm, seed)
    failed: list  # trials without a finished run: FAILED, KILLED or still RUNNING


class ReportError(Exception):
    pass


def _search_all(client, exp_ids: list[str], filt: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filt, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        out.extend(page)
        token = page.token
        if not token:
            return out


def _parse_seed(s: Any) -> Any:
    try:
        return int(s)
    except (TypeError, ValueError):
        return s


def _jkey(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def load_study(client, study: str, experiment: str | None = None, parent_run_id: str | None = None) -> StudyRuns:
    """The study's latest parent run (or `parent_run_id`) and its child runs, from MLflow."""
    from .tracking import PARENT, ROLE, method_of

    exp_name = experiment or study
    parent = None
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        exp = client.get_experiment(parent.info.experiment_id)
    else:
        exp = client.get_experiment_by_name(exp_name)
        filt = f"tags.study = '{study}' and tags.`{ROLE}` = 'parent'"
        if exp is not None:
            found = client.search_runs([exp.experiment_id], filt, max_results=1,
                                       order_by=["attributes.start_time DESC"])
            parent = found[0] if found else None
        if parent is None and experiment is None:  # the study may live in an experiment of another name
            ids = [e.experiment_id for e in client.search_experiments()]
            found = client.search_runs(ids, filt, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
            if found:
                parent = found[0]
                exp = client.get_experiment(parent.info.experiment_id)
    if parent is None:
        raise ReportError(f"no study '{study}' in experiment '{exp_name}'")
    pid = parent.info.run_id
    children = _search_all(client, [exp.experiment_id], f"tags.`{PARENT}` = '{pid}'")
    trials: list[TrialRun] = []
    for r in children:
        t, p, m = r.data.tags, r.data.params, r.data.metrics
        try:
            factors = json.loads(t.get("factors") or "{}")
        except ValueError:
            factors = {}
        cfg_method = p.get("method", "")
        method = t.get("method") or method_of(factors, {"method": cfg_method,
                                                        "mixing": {"selection": p.get("mixing.selection")}})
        skip = {"method"}
        if "method" not in factors and not cfg_method:
            skip.add("mixing.selection")  # the method is named by its selection
        others = tuple(sorted((k, v) for k, v in factors.items() if k not in skip))
        try:
            ept = int(p.get("train.epochs", "")) or None
        except ValueError:
            ept = None
        trials.append(TrialRun(run_id=r.info.run_id, name=r.info.run_name or "", status=r.info.status,
                               start_time=r.info.start_time or 0, arm=t.get("arm") or r.info.run_name or "",
                               seed=_parse_seed(t.get("seed")), method=method, factors=factors,
                               others=others, metrics=dict(m), epochs_per_task=ept,
                               error=t.get("error", ""), trial_id=t.get("trial_id", "")))
    # one run per (arm, seed): the latest finished; the others count as failed only without one
    best: dict[tuple, TrialRun] = {}
    for tr in sorted(trials, key=lambda x: x.start_time):
        if tr.status == "FINISHED":
            best[(tr.arm, _jkey(tr.seed))] = tr
    failed = [tr for tr in trials if tr.status != "FINISHED" and (tr.arm, _jkey(tr.seed)) not in best]
    runs = sorted(best.values(), key=lambda x: (x.arm, _jkey(x.seed)))
    for tr in runs:
        _load_histories(client, tr)
    return StudyRuns(study=study, experiment=exp.name, experiment_id=exp.experiment_id, parent_id=pid,
                     parent_tags=dict(parent.data.tags), runs=runs,
                     failed=sorted(failed, key=lambda x: (x.arm, _jkey(x.seed))))


def _load_histories(client, tr: TrialRun) -> None:
    """Accuracy matrix from the acc_task_<j> histories (step i+1 = after task i) and the
    seen-class accuracy curve (step = global epoch)."""
    keys = sorted((k for k in tr.metrics if re.fullmatch(r"acc_task_\d+", k)), key=lambda k: int(k[9:]))
    hist: dict[int, dict[int, float]] = {}
    for k in keys:
        j = int(k[9:])
        for m in client.get_metric_history(tr.run_id, k):
            hist.setdefault(m.step, {})[j] = m.value
    if hist:
        t = max(max(hist), len(keys))
        tr.acc_matrix = [[hist.get(i + 1, {}).get(j) for j in range(i + 1)] for i in range(t)]
    tr.curve = sorted({m.step: m.value for m in client.get_metric_history(tr.run_id, "seen_acc")}.items())
    tr.task_of = {m.step: int(m.value) for m in client.get_metric_history(tr.run_id, "task")}


# =========================================================================== statistics
def describe(values: list[float]) -> dict:
    """n, mean, std (ddof=1), 95% CI half-width and bounds (t-distribution) of the mean."""
    import numpy as np
    from scipy import stats

    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(a.size)
    mean = float(a.mean()) if n else NAN
    std = float(a.std(ddof=1)) if n > 1 else NAN
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else NAN
    return {"n": n, "mean": mean, "std": std, "ci95": half, "ci_low": mean - half, "ci_high": mean + half}


def paired_test(a: dict, b: dict) -> dict:
    """Paired tests of a vs b over the seeds both have (dicts seed -> value)."""
    import warnings

    import numpy as np
    from scipy import stats

    seeds = sorted((s for s in a if s in b and _ok(a[s]) and _ok(b[s])), key=_jkey)
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    n = len(seeds)
    out = {"n": n, "seeds": seeds, "mean_a": float(x.mean()) if n else NAN, "mean_b": float(y.mean()) if n else NAN,
           "mean_diff": float((x - y).mean()) if n else NAN, "t": NAN, "p_ttest": NAN, "p_wilcoxon": NAN}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n >= 2:
            r = stats.ttest_rel(x, y)
            out["t"], out["p_ttest"] = float(r.statistic), float(r.pvalue)
        if n >= 6:
            try:
                out["p_wilcoxon"] = float(stats.wilcoxon(x, y).pvalue)
            except ValueError:  # every difference is zero
                pass
    return out


def _ok(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


# =========================================================================== the analysis
def _fmt_factors(others: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in others) or "-"


def _method_order(methods: list[str]) -> list[str]:
    def rank(m):
        if m in BASELINES:
            return (1, m)
        if m in GRADMIX:
            return (2, m)
        return (0, m)
    return sorted(set(methods), key=rank)


def _sort_value(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def analyse(sr: StudyRuns) -> dict:
    """Every number of the report, from the runs."""
    metric = sr.parent_tags.get("metric", "final_avg_acc")
    test_metric = metric if metric in METRICS or metric == "wall_time_s" else "final_avg_acc"
    arms: dict[str, dict] = {}
    for tr in sr.runs:
        a = arms.setdefault(tr.arm, {"arm": tr.arm, "method": tr.method, "factors": tr.factors,
                                     "others": tr.others, "runs": {}})
        a["runs"][_jkey(tr.seed)] = tr
    methods = _method_order([a["method"] for a in arms.values()])
    order = sorted(arms.values(), key=lambda a: (tuple(_sort_value(v) for _, v in a["others"]),
                                                 methods.index(a["method"]), a["arm"]))
    baseline = next((m for m in BASELINES if m in methods), None)
    gradmix = next((m for m in GRADMIX if m in methods), None)

    def values(a, key):
        return {s: tr.metrics.get(key) for s, tr in a["runs"].items()}

    def base_arm(a):
        return next((b for b in order if b["method"] == baseline and b["others"] == a["others"]), None)

    arm_rows = []
    for a in order:
        stats = {k: describe(list(values(a, k).values())) for k in METRICS + ("wall_time_s",)}
        b = base_arm(a) if baseline else None
        overhead = NAN
        if b is not None:
            wb = describe(list(values(b, "wall_time_s").values()))["mean"]
            overhead = stats["wall_time_s"]["mean"] / wb if wb and math.isfinite(wb) and wb > 0 else NAN
        curves = _arm_curve(a)
        arm_rows.append({"arm": a["arm"], "method": a["method"], "factors": a["factors"],
                         "others": [list(o) for o in a["others"]],
                         "seeds": [tr.seed for tr in a["runs"].values()],
                         "run_ids": [tr.run_id for tr in a["runs"].values()],
                         "stats": stats, "overhead_vs_baseline": overhead, "curve": curves,
                         "accuracy_matrix": _mean_matrix([tr.acc_matrix for tr in a["runs"].values()])})
    tests_baseline, tests_gradmix = [], []
    if baseline:
        for a in order:
            b = base_arm(a)
            if a["method"] == baseline or b is None:
                continue
            r = paired_test(values(a, test_metric), values(b, test_metric))
            tests_baseline.append({"arm": a["arm"], "vs": b["arm"], "method": a["method"],
                                   "factors": _fmt_factors(a["others"]), **r})
    if gradmix:
        gm = [x for x in order if x["method"] == gradmix]
        for g in gm:
            for o in order:
                if o is g or (o in gm and gm.index(o) < gm.index(g)):
                    continue  # two gradmix arms: tested once
                r = paired_test(values(g, test_metric), values(o, test_metric))
                tests_gradmix.append({"arm": g["arm"], "vs": o["arm"], **r})
    failed = [{"name": tr.name, "arm": tr.arm, "seed": tr.seed, "status": tr.status, "error": tr.error,
               "run_id": tr.run_id, "trial_id": tr.trial_id} for tr in sr.failed]
    other_keys = sorted({k for a in order for k, _ in a["others"]})
    return {"study": sr.study, "experiment": sr.experiment, "experiment_id": sr.experiment_id,
            "parent_run_id": sr.parent_id, "metric": metric, "mode": sr.parent_tags.get("mode", "max"),
            "test_metric": test_metric, "baseline": baseline, "gradmix": gradmix, "methods": methods,
            "factor_keys": other_keys, "ablation": sr.parent_tags.get("ablation", ""),
            "git_commit": sr.parent_tags.get("git_commit", ""), "command": sr.parent_tags.get("command", ""),
            "n_runs": len(sr.runs), "arms": arm_rows, "tests_vs_baseline": tests_baseline,
            "tests_gradmix": tests_gradmix, "failed": failed}


def _mean_matrix(mats: list[list[list]]) -> list[list]:
    mats = [m for m in mats if m]
    if not mats:
        return []
    t = max(len(m) for m in mats)
    out = []
    for i in range(t):
        row = []
        for j in range(i + 1):
            vals = [m[i][j] for m in mats if i < len(m) and j < len(m[i]) and _ok(m[i][j])]
            row.append(sum(vals) / len(vals) if vals else None)
        out.append(row)
    return out


def _arm_curve(a: dict) -> dict:
    by_step: dict[int, list[float]] = {}
    ept, task_of = None, {}
    for tr in a["runs"].values():
        ept = ept or tr.epochs_per_task
        for s, t in tr.task_of.items():
            task_of.setdefault(s, t)
        for s, v in tr.curve:
            if _ok(v):
                by_step.setdefault(int(s), []).append(v)
    steps = sorted(by_step)
    mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    tmap = task_of if all(s in task_of for s in steps) else None
    return {"steps": steps, "mean_seen_acc": mean, "epochs_per_task": ept,
            "task_of": [tmap[s] for s in steps] if tmap else None, **_peak(steps, mean, ept, tmap)}


# =========================================================================== writing
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:80] or "arm"


def _f(v, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _p(v) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}"


def _ms(st: dict, nd: int = 4) -> str:
    if not st["n"]:
        return "n/a"
    if st["n"] < 2:
        return _f(st["mean"], nd)
    return f"{_f(st['mean'], nd)} ± {_f(st['std'], nd)}"


def _ci(st: dict, nd: int = 4) -> str:
    if st["n"] < 2:
        return "n/a"
    return f"[{_f(st['ci_low'], nd)}, {_f(st['ci_high'], nd)}]"


class _Doc:
    """Builds report.md and report.html side by side from the same blocks."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.md += [text, ""]
        t = html.escape(text)
        t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
        t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
        self.html.append(f"<p>{t}</p>")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        if not rows:
            self.p("(none)")
            return
        esc = [str(h).replace("|", "\\|") for h in headers]
        self.md += ["| " + " | ".join(esc) + " |", "|" + "---|" * len(headers)]
        for r in rows:
            self.md.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
        self.md.append("")
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def img(self, rel: str, alt: str) -> None:
        self.md += [f"![{alt}]({rel})", ""]
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}img{max-width:100%}figure{display:inline-block;margin:0.5em}
figcaption{font-size:0.8em;color:#555}code{background:#f3f3f3;padding:0 3px}"""


def _figures(res: dict, fig_dir: Path) -> dict:
    """Draw every figure; returns {kind: [(relative path, caption)]}."""
    import numpy as np

    fig_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list] = {"factor": [], "matrix": [], "curve": []}
    arms = res["arms"]
    if not arms:
        return out
    # the swept factor on the x-axis, one line per method (and per value of the other factors)
    keys = res["factor_keys"] or [None]
    for fk in keys:
        fig = _figure(11, 7.5)
        axes = fig.subplots(2, 2).ravel()
        lines: dict[tuple, list] = {}
        for a in arms:
            d = dict((k, v) for k, v in a["others"])
            rest = tuple((k, v) for k, v in a["others"] if k != fk)
            lines.setdefault((a["method"], _jkey(rest)), []).append((d.get(fk, a["method"]) if fk else a["method"], a))
        # the factor's values equally spaced (grids are like 100, 200, 500, 1000), lines dodged apart
        xs_all = sorted({_jkey(x) for pts in lines.values() for x, _ in pts}, key=lambda s: _sort_value(json.loads(s)))
        cat = {x: i for i, x in enumerate(xs_all)}
        ordered = sorted(lines.items(), key=lambda kv: (res["methods"].index(kv[0][0]), kv[0][1]))
        width = 0.25 if len(ordered) > 1 and fk is not None else 0.0
        for ax, m in zip(axes, METRICS):
            for li, ((method, rest_key), pts) in enumerate(ordered):
                pts = sorted(pts, key=lambda p: _sort_value(p[0]))
                dx = (li / max(len(ordered) - 1, 1) - 0.5) * width
                x = [cat[_jkey(p[0])] + dx for p in pts]
                y = [p[1]["stats"][m]["mean"] for p in pts]
                e = [0.0 if not math.isfinite(p[1]["stats"][m]["ci95"]) else p[1]["stats"][m]["ci95"] for p in pts]
                rest = json.loads(rest_key)
                label = method + (" (" + _fmt_factors(tuple(tuple(r) for r in rest)) + ")" if rest else "")
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(cat)), [str(json.loads(s)) for s in cat], fontsize=8,
                          rotation=20 if len(cat) > 5 else 0)
            ax.set_xlim(-0.5, len(cat) - 0.5)
            ax.set_xlabel(fk or "method")
            ax.set_title(LABELS[m], fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{res['study']}: mean over seeds, error bars = 95% CI", fontsize=10)
        name = f"factor_{_slug(fk or 'method')}.png"
        fig.savefig(fig_dir / name, dpi=100)
        out["factor"].append((f"figures/{name}", f"metrics against {fk or 'method'} (mean, 95% CI)"))
    # accuracy matrices, mean over seeds
    for i, a in enumerate(arms):
        if a["accuracy_matrix"]:
            name = f"acc_matrix_{i:02d}_{_slug(a['arm'])}.png"
            draw_accuracy_matrix(a["accuracy_matrix"], fig_dir / name,
                                 f"{a['arm']}\nmean over {len(a['seeds'])} seeds")
            out["matrix"].append((f"figures/{name}", f"accuracy matrix, {a['arm']} (mean over seeds)"))
    # per-epoch curves: one panel per value of the other factors, one line per method
    groups: dict[str, list] = {}
    for a in arms:
        if a["curve"]["steps"]:
            groups.setdefault(_jkey(a["others"]), []).append(a)
    if groups:
        n = len(groups)
        cols = min(n, 2)
        rows = math.ceil(n / cols)
        fig = _figure(6.0 * cols, 3.8 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax, (gk, garms) in zip(axes, sorted(groups.items())):
            for a in garms:
                c = a["curve"]
                (ln,) = ax.plot(c["steps"], c["mean_seen_acc"], "o-", ms=3, label=a["method"])
                if c["peak_epoch"] is not None:
                    ax.plot([c["peak_epoch"]], [c["peak_acc"]], "*", ms=11, color=ln.get_color())
                    ax.vlines(c["steps"][-1], c["final_acc"], c["peak_acc"], color=ln.get_color(), lw=2, alpha=0.6)
            c0 = garms[0]["curve"]
            _mark_boundaries(ax, c0["steps"], c0["task_of"], c0["epochs_per_task"])
            ax.set_title(_fmt_factors(tuple(tuple(o) for o in json.loads(gk))), fontsize=9)
            ax.set_xlabel("global epoch")
            _integer_ticks(ax)
            ax.set_ylabel("seen-class accuracy (mean over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.suptitle("per-epoch seen-class accuracy; ★ peak in the last task, bar = drop to the final epoch",
                     fontsize=10)
        fig.savefig(fig_dir / "curves.png", dpi=100)
        out["curve"].append(("figures/curves.png", "per-epoch seen-class accuracy curves"))
    return out


def _write(res: dict, folder: Path, figs: dict, tracking_uri: str) -> None:
    d = _Doc()
    d.h(1, f"Study {res['study']}")
    d.p(f"Experiment `{res['experiment']}` (id {res['experiment_id']}), parent run `{res['parent_run_id']}`, "
        f"tracking URI `{tracking_uri}`. Ablation file `{res['ablation'] or '?'}`, git commit "
        f"`{res['git_commit'] or '?'}`. {res['n_runs']} finished trials in {len(res['arms'])} arms, "
        f"{len(res['failed'])} failed or unfinished. Study metric: `{res['metric']}` ({res['mode']}).")
    d.p("Mean ± sample std over seeds; 95% CI of the mean from the t-distribution "
        "(mean ± t(0.975, n−1)·std/√n). Rebuild with `gradmix-tune report " + res["study"] + "`.")
    d.h(2, "Results per arm")
    rows = []
    for a in res["arms"]:
        st = a["stats"]
        rows.append([a["arm"], a["method"], st["final_avg_acc"]["n"]]
                    + [f"{_ms(st[m])} {_ci(st[m])}" for m in METRICS])
    d.table(["arm", "method", "n"] + [f"{LABELS[m]} (mean ± std [95% CI])" for m in METRICS], rows)
    if figs["factor"]:
        d.h(2, "Effect of the swept factor")
        for rel, cap in figs["factor"]:
            d.img(rel, cap)
    d.h(2, "Paired tests across seeds")
    base = res["baseline"]
    d.p(f"Metric `{res['test_metric']}`; pairs are runs with the same seed. Paired t-test "
        "(scipy.stats.ttest_rel) and, with at least 6 pairs, Wilcoxon signed-rank. "
        "diff = mean of (arm − other).")
    d.h(3, f"Each method against {base or 'er_mixup'} at the same other factor values")
    if base:
        d.table(["arm", "against", "n", "mean arm", "mean other", "diff", "t", "p (t-test)", "p (Wilcoxon)"],
                [[t["arm"], t["vs"], t["n"], _f(t["mean_a"]), _f(t["mean_b"]), _f(t["mean_diff"]), _f(t["t"], 3),
                  _p(t["p_ttest"]), _p(t["p_wilcoxon"])] for t in res["tests_vs_baseline"]])
    else:
        d.p("No er_mixup arm in this study: no baseline comparison.")
    d.h(3, f"{res['gradmix'] or 'gradmix'} against every other arm")
    if res["gradmix"]:
        d.table(["arm", "against", "n", "mean arm", "mean other", "diff", "t", "p (t-test)", "p (Wilcoxon)"],
                [[t["arm"], t["vs"], t["n"], _f(t["mean_a"]), _f(t["mean_b"]), _f(t["mean_diff"]), _f(t["t"], 3),
                  _p(t["p_ttest"]), _p(t["p_wilcoxon"])] for t in res["tests_gradmix"]])
    else:
        d.p("No gradmix arm in this study.")
    d.h(2, "Forgetting and backward transfer")
    d.table(["arm", "forgetting", "BWT"],
            [[a["arm"], _ms(a["stats"]["forgetting"]), _ms(a["stats"]["bwt"])] for a in res["arms"]])
    d.h(2, "Accuracy matrices (mean over seeds)")
    d.p("Row i: after training task i; column j: test accuracy on task j's classes.")
    for rel, cap in figs["matrix"]:
        d.img(rel, cap)
    d.h(2, "Per-epoch seen-class accuracy")
    d.p("Test accuracy on the classes seen so far after every epoch (mean over seeds). The peak is taken "
        "within the last task (the seen classes no longer change there); drop = peak − final. "
        "Mean task drop: the same within every task, averaged (a U-shaped curve shows as a positive drop).")
    d.table(["arm", "epochs", "peak epoch", "peak acc", "final acc", "drop", "mean task drop"],
            [[a["arm"], len(a["curve"]["steps"]), a["curve"]["peak_epoch"] or "n/a", _f(a["curve"]["peak_acc"]),
              _f(a["curve"]["final_acc"]), _f(a["curve"]["drop"]), _f(a["curve"]["mean_task_drop"])]
             for a in res["arms"]])
    for rel, cap in figs["curve"]:
        d.img(rel, cap)
    d.h(2, "Wall time")
    d.p(f"Training time per trial (seconds, mean ± std); overhead = mean time of the arm / mean time of "
        f"{base or 'er_mixup'} at the same other factor values.")
    d.table(["arm", "method", "wall time (s)", f"overhead vs {base or 'er_mixup'}"],
            [[a["arm"], a["method"], _ms(a["stats"]["wall_time_s"], 2),
              _f(a["overhead_vs_baseline"], 2) + ("×" if _ok(a["overhead_vs_baseline"]) else "")]
             for a in res["arms"]])
    d.h(2, "Failed or unfinished trials")
    d.table(["run", "arm", "seed", "status", "error", "run id"],
            [[f["name"], f["arm"], f["seed"], f["status"], f["error"], f["run_id"]] for f in res["failed"]])
    d.h(2, "Runs")
    rows = []
    for a in res["arms"]:
        for s, rid in zip(a["seeds"], a["run_ids"]):
            rows.append([a["arm"], s, rid])
    d.table(["arm", "seed", "MLflow run id"], rows)
    (folder / "report.md").write_text("\n".join(d.md))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(res['study'])} report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(d.html) + "\n</body></html>\n")
    (folder / "report.html").write_text(page)


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def build_report(study: str, tracking_uri: str | None = None, out_dir: str | Path = "reports",
                 experiment: str | None = None, parent_run_id: str | None = None,
                 log_to_parent: bool = False) -> Path:
    """Read the study from MLflow and write OUT/STUDY/; returns that folder."""
    from mlflow import MlflowClient

    from .tracking import _http_limits, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    sr = load_study(client, study, experiment, parent_run_id)
    res = analyse(sr)
    folder = Path(out_dir) / _slug(study)
    fig_dir = folder / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # no stale figures from an earlier build
    folder.mkdir(parents=True, exist_ok=True)
    figs = _figures(res, fig_dir)
    _write(res, folder, figs, uri)
    (folder / "summary.json").write_text(json.dumps(_jsonable(res), indent=1, default=str))
    if log_to_parent:
        with _http_limits():
            client.log_artifacts(sr.parent_id, str(folder), artifact_path="report")
    return folder


def after_sweep(study, tracking_uri: str, out_dir: str = "reports"):
    """Build the study's report at the end of a sweep; returns the report folder or None."""
    from . import tracking

    info = tracking._study_info(study)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        folder = build_report(info["name"], uri, out_dir, experiment=info["experiment"],
                              parent_run_id=tracking.active_parent(uri, info["experiment"], info["name"]),
                              log_to_parent=True)
    except Exception as e:  # noqa: BLE001 - the sweep itself succeeded; say how to retry
        log.warning("could not build the report of study %s: %s. Build it later with: gradmix-tune report %s "
                    "--tracking-uri %s", info["name"], e, info["name"], uri)
        return None
    print(f"report: {folder / 'report.md'} and {folder / 'report.html'} (also logged to the study's MLflow run)")
    return folder


def cmd_report(args) -> int:
    from .config import ConfigError
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        folder = build_report(args.study, uri, args.out, experiment=args.experiment,
                              parent_run_id=args.parent_run, log_to_parent=args.log_to_parent)
    except ReportError as e:
        raise ConfigError(uri, None, str(e), "check the study name, --experiment and --tracking-uri "
                          "(or MLFLOW_TRACKING_URI)") from None
    res = json.loads((folder / "summary.json").read_text())
    print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}: {res['n_runs']} runs in "
          f"{len(res['arms'])} arms, {len(res['failed'])} failed or unfinished")
    return 0


def register(sub) -> None:
    """Add the `report` subcommand. Keep heavy imports inside the command function."""
    p = sub.add_parser("report", help="build reports/STUDY/ from the MLflow store",
                       description="Build OUT/STUDY/report.md and report.html (tables, paired tests, "
                                   "figures) from the study's runs in MLflow. Needs only the tracking "
                                   "store, not Ray's results.")
    p.add_argument("study", help="study name (the ablation's `name:`)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--out", default="reports", help="parent folder of the report (default: reports)")
    p.add_argument("--experiment", help="MLflow experiment (default: the study name; searched in all "
                                        "experiments when absent)")
    p.add_argument("--parent-run", metavar="RUN_ID", help="report on this parent run instead of the "
                                                         "study's latest")
    p.add_argument("--log-to-parent", action="store_true", help="also log the report to the parent run")
    p.set_defaults(func=cmd_report)
