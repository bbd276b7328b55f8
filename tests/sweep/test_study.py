"""sweep/study.py: ablation files -> Study, checked before Ray (every bad input exits 2 with the
file, the key and a fix; ray and torch never imported), and the shipped ablations load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradmix_tune.config import ConfigError
from gradmix_tune.sweep.study import load_study, trial_table
from helpers import SWEEP_BASE

ROOT = Path(__file__).resolve().parents[2]


BAD_CASES = {
    "yaml_syntax": ("name: x\ngrid: {method: [er, gradmix}\n", ["bad.yaml", "invalid YAML"]),
    "duplicate_key": ("name: x\nseeds: [0]\nseeds: [1]\n", ["bad.yaml", "'seeds'", "duplicate"]),
    "unknown_top_key": ("name: x\nseed: [0, 1]\n", ["'seed'", "did you mean 'seeds'"]),
    "unknown_grid_key": ("name: x\ngrid: {memory.sise: [10, 20]}\n", ["grid.memory.sise", "memory.size"]),
    "grid_not_list": ("name: x\ngrid: {memory.size: 200}\n", ["grid.memory.size", "list"]),
    "grid_bad_value": ("name: x\ngrid: {mixing.selection: [random, gradmix]}\n",
                       ["arm 'mixing.selection=gradmix'", "mixing.selection", "unknown value 'gradmix'"]),
    "grid_bad_combo": ("name: x\ngrid: {memory.size: [5, 200]}\n", ["memory.size=5", "replay batch"]),
    "grid_unknown_method": ("name: x\ngrid: {method: [er, gradmixx]}\n", ["grid.method", "did you mean 'gradmix'"]),
    "seed_in_grid": ("name: x\ngrid: {seed: [0, 1]}\n", ["grid.seed", "seeds:"]),
    "seeds_not_ints": ("name: x\nseeds: [0, one]\n", ["'seeds'", "integers"]),
    "same_arms": ("name: x\nbase: {mixing: {selection: random}}\ngrid: {method: [er_mixup, gradmix]}\n",
                  ["same config", "method=er_mixup", "method=gradmix"]),
    "base_bad_key": ("name: x\nbase: {train: {lr: 0.1, epoch: 2}}\n", ["train.epoch", "train.epochs"]),
    "extends_missing": ("name: x\nbase: {extends: nowhere.yaml}\n", ["'extends'", "not found"]),
    "metric": ("name: x\nmetric: final_acc\n", ["'metric'", "final_avg_acc"]),
    "mode": ("name: x\nmode: maximum\n", ["'mode'", "max or min"]),
    "scheduler": ("name: x\nscheduler: hyperband\n", ["scheduler.type", "fifo or asha"]),
    "asha_time_attr": ("name: x\nscheduler: {type: asha, time_attr: epochs}\n",
                       ["scheduler.time_attr", "tasks_done"]),
    "asha_grace": ("name: x\nbase: {data: {tasks: 2}}\nscheduler: {type: asha, grace_period: 5}\n",
                   ["scheduler.grace_period", "longer than a trial"]),
    "resources_gpu": ("name: x\nresources: {cpu: 1, gpu: -1}\n", ["resources.gpu", ">= 0"]),
    "resources_key": ("name: x\nresources: {cpus: 2}\n", ["resources.cpus", "did you mean 'cpu'"]),
    "max_failures": ("name: x\nmax_failures: -1\n", ["max_failures", ">= 0"]),
    "name": ("name: my study\n", ["'name'", "letters"]),
    "search_and_grid": ("name: x\ngrid: {method: [er]}\nsearch: {space: sp.yaml, num_samples: 2}\n",
                        ["either a grid or a search"]),
    "search_missing_space": ("name: x\nsearch: {space: nope.yaml, num_samples: 2}\n", ["search.space", "not found"]),
    "search_algorithm": ("name: x\nsearch: {space: sp.yaml, algorithm: bayes, num_samples: 2}\n",
                         ["search.algorithm", "optuna"]),
    "search_no_samples": ("name: x\nsearch: {space: sp.yaml}\n", ["search.num_samples", "missing"]),
    "space_int_key": ("name: x\nsearch: {space: sp_int.yaml, num_samples: 2}\n",
                      ["sp_int.yaml", "train.batch_size", "int: [8, 64]"]),
    "space_bounds": ("name: x\nsearch: {space: sp_bounds.yaml, num_samples: 2}\n",
                     ["sp_bounds.yaml", "train.lr", "below high"]),
    "space_invalid_value": ("name: x\nsearch: {space: sp_value.yaml, num_samples: 2}\n",
                            ["search mixing.selection=gradmix", "unknown value 'gradmix'"]),
}


def test_bad_ablation_files_exit_2_before_ray(tmp_path):
    """Every malformed file: exit code 2, a message naming the file and key, and neither ray nor torch
    imported. All cases run in one fresh interpreter (so `ray` in sys.modules means Ray was reached)."""
    (tmp_path / "sp.yaml").write_text("train.lr: {loguniform: [0.001, 0.1]}\n")
    (tmp_path / "sp_int.yaml").write_text("train.batch_size: {uniform: [8, 64]}\n")
    (tmp_path / "sp_bounds.yaml").write_text("train.lr: {uniform: [0.5, 0.1]}\n")
    (tmp_path / "sp_value.yaml").write_text("mixing.selection: {choice: [random, gradmix]}\n")
    cases = {}
    for name, (text, _) in BAD_CASES.items():
        (tmp_path / name).mkdir()
        cases[name] = str(tmp_path / name / "bad.yaml")
        Path(cases[name]).write_text(text)
        for sp in ("sp.yaml", "sp_int.yaml", "sp_bounds.yaml", "sp_value.yaml"):
            (tmp_path / name / sp).write_text((tmp_path / sp).read_text())
    good = tmp_path / "good.yaml"
    good.write_text(SWEEP_BASE + "name: good\ngrid: {memory.size: [60, 100]}\nseeds: 2\n")
    (tmp_path / "ray_results" / "good").mkdir(parents=True)  # an earlier run of the study
    extra = {
        "set_grid_key": [str(good), "--set", "memory.size=20"],
        "set_bad_value": [str(good), "--set", "train.lr=-1"],
        "exists_no_resume": [str(good)],
        "resume_nothing": [str(good), "--resume", "--storage", str(tmp_path / "empty")],
        "resume_and_overwrite": [str(good), "--resume", "--overwrite"],
        "missing_file": [str(tmp_path / "nope.yaml")],
    }
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from gradmix_tune.cli import main
        out = {{}}
        storage = ["--storage", {str(tmp_path / "ray_results")!r}]
        cases = {json.dumps(cases)}
        cases = {{k: [v] for k, v in cases.items()}}
        cases.update({json.dumps(extra)})
        for name, argv in cases.items():
            err, std = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                rc = main(["sweep", *argv, *([] if "--storage" in argv else storage)])
            out[name] = {{"rc": rc, "err": err.getvalue(), "ray": "ray" in sys.modules or "torch" in sys.modules}}
        with contextlib.redirect_stdout(io.StringIO()) as dry:
            rc = main(["sweep", {str(good)!r}, "--dry-run", *storage])
        out["dry_run"] = {{"rc": rc, "err": dry.getvalue(), "ray": "ray" in sys.modules}}
        print(json.dumps(out))
        """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (_, needles) in BAD_CASES.items():
        o = out[name]
        assert o["rc"] == 2 and not o["ray"], (name, o)
        assert o["err"].startswith("error: ") and "bad.yaml" in o["err"] or name.startswith("space_"), (name, o)
        for n in needles:
            assert n in o["err"], (name, n, o["err"])
    for name, needle in [("set_grid_key", "varied by the study's grid"), ("set_bad_value", "train.lr"),
                         ("exists_no_resume", "--resume"), ("resume_nothing", "no study 'good' to resume"),
                         ("resume_and_overwrite", "contradict"), ("missing_file", "file not found")]:
        assert out[name]["rc"] == 2 and not out[name]["ray"], (name, out[name])
        assert needle in out[name]["err"], (name, out[name]["err"])
    dry = out["dry_run"]
    assert dry["rc"] == 0 and not dry["ray"]  # it loads each arm's data and builds its learner: torch, no Ray
    assert "4 trials (2 arms x 2 seeds)" in dry["err"]
    assert [ln.split()[1:] for ln in dry["err"].splitlines() if ln.strip()[:1].isdigit()] == [
        ["memory.size=60", "0"], ["memory.size=100", "0"], ["memory.size=60", "1"], ["memory.size=100", "1"]]


