"""What a study's trials came to (TrialOutcome, SweepOutcome) and the per-arm summary table it prints (no Ray)."""
from __future__ import annotations

from dataclasses import dataclass

from ..values import is_finite, mean_std
from .study import Study


@dataclass
class TrialOutcome:
    config: dict
    metrics: dict
    status: str  # ok | failed | stopped (early, by the scheduler) | unfinished
    error: str = ""
    trial_id: str = ""


@dataclass
class SweepOutcome:
    study: Study
    trials: list[TrialOutcome]
    exit_code: int
    report_dir: str | None = None


def summary_rows(study: Study, trials: list[TrialOutcome]) -> list[dict]:
    """Per arm: n trials, finished, failed, stopped, mean +- std of the metric and forgetting."""
    arms: dict[str, list[TrialOutcome]] = {a: [] for a in study.arms}
    for t in trials:
        arms.setdefault(t.config.get("arm", "?"), []).append(t)
    rows = []
    for arm, ts in arms.items():
        ok = [t for t in ts if t.status == "ok"]
        rows.append({"arm": arm, "n": len(ts), "ok": len(ok),
                     "failed": sum(t.status == "failed" for t in ts),
                     "stopped": sum(t.status == "stopped" for t in ts),
                     "unfinished": sum(t.status == "unfinished" for t in ts),
                     "final_avg_acc": [t.metrics.get("final_avg_acc") for t in ok],
                     "forgetting": [t.metrics.get("forgetting") for t in ok],
                     "metric": [t.metrics.get(study.metric) for t in ok],
                     "wall_time_s": [t.metrics.get("wall_time_s") for t in ok]})
    return rows


def summary_table(study: Study, trials: list[TrialOutcome]) -> str:
    """One line per arm (a searched study: per sampled configuration, best first), the best marked *."""
    rows = summary_rows(study, trials)
    if study.search:  # one row per sampled configuration: best first
        sign = -1 if study.mode == "max" else 1
        rows.sort(key=lambda r: (not r["metric"], sign * (sum(r["metric"]) / len(r["metric"]) if r["metric"] else 0)))
    w = max([len(r["arm"]) for r in rows] + [3])
    extra = study.metric not in ("final_avg_acc", "forgetting")
    head = f"  {'arm':<{w}}  {'n':>3} {'ok':>3} {'fail':>4} {'stop':>4}  {'final_avg_acc':<17}  {'forgetting':<17}"
    head += f"  {study.metric:<17}" if extra else ""
    head += "  time/trial"
    lines = [f"summary of {study.name} (mean +- std over seeds)", head]
    best, best_arm = None, None
    for r in rows:
        vals = [v for v in r["metric"] if is_finite(v)]
        if vals:
            m = sum(vals) / len(vals)
            if best is None or (m > best if study.mode == "max" else m < best):
                best, best_arm = m, r["arm"]
    for r in rows:
        times = [t for t in r["wall_time_s"] if isinstance(t, (int, float))]
        line = (f"  {r['arm']:<{w}}  {r['n']:>3} {r['ok']:>3} {r['failed']:>4} {r['stopped']:>4}  "
                f"{mean_std(r['final_avg_acc']):<17}  {mean_std(r['forgetting']):<17}")
        line += f"  {mean_std(r['metric']):<17}" if extra else ""
        line += f"  {sum(times) / len(times):.1f} s" if times else "  -"
        line += "  *" if r["arm"] == best_arm and len(rows) > 1 else ""
        lines.append(line)
    if best_arm is not None and len(rows) > 1:
        lines.append(f"  * best mean {study.metric} ({study.mode}): {best_arm}")
    return "\n".join(lines)
