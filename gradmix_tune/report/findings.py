"""The report's headline: the ablation's question (its header comment) and 2-6 sentences computed from the numbers.

Every sentence is a template filled with computed quantities: the best arm and its interval (by the
study's metric: in a searched study its validation metric chooses and the test score is stated
beside it, report/selection.py); each group of one-factor comparisons (the same two methods, or
the same factor level against its reference) with its differences, 95% t-intervals and
Holm-adjusted p-values, and "not
distinguishable from noise with N seeds" when no adjusted p is below 0.05; and what the seeds
allow (the smallest standardized effect 80% power reaches, the seeds the largest open
difference needs). A searched study (`search:`) has no comparisons: its findings are the best arm
and one sentence saying why no two arms are paired (`no_pairs_sentence`), its warning about the
evaluation's seeds, and no baseline. Nothing here reads MLflow or draws.
"""
from __future__ import annotations

import math

from ..results import LABELS
from ..tracking.store import question_of  # noqa: F401 - the sweep writes it to the parent run too
from ..values import is_finite
from .selection import choose

MAX_SENTENCES = 6
MAX_LISTED = 3  # comparisons listed one by one in a sentence; more are summarised
FEW_SEEDS = 5


def num(v, metric: str = "", signed: bool = False) -> str:
    """A metric value (3 decimals; wall time 1), '+' on differences; 'n/a' when not a number."""
    if not is_finite(v):
        return "n/a"
    nd = 1 if metric.endswith("wall_time_s") else 3
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def pval(p) -> str:
    """A p-value with two significant digits ('< 0.001' below that)."""
    if not is_finite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def seeds_text(n) -> str:
    if n == math.inf:
        return "no number of seeds (the mean difference is 0)"
    return f"{int(n)} seeds" if is_finite(n) else "n/a"


def clause(c: dict, metric: str, marks: bool = False) -> str:
    """'+0.012 (95% CI -0.030 to +0.054, Holm p = 0.84)' of one comparison (with its
    significance mark: for tables; sentences say it in words)."""
    d = num(c["mean_diff"], metric, True)
    if c["n"] == 0:
        return "no paired difference (the two arms share no seed with a value)"
    if c["n"] < 2:
        return f"{d} ({c['n']} paired seed: no interval, no test)"
    if not is_finite(c["p_holm"]):
        return f"{d} (95% CI {num(c['ci_low'], metric, True)} to {num(c['ci_high'], metric, True)}, no test: " \
               f"the {c['n']} per-seed differences are identical)"
    p = pval(c["p_holm"])
    return (f"{d} (95% CI {num(c['ci_low'], metric, True)} to {num(c['ci_high'], metric, True)}, "
            f"Holm p {p if p.startswith('<') else '= ' + p}{' ' + c['mark'] if marks and c['mark'] else ''})")


def _significant(c: dict, alpha: float) -> bool:
    return is_finite(c["p_holm"]) and c["p_holm"] < alpha


def _group_key(c: dict) -> tuple:
    if c["kind"] == "factor":
        return ("factor", c["factor"], str(c["level"]), str(c["ref_level"]))
    return (c["kind"], str(c["level"]), str(c["ref_level"]))


def _group_sentence(group: list[dict], res: dict) -> str:
    metric, alpha = res["test_metric"], res["power"]["alpha"]
    c0 = group[0]
    n = min(c["n"] for c in group)
    if c0["kind"] == "factor":
        head = f"{c0['factor']} {c0['level']} − {c0['ref_level']}"
    else:
        head = f"{c0['level']} − {c0['ref_level']}"
    sig = [c for c in group if _significant(c, alpha)]
    if len(group) == 1:
        where = f" at {c0['at']}" if c0["at"] else ""
        body = f"{head}{where} on {LABELS.get(metric, metric)}: {clause(c0, metric)}"
    elif len(group) <= MAX_LISTED:
        items = [clause(c, metric) + (f" at {c['at']}" if c["at"] else "") for c in group]
        body = f"{head} on {LABELS.get(metric, metric)}: " + "; ".join(items)
    else:
        diffs = [c["mean_diff"] for c in group if is_finite(c["mean_diff"])]
        big = max(group, key=lambda c: abs(c["mean_diff"]) if is_finite(c["mean_diff"]) else -1)
        body = (f"{head} on {LABELS.get(metric, metric)}, in {len(group)} settings of the other factors: mean "
                f"differences from {num(min(diffs, default=math.nan), metric, True)} to "
                f"{num(max(diffs, default=math.nan), metric, True)}, the largest {clause(big, metric)}"
                + (f" at {big['at']}" if big["at"] else ""))
    if all(c["n"] < 2 for c in group):
        return body + "." if len(group) == 1 else body + ": no test is possible with 1 seed."
    if not sig:
        return f"{body}: not distinguishable from noise with {n} seed{'' if n == 1 else 's'}."
    if len(sig) == len(group):
        return body + (": significant after Holm correction." if len(group) == 1 else
                       ": significant after Holm correction in every setting.")
    return body + f": significant after Holm correction only at {'; '.join(c['at'] for c in sig)}."


