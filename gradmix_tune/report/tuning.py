"""The "Tuning vs evaluation" section of a study that selects hyperparameters (sweep/protocol.py), from its MLflow runs.

It appears when the study's runs carry `phase` tags: tuning runs (phase=tune) and, with an
`evaluate:` section, evaluation runs (phase=evaluate, tune_rank, tune_arm). Per chosen
configuration: its values, the best validation score in tuning (the study's metric), the tuning
run's own test score, the evaluation's test score over the fresh seeds (mean ± std, 95% t-interval)
and the optimism gap = tuning test score − evaluation mean: how much reporting the tuning run's
test score (tuning and reporting on the same stream) would have overstated the result (Cha & Cho
2024). A study that chose on a test metric (`allow_test_metric: true`) is flagged in red. Phase 1
is counted in configurations, each once: those with a value of the study's metric (the only ones
ranked), those a scheduler stopped early (finished runs that never logged it) and the failed.
"""
from __future__ import annotations

from ..results import LABELS, is_test_metric
from ..tracking.store import ALLOW_TEST_METRIC
from ..values import is_finite
from .document import OPTIONAL_SECTIONS, Context, Doc, _f, inline_html, interval, ms
from .runs import jkey
from .stats import describe

NAN = float("nan")
TOP_TUNE_ROWS = 10  # the tuning trials listed, best first
_NOT_A_CHANGE = {"seed"}  # params that differ between every run anyway


def _num(tr, metric: str) -> float:
    v = tr.metrics.get(metric)
    return float(v) if is_finite(v) else NAN


def _mean(vals: list) -> float:
    vals = [v for v in vals if is_finite(v)]
    return sum(vals) / len(vals) if vals else NAN


def _danger(d: Doc, text: str) -> None:
    """A warning line in red (markdown: bold with a marker)."""
    d.md += [f"**⚠ {text}**", ""]
    d.html.append("<p style='color:#a40000;background:#fdecea;border-left:4px solid #c00;padding:0.4em 1em;"
                  f"font-weight:600'>&#9888; {inline_html(text)}</p>")


def _changes(tune_params: dict, ev_params: dict) -> dict:
    """What an evaluation run sets differently from the tuning run it came from (MLflow params)."""
    keys = sorted((set(tune_params) | set(ev_params)) - _NOT_A_CHANGE)
    return {k: (tune_params.get(k, "-"), ev_params.get(k, "-")) for k in keys if tune_params.get(k) != ev_params.get(k)}


def _ablation(ctx: Context) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(ctx.res.get("ablation_text") or "") or {}
    except yaml.YAMLError:
        raw = {}
    return raw if isinstance(raw, dict) else {}


def _allowed_test(ctx: Context) -> bool:
    tags = getattr(ctx.runs, "parent_tags", {}) or {}
    if str(tags.get(ALLOW_TEST_METRIC, "")).lower() == "true":
        return True
    return _ablation(ctx).get("allow_test_metric") is True


def _scheduler(ctx: Context) -> str:
    """The ablation file's scheduler type (fifo when it names none)."""
    sched = _ablation(ctx).get("scheduler") or "fifo"
    return str(sched.get("type", "fifo") if isinstance(sched, dict) else sched).lower()


def _configurations(tune: list, failed: list, metric: str) -> dict:
    """The tuning configurations (arms) by outcome: "ended" (a run with a value of the metric: the
    only ones ranked), "stopped" (finished runs that never reached the last task, so never logged
    the metric: a scheduler stopped them), "failed" (the rest: failed or unfinished runs, or finished
    ones whose metric is not a number); "no_value" and "unfinished" count the last two kinds among
    the failed."""
    runs: dict[str, list] = {}
    for tr in tune + failed:
        runs.setdefault(tr.arm, []).append(tr)
    out = {"ended": [], "stopped": [], "failed": [], "no_value": 0, "unfinished": 0}
    for arm, trs in runs.items():
        done = [tr for tr in trs if tr.status == "FINISHED"]
        if any(is_finite(tr.metrics.get(metric)) for tr in done):
            out["ended"].append(arm)
        elif any(metric not in tr.metrics for tr in done):
            out["stopped"].append(arm)
        else:
            out["failed"].append(arm)
            out["no_value"] += bool(done)
            out["unfinished"] += not done and all(tr.status in ("KILLED", "RUNNING", "SCHEDULED") for tr in trs)
    return out


