"""sweep/search.py on a real local Ray: an Optuna search runs its budget of valid sampled trials,
ASHA stops weak trials early (not a failure)."""
from __future__ import annotations

import pytest

from gradmix_tune.cli import main
from gradmix_tune.sweep import load_study, run_study
from helpers import SWEEP_BASE, rows, sweep_cli_args, trial_dirs, write_ablation

pytestmark = pytest.mark.integration


def test_optuna_search_runs_num_samples(tmp_path, ray_address):
    (tmp_path / "space.yaml").write_text("train.lr: {loguniform: [0.01, 0.3]}\nmixing.alpha: {uniform: [0.2, 2.0]}\n")
    path = write_ablation(tmp_path, "hpo", """\
        name: hpo
        search: {space: space.yaml, algorithm: optuna, num_samples: 3}
        seeds: [0]
        """, base=SWEEP_BASE + "  method: er_mixup\n")
    study = load_study(path, storage=str(tmp_path / "rr"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert study.trials == [] and study.num_trials == 3
    out = run_study(study, reports_dir=str(tmp_path / "reports"))
    assert out.exit_code == 0 and len(out.trials) == 3
    seen = set()
    for t in out.trials:
        f, cfg = t.config["factors"], t.config["config"]
        assert set(f) == {"train.lr", "mixing.alpha"}
        assert 0.01 <= f["train.lr"] <= 0.3 and 0.2 <= f["mixing.alpha"] <= 2.0
        assert cfg["train"]["lr"] == f["train.lr"] and cfg["mixing"]["alpha"] == f["mixing.alpha"]
        assert cfg["mixing"]["selection"] == "random"  # the base's method preset still applies
        assert t.status == "ok" and 0 < t.metrics["final_avg_acc"] <= 1
        seen.add((f["train.lr"], f["mixing.alpha"]))
    assert len(seen) == 3


def test_asha_stops_weak_trials_early(tmp_path, ray_address):
    path = write_ablation(tmp_path, "asha", """\
        name: asha
        grid: {train.lr: [0.1, 1.0e-6]}
        seeds: [0, 1]
        scheduler: {type: asha, time_attr: tasks_done, grace_period: 1, reduction_factor: 2}
        """)
    code = main(["sweep", str(path), *sweep_cli_args(tmp_path), "--max-concurrent", "1"])
    assert code == 0  # stopped early is not a failure
    exp = tmp_path / "ray_results" / "asha"
    by_index = {int(n[1:5]): rows(d) for n, d in trial_dirs(exp).items()}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert any("final_avg_acc" in x for x in by_index[0])  # the first strong trial ran to the end
    for i in (1, 3):  # lr=1e-6 barely learns: ASHA stops it at the first rung
        tasks = [x["tasks_done"] for x in by_index[i] if x["kind"] == "task"]
        assert tasks and max(tasks) < 3, tasks
        assert not any("final_avg_acc" in x for x in by_index[i])