def ci_text(st: dict, metric: str) -> str:
    """' (95% CI a to b, n seeds)' of a describe() dict (' (1 seed)' with one)."""
    return (f" (95% CI {num(st['ci_low'], metric)} to {num(st['ci_high'], metric)}, {st['n']} seeds)" if st["n"] > 1
            else f" ({st['n']} seed)")


def _names(arms: list[dict]) -> str:
    shown = ", ".join(a["arm"] for a in arms[:MAX_LISTED])
    return shown + (f" and {len(arms) - MAX_LISTED} more" if len(arms) > MAX_LISTED else "")


def _best_sentence(res: dict) -> str:
    """The best arm by the metric that may choose (report/selection.py): the test metric of an
    ablation of fixed settings; the study's validation metric of a search, the test score beside it."""
    test, mode = res["test_metric"], res["mode"]
    ch = choose(res, res["arms"])
    by, best, word = ch["by"], ch["arm"], "higher" if mode == "max" else "lower"
    if by == test:
        if best is None:
            return f"No finished run has {LABELS.get(test, test)}."
        st = best["stats"][test]
        if len(ch["ranked"]) == 1:
            return f"One arm, {best['arm']}: {LABELS.get(test, test)} {num(st['mean'], test)}{ci_text(st, test)}."
        return (f"Best of {len(ch['ranked'])} arms by {LABELS.get(test, test)} ({word} is better): {best['arm']} "
                f"with {num(st['mean'], test)}{ci_text(st, test)}.")
    # a study that selects: the test split must not choose, so rank on `by` and state the test score
    tested = (f"its test {LABELS.get(test, test)} {num(best['stats'][test]['mean'], test)}"
              f"{ci_text(best['stats'][test], test)}" if best else "")
    if ch["rule"] == "metric":
        sc = best["stats"][by]
        head = (f"Best of {len(ch['ranked'])} arms by {by}, the study's metric ({word} is better; the test split "
                "does not choose)" if len(ch["ranked"]) > 1 else
                f"The one arm with a value of {by}, the study's metric")
        s = f"{head}: {best['arm']} with {by} {num(sc['mean'], by)}{ci_text(sc, by)}; {tested}."
    elif ch["rule"] == "tune_rank":
        s = (f"No tuning arm has a value of {by}, the study's metric; {best['arm']} re-runs the configuration it "
             f"ranked first in tuning: {tested}.")
    else:
        return f"No finished run has a value of {by}, the study's metric (the test split does not choose)."
    aside = []
    if ch["evaluation"] and ch["rule"] == "metric":
        one = len(ch["evaluation"]) == 1
        aside.append(f"{len(ch['evaluation'])} evaluation arm{'' if one else 's'} ({_names(ch['evaluation'])}; "
                     f"{'its test score is the one' if one else 'their test scores are the ones'} to report, "
                     "see Tuning vs evaluation)")
    if ch["empty"]:
        aside.append(f"{len(ch['empty'])} arm{'' if len(ch['empty']) == 1 else 's'} without a value of {by} "
                     "(stopped early, or ended without it)")
    return s + (f" Not ranked: {' and '.join(aside)}." if aside else "")


def _power_sentence(res: dict) -> str:
    pw, metric = res["power"], res["test_metric"]
    n = pw["n"]
    if n < 2:
        return (f"With {n} seed per arm no interval or test is possible: every difference above is a single "
                f"pair of runs.")
    fam = (f"at the level the smallest of the {pw['family_size']} Holm-corrected p-values must pass "
           f"(α = {pw['alpha']}/{pw['family_size']} = {pw['family_alpha']:.2g}, two-sided)"
           if pw["family_size"] > 1 else f"(α = {pw['alpha']}, two-sided)")
    s = (f"With {n} seeds a paired t-test {fam} has {pw['power']:.0%} power only for differences of at least "
         f"{pw['detectable_effect']:.2f} standard deviations of the per-seed difference")
    open_ = [c for c in res["comparisons"] if not _significant(c, pw["alpha"]) and is_finite(c["mean_diff"])
             and c["n"] >= 2 and c["mean_diff"] != 0]
    if res["comparisons"] and not open_:
        return s + "; every comparison with a non-zero difference is significant after Holm correction."
    if not open_:
        return s + "."
    big = max(open_, key=lambda c: abs(c["effect_size"]) if is_finite(c["effect_size"]) else math.inf)
    need = big["seeds_for_power"]
    where = f" at {big['at']}" if big["at"] else ""
    head = f"{big['factor']} {big['label']}" if big["kind"] == "factor" else big["label"]
    s += (f"; the largest standardized difference not yet significant, {head}{where} "
          f"({num(big['mean_diff'], metric, True)}, "
          f"{abs(big['effect_size']):.2f} SD), would need {seeds_text(need)} per arm")
    if is_finite(need) and need > n:
        s += f": {int(need) - n} more than this study's {n}"
    return s + "."