def analyse_tuning(ctx: Context) -> dict | None:
    """The numbers of the section (None when the study has no phase tags)."""
    sr = ctx.runs
    if sr is None:
        return None
    finished, others = list(sr.runs), list(sr.failed)
    if not any(tr.tags.get("phase") for tr in finished + others):
        return None
    metric, mode, test = ctx.res["metric"], ctx.res["mode"], ctx.res["test_metric"]
    tune = [tr for tr in finished if tr.tags.get("phase") == "tune"]
    tune_failed = [tr for tr in others if tr.tags.get("phase") == "tune"]
    ev = [tr for tr in finished if tr.tags.get("phase") == "evaluate"]
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted((tr for tr in tune if is_finite(tr.metrics.get(metric))),
                    key=lambda tr: (sign * _num(tr, metric), tr.start_time))
    chosen = []
    by_rank: dict[str, list] = {}
    for tr in ev:
        by_rank.setdefault(tr.tags.get("tune_rank", "1"), []).append(tr)
    for rank in sorted(by_rank, key=lambda r: int(r) if str(r).isdigit() else 0):
        runs = sorted(by_rank[rank], key=lambda tr: jkey(tr.seed))
        arm = runs[0].tags.get("tune_arm", "")
        src = [tr for tr in tune if tr.arm == arm]
        tune_test = _mean([_num(tr, test) for tr in src])
        st = describe([_num(tr, test) for tr in runs], test)
        gap = tune_test - st["mean"] if is_finite(tune_test) and is_finite(st["mean"]) else NAN
        gap_lo = tune_test - st["ci_high"] if is_finite(gap) and is_finite(st["ci_high"]) else NAN
        gap_hi = tune_test - st["ci_low"] if is_finite(gap) and is_finite(st["ci_low"]) else NAN
        chosen.append({"rank": rank, "arm": arm, "eval_arm": runs[0].arm, "factors": runs[0].factors,
                       "tune_runs": src, "tune_score": _mean([_num(tr, metric) for tr in src]),
                       "tune_test": tune_test, "eval": st, "eval_runs": runs, "gap": gap,
                       "gap_low": gap_lo, "gap_high": gap_hi,
                       "changes": _changes(src[0].params, runs[0].params) if src else {}})
    if not chosen and ranked:  # a search without an evaluation phase: its best trial, as tuning saw it
        best = ranked[0]
        chosen.append({"rank": "1", "arm": best.arm, "eval_arm": "", "factors": best.factors, "tune_runs": [best],
                       "tune_score": _num(best, metric), "tune_test": _num(best, test), "eval": None,
                       "eval_runs": [], "gap": NAN, "gap_low": NAN, "gap_high": NAN, "changes": {}})
    max_tasks = {tr.params.get("train.max_tasks", "0") for tr in tune}
    tasks = {tr.params.get("data.tasks", "?") for tr in tune}
    pairs = [(_num(tr, metric), _num(tr, test)) for tr in ranked if is_finite(_num(tr, test))]
    return {"metric": metric, "mode": mode, "test": test, "tune": tune, "ranked": ranked, "chosen": chosen,
            "configs": _configurations(tune, tune_failed, metric), "n_tune_runs": len(tune) + len(tune_failed),
            "scheduler": _scheduler(ctx), "n_pairs": len(pairs), "n_tune_other": len(tune_failed),
            "n_eval_other": sum(tr.tags.get("phase") == "evaluate" for tr in others),
            "val_fraction": sorted({tr.params.get("data.val_fraction", "?") for tr in tune}),
            "first_tasks": sorted(m for m in max_tasks if m not in ("0", "", None)), "tasks": sorted(tasks),
            "rank_corr": _spearman(pairs), "allow_test": _allowed_test(ctx) or is_test_metric(metric)}


def _spearman(pairs: list) -> float:
    if len(pairs) < 3:
        return NAN
    from scipy import stats

    r = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(r) if is_finite(r) else NAN


def _values(factors: dict) -> str:
    return ", ".join(f"{k}: {_f(v, 4) if isinstance(v, float) else v}" for k, v in factors.items()) or "(the base)"


def _counts(t: dict) -> str:
    """'30 configurations tried: 7 ran to the end, 23 stopped early by ASHA, 0 failed; the 7 with a
    value of `val_final_avg_acc` are ranked' (each configuration counted once, by its best outcome)."""
    c, m = t["configs"], t["metric"]
    n = len(c["ended"]) + len(c["stopped"]) + len(c["failed"])
    runs = f" ({t['n_tune_runs']} runs)" if t["n_tune_runs"] != n else ""
    stopped = (f"{len(c['stopped'])} stopped early by ASHA, " if t["scheduler"] == "asha" else
               f"{len(c['stopped'])} stopped before their last task, " if c["stopped"] else "")
    why = [f"{c['no_value']} finished without a number for `{m}`"] if c["no_value"] else []
    why += [f"{c['unfinished']} did not finish (killed or still running)"] if c["unfinished"] else []
    failed = f"{len(c['failed'])} failed" + (f" ({'; '.join(why)})" if why else "")
    k = len(c["ended"])
    return (f"{n} configuration{'' if n == 1 else 's'} tried{runs}: {k} ran to the end, {stopped}{failed}"
            + (f"; only the {k} with a value of `{m}` are ranked" if k < n else ""))


