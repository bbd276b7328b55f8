"""sweep/summary.py: the per-arm table printed at the end of a study (no Ray)."""
from __future__ import annotations

from pathlib import Path

from gradmix_tune.sweep.study import load_study
from gradmix_tune.sweep.summary import TrialOutcome, summary_rows, summary_table

ROOT = Path(__file__).resolve().parents[2]


def test_summary_table_mean_std_per_arm_and_the_best_marked(tmp_path):
    study = load_study(ROOT / "ablations" / "quickstart.yaml", storage=str(tmp_path), tracking_uri="sqlite:///m.db")
    outcomes = []
    for t in study.trials:
        acc = {"er": 0.5, "er_mixup": 0.6, "random_composed": 0.65, "gradmix": 0.7}[t["factors"]["method"]] + 0.01 * t["seed"]
        m = {"final_avg_acc": acc, "forgetting": 0.2, "wall_time_s": 2.0}
        status = "failed" if t["index"] == 0 else "ok"
        outcomes.append(TrialOutcome(t, m if status == "ok" else {}, status, "Boom" if status == "failed" else ""))
    rows = {r["arm"]: r for r in summary_rows(study, outcomes)}
    assert list(rows) == study.arms
    assert (rows["method=er memory.size=100"]["n"], rows["method=er memory.size=100"]["ok"],
            rows["method=er memory.size=100"]["failed"]) == (5, 4, 1)
    lines = summary_table(study, outcomes).splitlines()
    assert lines[0] == "summary of quickstart (mean +- std over seeds)"
    er = next(ln for ln in lines if ln.strip().startswith("method=er memory.size=100 "))
    assert er.split()[2:5] == ["5", "4", "1"] and "0.5250 +- 0.0129" in er and "2.0 s" in er
    best = [ln for ln in lines if ln.endswith("  *")]
    assert len(best) == 1 and "method=gradmix memory.size=100" in best[0]
    assert lines[-1] == "  * best mean final_avg_acc (max): method=gradmix memory.size=100"
