"""A study's runs -> every number of its report (`analyse`): arms, baseline, one-factor comparisons, config, curves.

Baseline: the ablation file's `baseline:` (an arm label or a method), else er_mixup when the study
sweeps methods and has it, else er, else the first arm; always among the arms that can be paired
(below), so never an arm without a value of the test metric (a trial a scheduler stopped early)
nor an evaluation arm. Its values are each factor's reference level (a factor the baseline does
not fix: its first level in the grid that such an arm has).

Arms that can be paired: those with a value of the test metric, evaluation arms (phase 2 of a
study with `evaluate:`, tagged phase=evaluate) aside: an evaluation arm has the factor values of
the tuning arm it re-runs but other seeds and the `evaluate.set` overrides, so it is paired with
nothing. A searched study (`search:`) has no baseline and no comparisons at all: its tuning
configurations are points a search sampled (1 seed each), not one-factor variations; its report
compares tuning and evaluation scores instead (report/tuning.py).

Comparisons, on the study metric, only between arms that differ in exactly one factor:
every arm against the arm with one of its factors set back to the reference level (each method
against the baseline method at the same values of the other factors; each level of another
factor against its reference level, per method), and GradMix against every other method at the
same values of the other factors. The family is Holm-corrected as a whole; its power figures
are at the family's strictest level, alpha/m (what the smallest p must pass).
"""
from __future__ import annotations

import json
import math

from ..metrics import curve_peak
from ..results import ACCURACY_METRICS, METRICS, SUMMARY_KEYS
from ..values import is_finite
from .findings import findings, question_of
from .runs import StudyRuns, jkey
from .selection import choose
from .stats import ALPHA, POWER, describe, detectable_effect, family_alpha, holm, mark, paired_test, power_fields

ER_MIXUP = ("er_mixup", "random")  # ER+Mixup by preset name, or by selection name
ER = ("er", "none")
GRADMIX = ("gradmix", "gradient")
NAN = float("nan")


def sort_value(v):
    """Sort key of a factor value: numbers by value, before anything else by its text."""
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def fmt_factors(others) -> str:
    """{key: value} or ((key, value), ...) -> "key=value, ..." ("" for none)."""
    items = others.items() if isinstance(others, dict) else others
    return ", ".join(f"{k}={v}" for k, v in items)


def _yaml(text: str) -> dict:
    import yaml

    try:
        d = yaml.safe_load(text) if text else {}
    except yaml.YAMLError:
        return {}
    return d if isinstance(d, dict) else {}


def _param(s: str):
    """A param string as MLflow keeps it -> the config value (lists, numbers, booleans, None)."""
    import yaml

    if s is None:
        return "(not logged)"  # a run without this param (e.g. logged by an older version)
    if s == "None":
        return None
    if s == "":
        return ""
    try:
        return yaml.safe_load(s)
    except yaml.YAMLError:
        return s


def _study_metric(tags: dict) -> tuple[str, str, str]:
    metric = tags.get("metric") or "final_avg_acc"
    test = metric if metric in METRICS else metric[4:] if metric[4:] in METRICS else "final_avg_acc"
    return metric, test, tags.get("mode") or METRICS.get(test, "max")


def _levels(arms: list, grid: dict) -> tuple[list[str], dict[str, list]]:
    keys = [k for k in grid if any(k in a["factors"] for a in arms)]
    keys += sorted({k for a in arms for k in a["factors"]} - set(keys))
    levels = {}
    for k in keys:
        seen = {jkey(a["factors"][k]): a["factors"][k] for a in arms if k in a["factors"]}
        order = [v for v in grid.get(k, []) if jkey(v) in seen]
        order += sorted((v for s, v in seen.items() if s not in {jkey(o) for o in order}), key=sort_value)
        levels[k] = order
    return keys, levels