def test_repo_ablations_and_spaces_are_valid():
    """Every shipped ablation file loads and expands (no Ray): the same check a user's run does first."""
    files = sorted((ROOT / "ablations").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"quickstart", "buffer_size", "mixup_alpha", "selection_threshold", "selection_method", "mixing_op",
            "policy_baselines", "epochs"} <= names
    for f in files:
        text = f.read_text()
        header = text.split("\nname:")[0]  # the question and what the study costs, before any key
        assert text.startswith("#") and "?" in header and ("CPU" in header or "cores" in header), f
        study = load_study(f, data_root="/nonexistent-data-root")
        assert study.name == f.stem and study.num_trials >= 1
    assert any(load_study(f).search for f in files)  # the HPO example
    quick = load_study(ROOT / "ablations" / "quickstart.yaml")
    assert quick.num_trials == 40 and quick.base["data"]["name"] == "digits"
    assert {t["factors"]["method"] for t in quick.trials} == {"er", "er_mixup", "gradmix", "random_composed"}
    with pytest.raises(ConfigError):
        load_study(ROOT / "ablations" / "quickstart.yaml", overrides=["memory.size=5"])


def test_study_module_imports_neither_ray_nor_torch():
    """`--dry-run` and bad input stay fast: the sweep package and its study module load no Ray, no torch."""
    script = ("import json, sys; import gradmix_tune.sweep.study, gradmix_tune.sweep; "
              "print(json.dumps([m for m in ('ray', 'torch') if m in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_trial_table_lists_every_trial_seed_major(tmp_path):
    study = load_study(ROOT / "ablations" / "quickstart.yaml", storage=str(tmp_path / "rr"),
                       tracking_uri="sqlite:///m.db")
    lines = trial_table(study).splitlines()
    assert lines[:5] == ["study quickstart: 40 trials (8 arms x 5 seeds)",
                         f"  results  {tmp_path / 'rr' / 'quickstart'}",
                         "  tracking sqlite:///m.db (experiment 'quickstart')",
                         "  per trial 1 CPU, 0 GPU; metric final_avg_acc (max); scheduler fifo", ""]
    assert lines[6].split() == ["0", "method=er", "memory.size=100", "0"]
    assert lines[-1].split() == ["39", "method=random_composed", "memory.size=200", "4"]
    assert len(lines) == 6 + 40
