"""Several studies that share arms in one report (`build_comparison`): the table a paper needs, per study, aggregated.

Each study is analysed as on its own (analysis.analyse). Rows are the arms the studies share (by
arm label); per study: mean ± std of its metric, the best in bold (by the metric that may choose,
report/selection.py: a searched study's validation metric, not the test score shown), and the
Holm mark of the arm's paired difference from the common baseline (the first study's baseline
method at the same other factor values; Holm over every such row of every study). Aggregate over
studies (rliable): the mean of the per-study means and the mean probability of improvement over
the baseline, each with a stratified bootstrap interval (seeds resampled within each study). When
the first study is a searched one (it has no baseline: report/analysis.py) nothing is paired: the
table sets the shared arms' scores side by side.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import figures
from ..results import LABELS
from ..tracking.store import resolve_tracking_uri
from ..values import is_finite
from .analysis import analyse
from .build import jsonable
from .charts import PALETTE, slug
from .document import Bold, Doc, Link, interval, ms
from .findings import ci_text, clause, num, pval
from .selection import choose
from .runs import ReportError, jkey, load_study, run_url
from .stats import holm, mark, metric_range, paired_test, stratified_bootstrap


def _per_seed(a: dict) -> dict:
    return {jkey(s): v for s, v in zip(a["seeds"], a["per_seed"]) if is_finite(v)}


def _paired_better(a: dict, b: dict, mode: str) -> list[float]:
    """Per common seed: 1 when arm a is better than b, 0.5 on a tie, else 0."""
    va, vb = _per_seed(a), _per_seed(b)
    sign = -1.0 if mode == "min" else 1.0
    return [1.0 if sign * (va[s] - vb[s]) > 0 else 0.5 if va[s] == vb[s] else 0.0 for s in va if s in vb]


def compare(results: list[dict]) -> dict:
    """The numbers of the comparison report from analysed studies. The common baseline is the
    first study's baseline method (or arm); every shared arm is compared with the shared arm of
    that method at the same other factor values, in every study."""
    names = [r["study"] for r in results]
    arms_of = [{a["arm"]: a for a in r["arms"]} for r in results]
    shared = [a["arm"] for a in results[0]["arms"] if all(a["arm"] in m for m in arms_of)]
    if not shared:
        raise ReportError(f"the studies {', '.join(names)} share no arm (arms are matched by their label, "
                          f"e.g. 'method=gradmix memory.size=200')")
    first, base = arms_of[0], results[0]["baseline"]
    mk = results[0]["method_key"]

    def partner(arm: str) -> str | None:
        a = first[arm]
        if base["kind"] == "arm":
            return base["name"] if base["name"] in shared and base["name"] != arm else None
        if not mk or a["method"] == base["method"]:
            return None
        return next((b for b in shared if first[b]["method"] == base["method"] and
                     all(jkey(first[b]["factors"].get(k)) == jkey(v) for k, v in a["factors"].items() if k != mk)),
                    None)

    rows = []  # one per (study, shared arm against the common baseline)
    for arm in shared:
        vs = partner(arm)
        if vs is None:
            continue
        a0 = first[arm]
        at = ", ".join(f"{k}={v}" for k, v in a0["factors"].items() if k != mk)
        for r, m in zip(results, arms_of):
            t = paired_test(_per_seed(m[arm]), _per_seed(m[vs]), r["test_metric"], r["mode"])
            rows.append({"study": r["study"], "metric": r["test_metric"], "arm": arm, "vs": vs, "at": at,
                         "label": f"{a0['method']} − {first[vs]['method']}" if mk else f"{arm} − {vs}", **t})
    for row, p in zip(rows, holm([row["p"] for row in rows])):
        row["p_holm"], row["mark"] = p, mark(p)
    table = []
    for arm in shared:
        per = []
        for r, m in zip(results, arms_of):
            st = m[arm]["stats"][r["test_metric"]]
            row = next((x for x in rows if x["study"] == r["study"] and x["arm"] == arm), None)
            per.append({"study": r["study"], "n": st["n"], "mean": st["mean"], "std": st["std"],
                        "ci_low": st["ci_low"], "ci_high": st["ci_high"], "mark": row["mark"] if row else "",
                        "values": st["values"]})
        agg = sum(p["mean"] for p in per) / len(per) if all(is_finite(p["mean"]) for p in per) else float("nan")
        lo, hi = stratified_bootstrap([p["values"] for p in per])
        table.append({"arm": arm, "per_study": per, "aggregate": agg, "agg_low": lo, "agg_high": hi})
    pairs = []
    for arm in shared:
        vs = partner(arm)
        if vs is None:
            continue
        better = [_paired_better(m[arm], m[vs], r["mode"]) for r, m in zip(results, arms_of)]
        if any(not b for b in better):
            continue
        mine = [x for x in rows if x["arm"] == arm]
        lo, hi = stratified_bootstrap(better)
        pairs.append({"arm": arm, "vs": vs, "label": mine[0]["label"], "at": mine[0]["at"],
                      "poi": sum(sum(b) / len(b) for b in better) / len(better), "poi_low": lo, "poi_high": hi,
                      "significant_in": [x["study"] for x in mine if is_finite(x["p_holm"]) and x["p_holm"] < 0.05]})
    return {"studies": names, "metrics": [r["test_metric"] for r in results], "modes": [r["mode"] for r in results],
            "best": [_best_shared(r, [m[a] for a in shared]) for r, m in zip(results, arms_of)],
            "baseline": base["name"], "shared_arms": shared, "table": table, "comparisons": rows, "pairs": pairs,
            "only_in_some": sorted({a for m in arms_of for a in m} - set(shared)),
            "n_min": min((r["n_min"] for r in results), default=0)}


def _best_shared(res: dict, arms: list[dict]) -> dict:
    """A study's best shared arm by the metric that may choose (report/selection.py: a searched
    study's validation metric, or the tuning rank of its evaluation arms; never a test score it
    only reports)."""
    ch = choose(res, arms)
    a = ch["arm"]
    return {"arm": a["arm"] if a else None, "by": ch["by"], "rule": ch["rule"],
            "score": a["stats"][ch["by"]]["mean"] if a and ch["rule"] == "metric" else float("nan"),
            "tune_rank": a.get("tune_rank") if a else None}


def _sentences(cmp: dict) -> list[str]:
    out = []
    for i, study in enumerate(cmp["studies"]):
        metric, b = cmp["metrics"][i], cmp["best"][i]
        row = next((t for t in cmp["table"] if t["arm"] == b["arm"]), None)
        if row is None:
            if b["by"] != metric:
                out.append(f"{study}: no shared arm has a value of {b['by']}, the study's metric, so none is "
                           "called best (the test split does not choose).")
            continue
        st = row["per_study"][i]
        score = f"{LABELS.get(metric, metric)} {num(st['mean'], metric)}{ci_text(st, metric)}"
        if b["by"] == metric:
            out.append(f"{study}: best shared arm {b['arm']} with {score}.")
        elif b["rule"] == "metric":
            out.append(f"{study}: best shared arm by {b['by']}, the study's metric (the test split does not "
                       f"choose): {b['arm']} with {b['by']} {num(b['score'], b['by'])}; its test {score}.")
        else:
            out.append(f"{study}: of the shared arms, {b['arm']} re-runs the configuration {b['by']} ranked "
                       f"highest in tuning (rank {b['tune_rank']}): its test {score}.")
    for p in cmp["pairs"][:3]:
        where = f" at {p['at']}" if p["at"] else ""
        sig = p["significant_in"]
        out.append(f"{p['label']}{where}: probability of improvement {p['poi']:.2f} averaged over "
                   f"{len(cmp['studies'])} studies (95% CI {p['poi_low']:.2f} to {p['poi_high']:.2f}); significant "
                   f"after Holm correction in {len(sig)} of them" + (f" ({', '.join(sig)})." if sig else "."))
    return out[:6]


def _latex(cmp: dict) -> str:
    """A booktabs table: arms x studies, mean ± std, best in bold, Holm marks."""
    cols = "l" + "c" * (len(cmp["studies"]) + 1)
    esc = str.maketrans({"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"})
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule",
             "arm & " + " & ".join(s.translate(esc) for s in cmp["studies"]) + r" & mean \\", r"\midrule"]
    for t in cmp["table"]:
        cells = []
        for i, p in enumerate(t["per_study"]):
            s = f"{p['mean']:.3f} $\\pm$ {p['std']:.3f}" if is_finite(p["std"]) else num(p["mean"])
            s = f"\\textbf{{{s}}}" if t["arm"] == cmp["best"][i]["arm"] else s
            cells.append(s + (f"$^{{{p['mark']}}}$" if p["mark"] else ""))
        lines.append(t["arm"].translate(esc) + " & " + " & ".join(cells) + f" & {num(t['aggregate'])} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def build_comparison(studies: list[str], tracking_uri: str | None = None, out_dir: str | Path = "reports",
                     name: str | None = None, ui_url: str | None = None) -> Path:
    """One report over several studies (each found by name, in any experiment); returns its folder."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    results = [analyse(load_study(client, s)) for s in studies]
    cmp = compare(results)
    cmp["findings"] = _sentences(cmp)
    folder = Path(out_dir) / slug(name or "compare_" + "_".join(studies))
    if (folder / "figures").exists():
        shutil.rmtree(folder / "figures")
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(dict.fromkeys(
        a["method"] for r in results for a in r["arms"]))}
    method = {a["arm"]: a["method"] for a in results[0]["arms"]}
    panels = [{"title": f"{s} ({LABELS.get(m, m)})", "values": [t["per_study"][i]["values"] for t in cmp["table"]],
               "mean": [t["per_study"][i]["mean"] for t in cmp["table"]],
               "low": [t["per_study"][i]["ci_low"] for t in cmp["table"]],
               "high": [t["per_study"][i]["ci_high"] for t in cmp["table"]], "range": metric_range(m)}
              for i, (s, m) in enumerate(zip(cmp["studies"], cmp["metrics"]))]
    figures.draw_seed_dots(panels, [t["arm"].replace(" ", "\n") for t in cmp["table"]],
                           [colors[method[t["arm"]]] for t in cmp["table"]],
                           "dots = seeds, black bar = mean, colored line = 95% CI", folder / "figures" / "seeds.png")
    (folder / "table.tex").write_text(_latex(cmp))
    d = Doc(folder)
    d.h(1, "Comparison of studies " + ", ".join(studies))
    d.h(2, "Findings")
    for r in results:
        if r["question"]:
            d.quote(f"**{r['study']}**: {r['question']}")
    if 0 < cmp["n_min"] < 5:
        n = cmp["n_min"]
        d.p(f"**Warning:** as few as {n} seed{'' if n == 1 else 's'} per arm (fewer than 5): intervals and p-values "
            "are rough.", cls="warn")
    d.bullets(cmp["findings"])
    unpaired = results[0]["baseline"]["kind"] == "none"  # a searched study: nothing is paired
    if unpaired:
        d.p(f"No common baseline: {results[0]['study']}, the first study, is a searched study, whose arms are not "
            "paired by seed (its report's Tuning vs evaluation compares tuning and evaluation scores); the table "
            "sets each shared arm's scores side by side.")
    else:
        d.p(f"Common baseline: {cmp['baseline']} (the first study's; its rule: {results[0]['baseline']['rule']}). "
            "Differences are paired by seed within each study; Holm correction over every row of the comparisons "
            "table (all studies together).")
    d.h(2, "Results")
    rows = []
    for t in cmp["table"]:
        cells = []
        for i, p in enumerate(t["per_study"]):
            s = ms(p, 3) + (f" {p['mark']}" if p["mark"] else "")
            cells.append(Bold(s) if t["arm"] == cmp["best"][i]["arm"] else s)
        rows.append([t["arm"]] + cells + [f"{num(t['aggregate'])} {interval(t['agg_low'], t['agg_high'], 3)}"])
    heads = [f"{s}: {LABELS.get(m, m)}" for s, m in zip(cmp["studies"], cmp["metrics"])]
    d.table(["arm"] + heads + ["mean over studies [95% CI, stratified bootstrap]"], rows)
    d.p("Mean ± std over seeds; bold = best in its study by the study's metric (a searched study's validation "
        "metric, or the tuning rank of its evaluation arms: never the test score shown); marks = Holm-adjusted p "
        "of the arm against its "
        "study's baseline (* < 0.05, ** < 0.01, *** < 0.001). LaTeX: `table.tex`."
        + (f" Arms not in every study (left out): {', '.join(cmp['only_in_some'])}." if cmp["only_in_some"] else ""))
    d.img("figures/seeds.png", "every seed per arm and study, with the mean and its 95% CI")
    d.h(2, "Probability of improvement over the baseline (aggregate)")
    if unpaired:
        d.p("None: no common baseline (see Findings).")
    else:
        d.table(["comparison", "at", "P(improvement), mean over studies", "95% CI (stratified bootstrap)",
                 "significant in"],
                [[p["label"], p["at"] or "-", f"{p['poi']:.2f}", interval(p["poi_low"], p["poi_high"], 2),
                  ", ".join(p["significant_in"]) or "none"] for p in cmp["pairs"]])
    d.h(2, "Comparisons per study")
    if unpaired:
        d.p("None: no common baseline (see Findings).")
    else:
        d.table(["study", "comparison", "at", "n", "diff (95% CI, Holm p over all studies)", "P(improvement)", "p"],
                [[c["study"], c["label"], c["at"] or "-", c["n"],
                  clause(c, c["metric"], marks=True),
                  f"{c['poi']:.2f}" if is_finite(c["poi"]) else "n/a", pval(c["p"])] for c in cmp["comparisons"]])
    d.h(2, "Studies")
    d.table(["study", "experiment", "parent run", "arms", "runs"],
            [[r["study"], r["experiment"], Link(r["parent_run_id"], run_url(uri, r["experiment_id"],
                                                                            r["parent_run_id"], ui_url)),
              len(r["arms"]), r["n_runs"]] for r in results])
    (folder / "report.md").write_text("\n".join(d.md))
    (folder / "report.html").write_text(d.page("comparison " + ", ".join(studies)))
    (folder / "summary.json").write_text(json.dumps(jsonable({"comparison": cmp, "studies": results}), indent=1,
                                                    default=str))
    return folder