def _tuning_arms(res: dict) -> list[dict]:
    return [a for a in res["arms"] if not a.get("evaluation") and a["stats"][res["test_metric"]]["n"]]


def no_pairs_sentence(res: dict) -> str:
    """Why a searched study has no paired tests, in one sentence (its Findings and Comparisons)."""
    k = max((a["stats"][res["test_metric"]]["n"] for a in _tuning_arms(res)), default=1)
    each = "1 seed each" if k <= 1 else f"at most {k} seeds each"
    if any(a.get("evaluation") for a in res["arms"]):
        return ("No paired tests between arms: a search's tuning configurations are sampled points "
                f"({each}), not one-factor changes of a baseline, and each evaluation arm ran other seeds and "
                "another setup (`evaluate.set`) than the tuning run it repeats; the comparison that matters is "
                "the tuning score against the evaluation score with its 95% CI, under Tuning vs evaluation.")
    return ("No paired tests between arms: a search's tuning configurations are sampled points "
            f"({each}), not one-factor changes of a baseline, so no two arms are paired by seed; an `evaluate:` "
            "phase would re-run the chosen configuration on fresh seeds (see Tuning vs evaluation).")


def _searched_warning(res: dict) -> str:
    """A searched study's seeds warning: about its evaluation (the score to report), not its
    tuning configurations, which run 1 seed each by design."""
    m = res["test_metric"]
    ev = [a["stats"][m]["n"] for a in res["arms"] if a.get("evaluation") and a["stats"][m]["n"]]
    if ev:
        n = min(ev)
        if n == 1:
            return "Only 1 evaluation seed per chosen configuration: its test score has no interval."
        return (f"Only {n} evaluation seeds per chosen configuration (fewer than {FEW_SEEDS}): its t-interval is "
                "wide, its bootstrap interval too narrow (it can only resample these seeds) and the optimism gap "
                "rough." if n < FEW_SEEDS else "")
    if not _tuning_arms(res):
        return ""
    return ("No evaluation phase: the chosen configuration's test score comes from the tuning runs it was chosen "
            "on, and has no interval." if max(a["stats"][m]["n"] for a in _tuning_arms(res)) < 2 else
            "No evaluation phase: the chosen configuration's test score comes from the tuning runs it was chosen on.")


def findings(res: dict) -> dict:
    """{"question", "sentences" (2-6), "warning" (n < 5, else ""), "baseline" (which and why; "" in a
    searched study, which has none), "no_pairs" (why a searched study has no paired tests, else "")}."""
    if res.get("searched"):
        no_pairs = no_pairs_sentence(res)
        return {"question": res["question"], "sentences": [_best_sentence(res), no_pairs],
                "warning": _searched_warning(res), "baseline": "", "no_pairs": no_pairs}
    groups: dict[tuple, list] = {}
    for c in res["comparisons"]:
        groups.setdefault(_group_key(c), []).append(c)
    base = res["baseline"]

    def rank(item):
        (kind, *rest), _ = item
        gm = kind != "factor" and rest[0] in ("gradmix", "gradient")
        return (0 if gm else 1, {"baseline": 0, "gradmix": 1, "factor": 2}[kind])

    ordered = sorted(groups.items(), key=rank)
    sentences = [_best_sentence(res)]
    room = MAX_SENTENCES - 2
    shown = ordered if len(ordered) <= room else ordered[:room - 1]
    sentences += [_group_sentence(g, res) for _, g in shown]
    rest = [c for _, g in ordered[len(shown):] for c in g]
    if rest:
        sig = sum(_significant(c, res["power"]["alpha"]) for c in rest)
        sentences.append(f"Of the other {len(rest)} comparisons (of {len(res['comparisons'])}, listed under "
                         f"Comparisons), {sig} {'is' if sig == 1 else 'are'} significant after Holm correction.")
    if res["power"]["n"]:  # no arm with a value: the first sentence says so, there is no power to state
        sentences.append(_power_sentence(res))
    n = res["n_min"]
    warning = (f"Only {n} seeds per arm (fewer than {FEW_SEEDS}): t-intervals are wide, bootstrap intervals too "
               f"narrow (they can only resample these seeds) and p-values rough." if 1 < n < FEW_SEEDS else
               "Only 1 seed per arm: no interval and no test; every difference is a single pair of runs."
               if n == 1 else "")
    who = f"the arm {base['name']}" if base["kind"] == "arm" else f"the method {base['name']}"
    line = f"Baseline: {who} ({base['rule']})." + (f" Note: {base['warning']}." if base.get("warning") else "")
    return {"question": res["question"], "sentences": sentences, "warning": warning, "baseline": line,
            "no_pairs": ""}