def tuning_section(d: Doc, ctx: Context) -> None:
    t = analyse_tuning(ctx)
    if t is None:
        return
    m, test = t["metric"], t["test"]
    lab = LABELS.get(test, test)
    d.h(2, "Tuning vs evaluation")
    if t["allow_test"]:
        _danger(d, f"The configuration was chosen on `{m}`, a metric measured on the TEST split "
                   "(`allow_test_metric: true`): every score of the chosen configuration on that split is "
                   "optimistic. Tune on the val_ twin to report it honestly.")
    first = (f" Tuning trials trained the first {', '.join(t['first_tasks'])} of {', '.join(t['tasks'])} tasks "
             "(`search.tasks`, Lee et al. 2024): their test score covers those tasks only."
             if t["first_tasks"] else "")
    d.p(f"Phase 1 (tuning): {_counts(t)}; the choice is by `{m}` ({t['mode']}) on the held-out part of each "
        f"task's training data (data.val_fraction {', '.join(t['val_fraction'])}).{first} Phase 2 (evaluation): "
        "the chosen "
        "configuration re-run on fresh seeds (and the `evaluate.set` overrides), on the whole stream and the "
        f"full training data; its test score is the one to report. Optimism gap = the chosen tuning run's "
        f"{lab} − the evaluation's mean: how much tuning and reporting on the same stream overstates it "
        "(Cha & Cho 2024); its interval is the evaluation's 95% t-interval, the tuning score held fixed. "
        "(The sections above compare every run on the test split, tuning runs included: the number to "
        "report for the chosen configuration is its evaluation's.)"
        + (f" {t['n_eval_other']} evaluation run{'' if t['n_eval_other'] == 1 else 's'} failed or did not finish "
           "(under Failed or unfinished trials)." if t["n_eval_other"] else ""))
    rows = []
    for c in t["chosen"]:
        st = c["eval"]
        links = [ctx.run_link(tr.run_id, tr.name or tr.run_id) for tr in c["tune_runs"][:3]]
        rows.append([c["rank"], _values(c["factors"]), links[0] if len(links) == 1 else ", ".join(
            tr.name for tr in c["tune_runs"]) or "-", _f(c["tune_score"]), _f(c["tune_test"]),
            ms(st) if st else "n/a", interval(st["ci_low"], st["ci_high"]) if st else "n/a",
            st["n"] if st else 0, _f(c["gap"]), interval(c["gap_low"], c["gap_high"])])
    d.table(["rank", "chosen values", "tuning run", f"best {m} (tuning)", f"{test} (tuning)",
             f"{test} (evaluation, mean ± std)", "95% CI", "seeds", "optimism gap", "gap 95% CI"], rows)
    for c in t["chosen"]:
        st = c["eval"]
        if st is None:
            d.p("No evaluation phase: the best tuning run's test score above was chosen on the same stream. Add "
                "`evaluate: {seeds: 3, set: {data.class_order_seed: 1}}` to measure the choice on fresh seeds "
                "and another class order.")
            continue
        if is_finite(c["gap"]):
            word = "overstated" if (c["gap"] > 0) == (t["mode"] == "max") else "understated"
            d.p(f"Configuration {c['rank']}: tuning reported {lab} {_f(c['tune_test'])} for it; on "
                f"{st['n']} fresh seeds the evaluation gives {ms(st)} "
                f"({interval(st['ci_low'], st['ci_high'])}), so same-stream tuning {word} it by "
                f"{abs(c['gap']):.4f}.")
        if c["changes"]:
            d.p("The evaluation runs differ from the tuning run in: " + ", ".join(
                f"`{k}` {a} → {b}" for k, (a, b) in c["changes"].items()) + ".")
    if t["ranked"]:
        corr = t["rank_corr"]
        d.p(f"The best tuning runs by `{m}` and their {lab}"
            + (f" (Spearman rank correlation of the two over the {t['n_pairs']} tuning runs with both: "
               f"{corr:.2f})" if is_finite(corr) else "") + ":")
        d.table(["run", "seed", m, test], [[ctx.run_link(tr.run_id, tr.arm), tr.seed, _f(_num(tr, m)),
                                            _f(_num(tr, test))] for tr in t["ranked"][:TOP_TUNE_ROWS]])


if tuning_section not in OPTIONAL_SECTIONS:  # registered when report/build.py imports this module
    OPTIONAL_SECTIONS.append(tuning_section)