def _names_method(arms: list, key: str) -> bool:
    """Each level of factor `key` goes with one method, and different levels with different methods."""
    by_level: dict[str, set] = {}
    for a in arms:
        by_level.setdefault(jkey(a["factors"].get(key)), set()).add(a["method"])
    methods = [m for ms in by_level.values() for m in ms]
    return all(len(ms) == 1 for ms in by_level.values()) and len(set(methods)) == len(methods)


def _searched(raw: dict, runs: list, grid: dict) -> bool:
    """A study whose arms a search sampled (`search:` in its ablation file; without the file, tuning
    runs tagged phase=tune and no grid)."""
    if raw:
        return raw.get("search") is not None
    return not grid and any(tr.tags.get("phase") == "tune" for tr in runs)


NO_BASELINE = {"kind": "none", "name": "", "ref": {}, "method": "", "warning": None,
               "rule": "none: a searched study's arms are not compared with one another"}


def _baseline(raw: dict, arms: list, method_key: str | None, keys: list, levels: dict,
              everyone: list | None = None, metric: str = "") -> dict:
    """The study's baseline among `arms` (those that can be paired) and the reference level of every
    factor (see the module docstring); `everyone`: all the study's arms, to say why a named one is not
    taken."""
    methods = {a["method"] for a in arms}
    named, warning, out = raw.get("baseline"), None, None
    if named is not None:
        arm = next((a for a in arms if a["arm"] == str(named)), None)
        if arm is not None:
            out = {"kind": "arm", "name": arm["arm"], "ref": dict(arm["factors"]),
                   "rule": "named by the ablation file (`baseline:`)"}
        elif str(named) in methods and method_key:
            ref_value = next(a["factors"][method_key] for a in arms if a["method"] == str(named))
            out = {"kind": "method", "name": str(named), "ref": {method_key: ref_value},
                   "rule": "named by the ablation file (`baseline:`)"}
        elif any(a["arm"] == str(named) or a["method"] == str(named) for a in everyone or []):
            warning = (f"the ablation file's baseline {named!r} has no finished run with a value of {metric} that "
                       f"can be paired (stopped early, or an evaluation arm); the default rule chose the baseline "
                       f"instead")
        else:
            warning = (f"the ablation file's baseline {named!r} is neither an arm nor a swept method of this "
                       f"study; the default rule chose the baseline instead")
    if out is None:
        rule = "er_mixup when the study sweeps methods and has it, else er, else the first arm"
        hit = next((m for group in (ER_MIXUP, ER) for m in group if m in methods), None) if method_key else None
        if hit is not None:
            ref_value = next(a["factors"][method_key] for a in arms if a["method"] == hit)
            out = {"kind": "method", "name": hit, "ref": {method_key: ref_value}, "rule": rule}
        elif arms:
            out = {"kind": "arm", "name": arms[0]["arm"], "ref": dict(arms[0]["factors"]), "rule": rule}
        else:
            out = {"kind": "arm", "name": "", "ref": {}, "rule": rule}
    for k in keys:  # a factor the baseline does not fix: its first level that an arm here has
        have = {jkey(a["factors"][k]) for a in arms if k in a["factors"]}
        out["ref"].setdefault(k, next((v for v in levels[k] if jkey(v) in have), levels[k][0]))
    out["warning"] = warning
    out["method"] = out["name"] if out["kind"] == "method" else \
        next((a["method"] for a in arms if a["arm"] == out["name"]), "")
    return out


