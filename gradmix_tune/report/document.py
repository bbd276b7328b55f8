"""The report: report.md (figures linked) and a self-contained report.html (figures embedded), section by section.

Numbers come from analysis.analyse, figures from charts.figures_of. A section is a function
(Doc, Context) -> None that writes nothing when it does not apply; `write` runs SECTIONS, then
OPTIONAL_SECTIONS, then CLOSING_SECTIONS. Tables show mean ± sample std and 95% intervals.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..results import LABELS
from ..values import is_finite
from .charts import metric_order
from .findings import num, pval
from .reproduce import study_span_s
from .runs import LOCAL_UI, run_url


def _f(v, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def ms(st: dict, nd: int = 4) -> str:
    """'mean ± std' ('mean' for one seed, 'n/a' for none)."""
    if not st["n"]:
        return "n/a"
    return _f(st["mean"], nd) if st["n"] < 2 else f"{_f(st['mean'], nd)} ± {_f(st['std'], nd)}"


def interval(lo, hi, nd: int = 4) -> str:
    return "n/a" if not (is_finite(lo) and is_finite(hi)) else f"[{_f(lo, nd)}, {_f(hi, nd)}]"


@dataclass
class Link:
    text: str
    href: str


@dataclass
class Bold:
    text: str


_INLINE = re.compile(r"`([^`]+)`|\*\*(\S[^*]*?\S|\S)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """The markdown of a paragraph (`code`, **bold**, [text](url)) as escaped HTML."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1))}</code>")
        elif m.group(2) is not None:
            out.append(f"<b>{html.escape(m.group(2))}</b>")
        else:
            out.append(f'<a href="{html.escape(m.group(4))}">{html.escape(m.group(3))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _md_cell(c) -> str:
    """A table cell in markdown: `|` and `*` (significance marks) escaped."""
    def esc(t):
        return str(t).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")

    if isinstance(c, Link):
        return f"[{esc(c.text)}]({c.href})"
    return f"**{esc(c.text)}**" if isinstance(c, Bold) else esc(c)


def _html_cell(c) -> str:
    if isinstance(c, Link):
        return f'<a href="{html.escape(c.href)}">{html.escape(c.text)}</a>'
    return f"<b>{html.escape(c.text)}</b>" if isinstance(c, Bold) else html.escape(str(c))


class Doc:
    """report.md and report.html built side by side from the same blocks; images from `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str, cls: str = "") -> None:
        self.md += [text, ""]
        self.html.append(f"<p{f' class={cls!r}' if cls else ''}>{inline_html(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md += [f"- {t}" for t in items] + [""]
        self.html.append("<ul>" + "".join(f"<li>{inline_html(t)}</li>" for t in items) + "</ul>")

    def quote(self, text: str) -> None:
        self.md += ["> " + text, ""]
        self.html.append(f"<blockquote>{inline_html(text)}</blockquote>")

    def code(self, text: str, lang: str = "") -> None:
        self.md += [f"```{lang}", text.rstrip("\n"), "```", ""]
        self.html.append(f"<pre><code>{html.escape(text.rstrip())}</code></pre>")

    def table(self, headers: list[str], rows: list[list]) -> None:
        if not rows:
            self.p("(none)")
            return
        self.md += ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        self.md += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows] + [""]
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.html.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def img(self, rel: str, caption: str) -> None:
        """md: a relative link (for GitHub); html: the PNG embedded as base64 (no external file)."""
        self.md += [f"![{caption}]({rel})", ""]
        data = base64.b64encode((self.folder / rel).read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def page(self, title: str) -> str:
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<link rel='icon' href='data:,'><title>{html.escape(title)}</title><style>{CSS}</style></head>"
                "<body>\n" + "\n".join(self.html) + "\n</body></html>\n")


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1150px;margin:1.5em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45;background:#fff}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;
padding-bottom:2px;margin-top:1.6em}.wide{overflow-x:auto}table{border-collapse:collapse;margin:0.5em 0 1.2em;
font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;height:auto}figure{margin:0.6em 0;display:inline-block;max-width:100%}
figcaption{font-size:0.8em;color:#555}code{background:#f3f3f3;padding:0 3px}pre{background:#f6f6f6;padding:8px;
overflow-x:auto;font-size:0.85em}blockquote{margin:0.5em 0;padding:0.4em 1em;border-left:4px solid #4a78b5;
background:#f4f7fb}p.warn{background:#fff4e0;border-left:4px solid #e69500;padding:0.4em 1em}a{color:#1d5fa8}
@media print{body{max-width:none;margin:0;font-size:10pt}.wide{overflow:visible}h2{page-break-after:avoid}
figure,table,pre,blockquote{page-break-inside:avoid}a{color:inherit;text-decoration:none}}"""


@dataclass
class Context:
    """What a section sees: the numbers, the drawn figures, the store, and the runs themselves (an
    optional section may compute more from `runs`, e.g. validation against test metrics)."""
    res: dict
    figs: dict  # charts.figures_of
    tracking_uri: str
    ui_url: str | None = None
    runs: Any = None  # runs.StudyRuns
    fig_dir: Path | None = None  # where an optional section may draw its own figures

    def run_link(self, run_id: str, text: str | None = None) -> Link:
        return Link(text or run_id, run_url(self.tracking_uri, self.res["experiment_id"], run_id, self.ui_url))

    @property
    def local_store(self) -> bool:
        return not self.tracking_uri.startswith(("http://", "https://")) and not self.ui_url


def ui_note(ctx: Context) -> str:
    if not ctx.local_store:
        return "Run ids link to their MLflow run pages."
    return (f"Run ids link to their pages in the MLflow UI at {LOCAL_UI}: start it with "
            f"`gradmix-tune ui --tracking-uri {ctx.tracking_uri}` (or pass `--ui-url` to the report).")


# ----------------------------------------------------------------------------------------- sections
def findings_section(d: Doc, ctx: Context) -> None:
    f = ctx.res["findings"]
    d.h(2, "Findings")
    if f["question"]:
        d.quote(f"**Question** ({ctx.res['ablation'] or 'the ablation file'}): {f['question']}")
    else:
        d.p("(The ablation file states no question: no `# Question:` header comment nor `description:`.)")
    if f["warning"]:
        d.p(f"**Warning:** {f['warning']}", cls="warn")
    d.bullets(f["sentences"])
    if f["baseline"]:  # a searched study has none (its bullets say why nothing is paired)
        d.p(f["baseline"] + " Differences are arm − other on the study metric, paired by seed; 95% CI from the "
            "t-distribution; Holm p = Holm-Bonferroni adjusted over all comparisons of the study "
            "(* < 0.05, ** < 0.01, *** < 0.001).")


def shown_arms(res: dict) -> list[dict]:
    """The arms with a value of the test metric (the others, e.g. trials a scheduler stopped early,
    have nothing to show but their runs)."""
    return [a for a in res["arms"] if a["stats"][res["test_metric"]]["n"]]


def _left_out(d: Doc, res: dict) -> None:
    empty = [a["arm"] for a in res["arms"] if not a["stats"][res["test_metric"]]["n"]]
    if empty:
        names = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        d.p(f"Left out: {len(empty)} arm{'' if len(empty) == 1 else 's'} without a value of `{res['test_metric']}` "
            f"(stopped early, or ended without it): {names}; their runs are listed under Runs.")


def study_section(d: Doc, ctx: Context) -> None:
    r = ctx.res
    d.h(2, "Study")
    parent = ctx.run_link(r["parent_run_id"])
    empty = sum(not a["stats"][r["test_metric"]]["n"] for a in r["arms"])  # e.g. trials a scheduler stopped
    d.p(f"Experiment `{r['experiment']}` (id {r['experiment_id']}), parent run [{parent.text}]({parent.href}), "
        f"tracking URI `{ctx.tracking_uri}`. Ablation file `{r['ablation'] or '?'}`, git commit "
        f"`{r['git_commit'] or '?'}`. {r['n_runs']} finished trials in {len(r['arms'])} arms"
        + (f" ({empty} of them without a value of `{r['test_metric']}`)" if empty else "")
        + f", {len(r['failed'])} failed or unfinished. Study metric: `{r['metric']}` ({r['mode']})"
        + (f"; compared on its test twin `{r['test_metric']}`" if r["metric"] != r["test_metric"] else "")
        + f". Rebuild with `gradmix-tune report {r['study']}`. {ui_note(ctx)}")


def results_section(d: Doc, ctx: Context) -> None:
    r, m = ctx.res, ctx.res["test_metric"]
    d.h(2, "Results per arm")
    d.p(f"{LABELS.get(m, m)} over seeds: mean ± sample std; 95% CI of the mean from the t-distribution, clipped "
        "to the metric's range; bootstrap: percentile interval over 9,999 resamples of the seeds "
        "(scipy.stats.bootstrap), which cannot leave the range of the seeds' values.")
    rows = []
    for a in shown_arms(r):
        st = a["stats"][m]
        vals = ", ".join(f"{s}: {_f(v, 3)}" for s, v in zip(a["seeds"], a["per_seed"]))
        rows.append([a["arm"] + (" (reference)" if a["is_reference"] else ""), st["n"], ms(st),
                     interval(st["ci_low"], st["ci_high"]) + (" (clipped)" if st["clipped"] else ""),
                     interval(st["boot_low"], st["boot_high"]), vals])
    d.table(["arm", "n", f"{LABELS.get(m, m)} (mean ± std)", "95% CI (t)", "95% CI (bootstrap)",
             "per seed (seed: value)"], rows)
    rest = [k for k in metric_order(r) if k != m]
    d.p("The other metrics (mean ± std [95% CI, t, clipped]):")
    d.table(["arm"] + [LABELS[k] for k in rest],
            [[a["arm"]] + [f"{ms(a['stats'][k])} {interval(a['stats'][k]['ci_low'], a['stats'][k]['ci_high'])}"
                           for k in rest] for a in shown_arms(r)])
    _left_out(d, r)
    for rel, cap in ctx.figs.get("dots", []):
        d.img(rel, cap)


def comparisons_section(d: Doc, ctx: Context) -> None:
    r, m = ctx.res, ctx.res["test_metric"]
    pw = r["power"]
    d.h(2, "Comparisons")
    if r["findings"].get("no_pairs"):  # a searched study: nothing is paired
        d.p(r["findings"]["no_pairs"])
        return
    evals = [a["arm"] for a in r["arms"] if a.get("evaluation")]
    if evals:
        d.p(f"Evaluation arms ({', '.join(evals)}) are not compared here: they ran other seeds (and the "
            "`evaluate.set` overrides) than the arms they re-run, so they are paired with none; see Tuning vs "
            "evaluation.")
    if not r["comparisons"]:
        d.p("No two arms with a value of the study metric differ in exactly one factor: nothing to compare.")
        return
    d.p(f"Only arms that differ in one factor; diff = arm − other on `{m}`, paired by seed. Each arm is "
        "compared with the arm that has one of its factors at the reference level (the baseline's), and "
        "GradMix with every other method at the same values of the other factors. p: paired t-test "
        "(scipy.stats.ttest_rel); Holm p: Holm-Bonferroni over all rows (statsmodels multipletests); "
        "P(improvement): the share of seeds on which the arm is better than the other (ties count half; "
        "rliable's probability of improvement, paired), with its bootstrap interval; d_z = mean / sd of the "
        "per-seed differences; seeds for 80% power: what a two-sided paired t-test needs at the observed d_z "
        f"(statsmodels TTestPower.solve_power) at α = {pw['alpha']}/{max(pw['family_size'], 1)} = "
        f"{pw['family_alpha']:.2g}, the level the smallest of the {pw['family_size']} Holm-corrected p-values must "
        "pass; detectable diff: the smallest difference the study's own seeds detect with 80% power at that level "
        "(at this row's spread of differences).")
    if pw["n"] >= 2:
        d.p(f"With {pw['n']} seeds a difference is detected with 80% power only from d_z = "
            f"{pw['detectable_effect']:.2f} on.")
    rows = []
    wil = any(is_finite(c["p_wilcoxon"]) for c in r["comparisons"])
    for c in r["comparisons"]:
        what = f"{c['factor']} {c['label']}" if c["kind"] == "factor" else c["label"]
        short = c["seeds_short"]
        need = c["seeds_for_power"]
        need_s = "∞" if need == math.inf else str(int(need)) if is_finite(need) else "n/a"
        if is_finite(need) and is_finite(short) and short > 0:
            need_s += f" ({int(short)} more)"
        row = [what, c["at"] or "-", c["n"], num(c["mean_diff"], m, True),
               interval(c["ci_low"], c["ci_high"], 3), interval(c["boot_low"], c["boot_high"], 3),
               f"{_f(c['poi'], 2)} {interval(c['poi_low'], c['poi_high'], 2)}", pval(c["p"]),
               pval(c["p_holm"]) + (f" {c['mark']}" if c["mark"] else ""),
               _f(c["effect_size"], 2), need_s, num(c["detectable_diff"], m)]
        rows.append(row + ([pval(c["p_wilcoxon"])] if wil else []))
    d.table(["comparison", "at", "n", "diff", "95% CI (t)", "95% CI (bootstrap)", "P(improvement) [95% CI]", "p",
             "Holm p", "d_z", "seeds for 80% power", "detectable diff"] + (["p (Wilcoxon)"] if wil else []), rows)


def factor_section(d: Doc, ctx: Context) -> None:
    if ctx.figs.get("factor"):
        d.h(2, "Effect of the swept factors")
        d.p("One line per method (and value of the remaining factors); band = 95% CI of the mean (t, clipped to "
            "the metric's range); dots = seeds.")
        for rel, cap in ctx.figs["factor"]:
            d.img(rel, cap)


def block_yaml(data: dict) -> str:
    """YAML with one key a line and lists inline ([100, 100]), as config files are written."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                             flow_style=True))
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100)


def config_section(d: Doc, ctx: Context) -> None:
    cfg = ctx.res["config"]
    d.h(2, "Configuration")
    if cfg["shared"]:
        d.p("Shared by every run (the MLflow params that are the same in all of them; `seed` aside):")
        d.code(block_yaml(cfg["shared"]), "yaml")
    if cfg["varying"]:
        d.p(f"What each arm changes: the params that differ between arms, relative to the reference arm "
            f"`{cfg['reference_arm']}` (all its values shown)." if not cfg.get("reference_rule") else
            f"What each arm changes: the params that differ between arms, relative to `{cfg['reference_arm']}` "
            f"({cfg['reference_rule']}; all its values shown).")
        d.table(["arm", "sets"], [[arm, ", ".join(f"{k}: {v}" for k, v in ch.items()) or "(as the reference)"]
                                  for arm, ch in cfg["changes"].items()])
    if ctx.res["ablation_text"]:
        d.p("The ablation file (the parent run's `ablation.yaml`):")
        d.code(ctx.res["ablation_text"], "yaml")


def matrices_section(d: Doc, ctx: Context) -> None:
    if ctx.figs.get("matrix"):
        d.h(2, "Accuracy matrices (mean over seeds)")
        d.p("Row i: after training task i; column j: test accuracy on task j's classes.")
        for rel, cap in ctx.figs["matrix"]:
            d.img(rel, cap)


def curves_section(d: Doc, ctx: Context) -> None:
    r = ctx.res
    if r["epochs"] <= 1:
        return  # one epoch per task: the per-epoch curve is the accuracy matrix again
    d.h(2, "Per-epoch seen-class accuracy")
    d.p("Test accuracy on the classes seen so far after every epoch (mean over seeds). The peak is taken "
        "within the last task (the seen classes no longer change there); drop = peak − final. "
        "Mean task drop: the same within every task, averaged (a U-shaped curve shows as a positive drop).")
    d.table(["arm", "epochs", "peak epoch", "peak acc", "final acc", "drop", "mean task drop"],
            [[a["arm"], len(a["curve"]["steps"]), a["curve"]["peak_epoch"] or "n/a", _f(a["curve"]["peak_acc"]),
              _f(a["curve"]["final_acc"]), _f(a["curve"]["drop"]), _f(a["curve"]["mean_task_drop"])]
             for a in shown_arms(r)])
    for rel, cap in ctx.figs.get("curve", []):
        d.img(rel, cap)


def wall_time_section(d: Doc, ctx: Context) -> None:
    r = ctx.res
    d.h(2, "Wall time")
    span = study_span_s(ctx.runs)
    if span is not None:
        d.p(f"The study's {r['n_runs']} trials ran in {span / 60:.1f} min of wall time, from the first trial's start "
            "to the last one's end (Ray's start and this report's build not included).")
    has = any(is_finite(a["overhead_vs_er_mixup"]) for a in r["arms"])
    d.p("Training time per trial (seconds, mean ± std)" + (
        "; overhead = mean time of the arm / mean time of ER+Mixup (er_mixup) at the same other factor values."
        if has else "."))
    timed = [a for a in r["arms"] if a["stats"]["wall_time_s"]["n"] or a["stats"][r["test_metric"]]["n"]]
    d.table(["arm", "method", "wall time (s)"] + (["overhead vs ER+Mixup"] if has else []),
            [[a["arm"], a["method"], ms(a["stats"]["wall_time_s"], 2)]
             + ([_f(a["overhead_vs_er_mixup"], 2) + ("×" if is_finite(a["overhead_vs_er_mixup"]) else "")]
                if has else []) for a in timed])


def failed_section(d: Doc, ctx: Context) -> None:
    d.h(2, "Failed or unfinished trials")
    d.table(["run", "arm", "seed", "status", "error", "run id"],
            [[f["name"], f["arm"], f["seed"], f["status"], (f["error"] or "")[-500:], ctx.run_link(f["run_id"])]
             for f in ctx.res["failed"]])


def runs_section(d: Doc, ctx: Context) -> None:
    m = ctx.res["test_metric"]
    d.h(2, "Runs")
    d.p(ui_note(ctx))
    d.table(["arm", "seed", m, "MLflow run"],
            [[a["arm"], s, _f(v, 4), ctx.run_link(rid)] for a in ctx.res["arms"]
             for s, rid, v in zip(a["seeds"], a["run_ids"], a["per_seed"])])


Section = Callable[[Doc, Context], None]
SECTIONS: list[Section] = [findings_section, results_section, comparisons_section, factor_section, study_section,
                           config_section, matrices_section, curves_section, wall_time_section]
# Optional sections, each (Doc, Context) -> None and silent when it does not apply, go here in the
# order they should appear, e.g. report/tuning.py's "Tuning vs evaluation" for two-phase HPO studies.
OPTIONAL_SECTIONS: list[Section] = []
CLOSING_SECTIONS: list[Section] = [failed_section, runs_section]


def write(ctx: Context, folder: Path) -> None:
    """report.md and report.html of the analysed study, its sections in order."""
    d = Doc(folder)
    d.h(1, f"Study {ctx.res['study']}")
    for section in SECTIONS + OPTIONAL_SECTIONS + CLOSING_SECTIONS:
        section(d, ctx)
    (folder / "report.md").write_text("\n".join(d.md))
    (folder / "report.html").write_text(d.page(f"{ctx.res['study']} report"))