def _comparisons(arms: list, keys: list, levels: dict, method_key: str | None, base: dict,
                 metric: str, mode: str) -> list[dict]:
    by_factors = {jkey(sorted(a["factors"].items())): a for a in arms}
    ref = base["ref"]
    found: dict[tuple, dict] = {}

    def add(a, b, key, kind):
        if (b["arm"], a["arm"]) in found or (a["arm"], b["arm"]) in found:
            return
        at = {k: v for k, v in a["factors"].items() if k != key}
        r = paired_test(a["values"][metric], b["values"][metric], metric, mode)
        found[(a["arm"], b["arm"])] = {"arm": a["arm"], "vs": b["arm"], "kind": kind, "factor": key,
                                       "level": a["factors"][key], "ref_level": b["factors"][key],
                                       "label": f"{a['factors'][key]} − {b['factors'][key]}",
                                       "at": fmt_factors(at), "at_values": at, **r}

    for kind in ("baseline", "factor"):
        for a in arms:
            for k in keys:
                if (k == method_key) != (kind == "baseline") or k not in a["factors"]:
                    continue
                if jkey(a["factors"][k]) == jkey(ref[k]):
                    continue
                b = by_factors.get(jkey(sorted({**a["factors"], k: ref[k]}.items())))
                if b is not None:
                    add(a, b, k, "baseline" if k == method_key else "factor")
    gm = next((m for m in GRADMIX if any(a["method"] == m for a in arms)), None)
    if method_key and gm and gm != base["method"]:
        for a in (x for x in arms if x["method"] == gm):
            for b in arms:
                if b["method"] not in (gm, base["method"]) and \
                        all(jkey(b["factors"].get(k)) == jkey(v) for k, v in a["factors"].items() if k != method_key):
                    add(a, b, method_key, "gradmix")
    order = {"baseline": 0, "gradmix": 1, "factor": 2}
    kpos = {k: i for i, k in enumerate(keys)}
    out = sorted(found.values(), key=lambda c: (order[c["kind"]], kpos.get(c["factor"], 0),
                                                tuple(sort_value(v) for v in c["at_values"].values()),
                                                [jkey(x) for x in levels.get(c["factor"], [])].index(jkey(c["level"]))
                                                if c["factor"] in levels else 0))
    m = sum(is_finite(c["p"]) for c in out)
    for c, p in zip(out, holm([c["p"] for c in out])):  # power at the Holm family's strictest level
        c["p_holm"], c["mark"] = p, mark(p)
        c.update(power_fields(c["mean_diff"], c["sd_diff"], c["n"], family_alpha(m)))
        c["seeds_short"] = max(0, int(c["seeds_for_power"]) - c["n"]) if is_finite(c["seeds_for_power"]) else \
            (math.inf if c["seeds_for_power"] == math.inf else NAN)
    return out


def _config(sr: StudyRuns, arms: list, ref_arm: dict | None, ref_rule: str = "") -> dict:
    """The params every run shares (as a nested config) and, per arm, the values it sets of the
    params that differ between arms, relative to `ref_arm` (`ref_rule`: why that arm, "" for the
    baseline's)."""
    runs = [tr for a in arms for tr in a["runs"].values()]
    keys = sorted({k for tr in runs for k in tr.params} - {"seed"})
    shared, varying = {}, []
    for k in keys:
        vals = {tr.params.get(k) for tr in runs}
        if len(vals) == 1 and None not in vals:
            shared[k] = _param(next(iter(vals)))
        else:
            varying.append(k)
    per_arm = {}
    for a in arms:
        vals = {}
        for k in varying:
            got = {tr.params.get(k) for tr in a["runs"].values()}
            vals[k] = _param(next(iter(got))) if len(got) == 1 else "(differs by seed)"
        per_arm[a["arm"]] = vals
    nested: dict = {}
    for k, v in shared.items():
        d = nested
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    ref_vals = per_arm.get(ref_arm["arm"], {}) if ref_arm else {}
    changes = {arm: (vals if ref_arm and arm == ref_arm["arm"] else
                     {k: v for k, v in vals.items() if jkey(v) != jkey(ref_vals.get(k))})
               for arm, vals in per_arm.items()}
    return {"shared": nested, "varying": varying, "reference_arm": ref_arm["arm"] if ref_arm else "",
            "reference_rule": ref_rule if ref_arm else "", "changes": changes}


def analyse(sr: StudyRuns) -> dict:
    """Every number of the report, from the runs (NaN where a number cannot be computed)."""
    tags = sr.parent_tags
    metric, test_metric, mode = _study_metric(tags)
    raw = _yaml(sr.ablation_text)
    try:
        grid = json.loads(tags.get("grid") or "{}") or raw.get("grid") or {}
    except ValueError:
        grid = raw.get("grid") or {}
    grid = grid if isinstance(grid, dict) else {}
    groups: dict[str, dict] = {}
    for tr in sr.runs:
        a = groups.setdefault(tr.arm, {"arm": tr.arm, "method": tr.method, "factors": dict(tr.factors), "runs": {},
                                       "evaluation": False})
        a["runs"][jkey(tr.seed)] = tr
        a["evaluation"] |= tr.tags.get("phase") == "evaluate"  # phase 2: other seeds, other setup
    arms = list(groups.values())
    keys, levels = _levels(arms, grid)
    pos = {k: {jkey(v): i for i, v in enumerate(levels[k])} for k in keys}
    arms.sort(key=lambda a: (tuple(pos[k].get(jkey(a["factors"].get(k)), -1) for k in keys), a["arm"]))
    distinct = {k: {jkey(a["factors"].get(k)) for a in arms} for k in keys}
    # the factor that names the method: `method` itself, or one whose levels each give one method
    # (a grid over mixing.selection: none -> er, random -> er_mixup, gradient -> gradmix)
    method_key = next((k for k in keys if len(distinct[k]) > 1 and
                       all(str(a["factors"].get(k)) == a["method"] for a in arms)), None) or \
        next((k for k in keys if k.startswith(("mixing.", "augment.")) and len(distinct[k]) > 1
              and _names_method(arms, k)), None)
    kept = set(SUMMARY_KEYS) | {test_metric, metric}  # the study's metric too: what may pick a best arm
    for a in arms:
        a["values"] = {m: {s: tr.metrics.get(m) for s, tr in a["runs"].items()} for m in kept}
        a["has_value"] = any(is_finite(v) for v in a["values"][test_metric].values())
    searched = _searched(raw, sr.runs, grid)
    # the arms one-factor comparisons may pair (module docstring): none in a searched study
    paired = [] if searched else [a for a in arms if a["has_value"] and not a["evaluation"]]
    if searched:
        base = {**NO_BASELINE, "ref": {}}
        comparisons = []
    else:
        base = _baseline(raw, paired, method_key, keys, levels, arms, test_metric)
        comparisons = _comparisons(paired, keys, levels, method_key, base, test_metric, mode)
    ref_arm = next((a for a in paired if all(jkey(a["factors"].get(k)) == jkey(v) for k, v in base["ref"].items())),
                   paired[0] if paired else None)

    def same_others(a, b):
        return all(jkey(b["factors"].get(k)) == jkey(v) for k, v in a["factors"].items() if k != method_key)

    arm_rows = []
    for a in arms:
        stats = {k: describe(list(a["values"][k].values()), k) for k in kept}
        mix = next((b for b in arms if b["method"] in ER_MIXUP and b["evaluation"] == a["evaluation"]
                    and same_others(a, b)), None) if method_key else None  # of the same phase: same setup
        overhead = NAN
        if mix is not None:
            wb = describe(list(mix["values"]["wall_time_s"].values()))["mean"]
            overhead = stats["wall_time_s"]["mean"] / wb if is_finite(wb) and wb > 0 else NAN
        runs = sorted(a["runs"].values(), key=lambda tr: jkey(tr.seed))
        arm_rows.append({"arm": a["arm"], "method": a["method"], "factors": a["factors"],
                         "others": [[k, v] for k, v in a["factors"].items() if k != method_key],
                         "seeds": [tr.seed for tr in runs], "run_ids": [tr.run_id for tr in runs],
                         "per_seed": [tr.metrics.get(test_metric) for tr in runs],
                         "is_reference": ref_arm is not None and a["arm"] == ref_arm["arm"],
                         "evaluation": a["evaluation"], "has_value": a["has_value"],
                         # an evaluation arm's rank in the tuning that chose it (report/selection.py)
                         "tune_rank": runs[0].tags.get("tune_rank") if runs[0].tags.get("phase") == "evaluate"
                         else None,
                         "stats": stats, "overhead_vs_er_mixup": overhead, "curve": _arm_curve(runs),
                         "epochs": max((tr.epochs_per_task or 1 for tr in runs), default=1),
                         "accuracy_matrix": _mean_matrix([tr.acc_matrix for tr in runs])})
    # arms without a value (trials a scheduler stopped early) have no seeds to count: not 0 per arm
    n_min = min((r["stats"][test_metric]["n"] for r in arm_rows if r["stats"][test_metric]["n"]), default=0)
    m = sum(is_finite(c["p"]) for c in comparisons)
    cfg_ref, cfg_rule = ref_arm, ""
    if searched:  # no baseline: the configuration table is relative to the arm the study's metric chooses
        ch = choose({"metric": metric, "test_metric": test_metric, "mode": mode}, arm_rows)
        pick = ch["arm"] or next((r for r in arm_rows if r["has_value"]), None)
        cfg_ref = groups[pick["arm"]] if pick else None
        cfg_rule = (f"the best arm by {ch['by']}" if ch["rule"] == "metric" else
                    "the evaluation of the configuration ranked first in tuning" if ch["rule"] == "tune_rank" else
                    "the first arm with a value")
    failed = [{"name": tr.name, "arm": tr.arm, "seed": tr.seed, "status": tr.status, "error": tr.error,
               "run_id": tr.run_id, "trial_id": tr.trial_id} for tr in sr.failed]
    res = {"study": sr.study, "experiment": sr.experiment, "experiment_id": sr.experiment_id,
           "parent_run_id": sr.parent_id, "metric": metric, "mode": mode, "test_metric": test_metric,
           "question": question_of(sr.ablation_text, str(raw.get("description") or "")),
           "ablation": tags.get("ablation", ""), "ablation_text": sr.ablation_text,
           "git_commit": tags.get("git_commit", ""), "command": tags.get("command", ""),
           "method_key": method_key, "factor_keys": keys,
           "factors": [{"key": k, "levels": levels[k], "reference": base["ref"].get(k)} for k in keys],
           "baseline": base, "methods": list(dict.fromkeys(a["method"] for a in arms)),
           "n_runs": len(sr.runs), "n_min": n_min, "seeds": sorted({s for a in arm_rows for s in a["seeds"]}, key=jkey),
           "arms": arm_rows, "comparisons": comparisons,
           "power": {"alpha": ALPHA, "family_size": m, "family_alpha": family_alpha(m), "power": POWER, "n": n_min,
                     "detectable_effect": detectable_effect(n_min, family_alpha(m))},
           "epochs": max((a["epochs"] for a in arm_rows), default=1),
           "config": _config(sr, arms, cfg_ref, cfg_rule), "failed": failed, "searched": searched,
           "accuracy_metrics": list(ACCURACY_METRICS)}
    res["findings"] = findings(res)
    return res


def _mean_matrix(mats: list[list[list]]) -> list[list]:
    mats = [m for m in mats if m]
    if not mats:
        return []
    t = max(len(m) for m in mats)
    out = []
    for i in range(t):
        row = []
        for j in range(i + 1):
            vals = [m[i][j] for m in mats if i < len(m) and j < len(m[i]) and is_finite(m[i][j])]
            row.append(sum(vals) / len(vals) if vals else None)
        out.append(row)
    return out


def _arm_curve(runs: list) -> dict:
    by_step: dict[int, list[float]] = {}
    ept, task_of = None, {}
    for tr in runs:
        ept = ept or tr.epochs_per_task
        for s, t in tr.task_of.items():
            task_of.setdefault(s, t)
        for s, v in tr.curve:
            if is_finite(v):
                by_step.setdefault(int(s), []).append(v)
    steps = sorted(by_step)
    mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    tmap = task_of if all(s in task_of for s in steps) else None
    return {"steps": steps, "mean_seen_acc": mean, "epochs_per_task": ept,
            "task_of": [tmap[s] for s in steps] if tmap else None, **curve_peak(steps, mean, ept, tmap)}
