"""Ray Tune sweeps (issue 4), on a real local Ray (2 CPUs, no dashboard) and the offline digits data.

One Ray is started for the module; the CLI runs in-process (it joins that Ray) or, where the test
needs to kill the driver, in a subprocess that joins it with --address.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradmix_tune import sweep
from gradmix_tune.cli import main
from gradmix_tune.config import ConfigError, from_dict

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

BASE = """\
base:
  data: {name: digits, tasks: 3}
  model: {name: mlp, hidden: [32]}
  train: {epochs: 1, batch_size: 10, lr: 0.1}
  memory: {size: 60}
"""


def write(tmp_path: Path, name: str, text: str, base: str = BASE) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(base + textwrap.dedent(text))
    return p


def cli_args(tmp_path: Path) -> list[str]:
    return ["--storage", str(tmp_path / "ray_results"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--reports", str(tmp_path / "reports")]


def rows(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def trial_dirs(exp: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(exp.glob("t[0-9]*")) if d.is_dir()}


def reference(config: dict):
    """The same config and seed run directly by the learner (no Ray): the ground truth."""
    import torch

    from gradmix_tune.learner import run

    torch.set_num_threads(1)  # a trial with one CPU runs with one thread
    cfg = from_dict(json.loads(json.dumps(config)))
    cfg.train.device = "cpu"
    return run(cfg)




# ---------------------------------------------------------------------------------------- studies
def test_study_trials_equal_single_runs(tmp_path, ray_address, capsys):
    path = write(tmp_path, "four", """\
        name: four
        grid: {method: [er, gradmix]}
        seeds: [0, 1]
        """)
    study = sweep.load_study(path, storage=str(tmp_path / "rr"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert [(t["arm"], t["seed"]) for t in study.trials] == [
        ("method=er", 0), ("method=gradmix", 0), ("method=er", 1), ("method=gradmix", 1)]
    out = sweep.run_study(study, reports_dir=str(tmp_path / "reports"))
    printed = capsys.readouterr().out
    assert out.exit_code == 0
    assert [t.status for t in out.trials] == ["ok"] * 4
    # the summary: one line per arm with mean +- std over the two seeds
    assert "summary of four" in printed
    for arm in ("method=er", "method=gradmix"):
        line = next(ln for ln in printed.splitlines() if ln.strip().startswith(arm + " "))
        assert "+-" in line and " 2 " in line
    assert "4/4 done" in printed

    exp = tmp_path / "rr" / "four"
    for t in out.trials:
        c = t.config
        assert {"study", "arm", "seed", "factors", "config"} <= set(c)
        assert c["study"] == "four" and c["config"]["seed"] == c["seed"]
        assert c["factors"] == {"method": c["arm"].split("=")[1]}
        assert c["config"]["mixing"]["selection"] == ("none" if c["factors"]["method"] == "er" else "gradient")
        ref = reference(c["config"])
        assert t.metrics["final_avg_acc"] == ref.final_avg_acc
        assert json.loads(t.metrics["accuracy_matrix"]) == ref.accuracy_matrix
        assert t.metrics["forgetting"] == ref.forgetting
        # what the trial reported: an epoch row per epoch, a task row per task, one checkpoint kept
        d = next(d for d in trial_dirs(exp).values() if d.name.startswith(f"t{c['index']:04d}_"))
        r = rows(d)
        assert [x["kind"] for x in r] == ["epoch", "task"] * 3
        assert [x["tasks_done"] for x in r if x["kind"] == "task"] == [1, 2, 3]
        assert [x["seen_acc"] for x in r if x["kind"] == "epoch"] == [e["seen_acc"] for e in ref.epochs]
        assert len(list(d.glob("checkpoint_*"))) == 1


def test_failing_trial_fails_alone_exit_1(tmp_path, ray_address, capsys):
    path = write(tmp_path, "diverge", """\
        name: diverge
        grid: {train.lr: [0.1, 1.0e6]}
        seeds: [0, 1]
        """)
    code = main(["sweep", str(path), *cli_args(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    exp = tmp_path / "ray_results" / "diverge"
    finals = {d.name: [x for x in rows(d) if "final_avg_acc" in x] for d in trial_dirs(exp).values()}
    assert len(finals) == 4
    ok = [n for n, f in finals.items() if f]
    assert len(ok) == 2  # the two lr=0.1 trials finished despite the failures
    assert all(json.loads((exp / n / "params.json").read_text())["factors"]["train.lr"] == 0.1 for n in ok)
    failed_lines = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert len(failed_lines) == 2 and all("DivergedError" in ln and "train.lr=1e+06" in ln for ln in failed_lines)
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("train.lr=1e+06"))
    assert line.split()[1:4] == ["2", "0", "2"]  # n, ok, failed


def test_trial_that_fits_no_node_is_bad_input(tmp_path, ray_address, capsys):
    path = write(tmp_path, "gpu", "name: gpu\nresources: {cpu: 1, gpu: 0.5}\n")
    assert main(["sweep", str(path), *cli_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resources" in err and "no Ray node has that" in err and "--num-gpus" in err
    assert not list((tmp_path / "ray_results").glob("gpu/t*"))  # no trial started


def test_optuna_search_runs_num_samples(tmp_path, ray_address):
    (tmp_path / "space.yaml").write_text("train.lr: {loguniform: [0.01, 0.3]}\nmixing.alpha: {uniform: [0.2, 2.0]}\n")
    path = write(tmp_path, "hpo", """\
        name: hpo
        search: {space: space.yaml, algorithm: optuna, num_samples: 3}
        seeds: [0]
        """, base=BASE + "  method: er_mixup\n")
    study = sweep.load_study(path, storage=str(tmp_path / "rr"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert study.trials == [] and study.num_trials == 3
    out = sweep.run_study(study, reports_dir=str(tmp_path / "reports"))
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
    path = write(tmp_path, "asha", """\
        name: asha
        grid: {train.lr: [0.1, 1.0e-6]}
        seeds: [0, 1]
        scheduler: {type: asha, time_attr: tasks_done, grace_period: 1, reduction_factor: 2}
        """)
    code = main(["sweep", str(path), *cli_args(tmp_path), "--max-concurrent", "1"])
    assert code == 0  # stopped early is not a failure
    exp = tmp_path / "ray_results" / "asha"
    by_index = {int(n[1:5]): rows(d) for n, d in trial_dirs(exp).items()}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert any("final_avg_acc" in x for x in by_index[0])  # the first strong trial ran to the end
    for i in (1, 3):  # lr=1e-6 barely learns: ASHA stops it at the first rung
        tasks = [x["tasks_done"] for x in by_index[i] if x["kind"] == "task"]
        assert tasks and max(tasks) < 3, tasks
        assert not any("final_avg_acc" in x for x in by_index[i])


# ---------------------------------------------------------------------------------------- resume
def persisted(exp: Path) -> dict[str, tuple[str, int]]:
    """What a resume starts from: the study's saved state, trial id -> (status, tasks checkpointed).
    Loading it turns RUNNING into PENDING: a resume continues those."""
    import logging

    from ray.tune import ExperimentAnalysis

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # "no result.json yet"
    if not list(exp.glob("experiment_state-*.json")):
        return {}
    out = {}
    for t in ExperimentAnalysis(str(exp)).trials:
        ckpt = t.checkpoint
        out[t.trial_id] = (t.status, int(Path(ckpt.path).name.split("_")[1]) + 1 if ckpt else 0)
    return out


def test_killed_study_resumes_without_rerunning(tmp_path, ray_address):
    path = write(tmp_path, "killme", base="", text="""\
        name: killme
        base:
          data: {name: digits, tasks: 5}
          model: {name: mlp}
          train: {epochs: 3, batch_size: 10}
          memory: {size: 100}
        grid: {method: [er, er_mixup, gradmix]}
        seeds: [0, 1]
        """)
    args = [sys.executable, "-m", "gradmix_tune", "sweep", str(path), *cli_args(tmp_path),
            "--address", ray_address, "--max-concurrent", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    exp = tmp_path / "ray_results" / "killme"
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    try:
        while True:  # kill once the saved state has two finished trials and one part-way through
            assert proc.poll() is None, "ended before the kill: " + (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            finished = sum(any("final_avg_acc" in x for x in rows(d)) for d in trial_dirs(exp).values())
            if finished >= 2:
                state = persisted(exp)
                st = [v[0] for v in state.values()]
                if st.count("TERMINATED") >= 2 and any(s == "PENDING" and k >= 1 for s, k in state.values()):
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    state = persisted(exp)  # as the driver left it
    before = {n: (d / "result.json").read_bytes() for n, d in trial_dirs(exp).items() if (d / "result.json").exists()}
    ids = {n.split("_")[1]: n for n in trial_dirs(exp)}
    finished = {ids[i] for i, (s, _) in state.items() if s == "TERMINATED"}
    partial = {ids[i]: k for i, (s, k) in state.items() if s == "PENDING" and k >= 1}
    assert len(finished) >= 2 and partial and len(finished) < 6

    res = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "resuming study killme" in res.stdout and "6/6 done" in res.stdout
    after = trial_dirs(exp)
    # every trial the saved state knew keeps its id; one created in the instant before the kill
    # (never saved) starts again under a new id and leaves no empty folder behind
    assert len(after) == 6 and {ids[i] for i in state} <= set(after), (sorted(ids), sorted(after))
    study = sweep.load_study(path)
    for n, d in after.items():
        r = rows(d)
        finals = [x for x in r if "final_avg_acc" in x]
        assert len(finals) == 1, (n, len(finals))  # every trial ends exactly once
        if n in finished:  # finished before the kill: not run again
            assert (d / "result.json").read_bytes() == before[n]
        if n in partial:  # interrupted: continued at its last checkpointed task, not from task 0
            old = before[n].decode().count("\n")
            assert r[old]["task"] == partial[n] and r[old]["kind"] == "epoch", (partial[n], r[old])
            assert [x["tasks_done"] for x in r[old:] if x["kind"] == "task"] == list(range(partial[n] + 1, 6))
        cfg = json.loads((d / "params.json").read_text())
        assert cfg == study.trials[cfg["index"]]
        # resumed or not, the result is the one an uninterrupted run gives
        assert finals[0]["final_avg_acc"] == reference(cfg["config"]).final_avg_acc


# ---------------------------------------------------------------------------------------- bad input
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
    """Every malformed file: exit code 2, a message naming the file and key, and ray never imported.
    All cases run in one fresh interpreter (so `ray` in sys.modules means Ray was reached)."""
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
    good.write_text(BASE + "name: good\ngrid: {memory.size: [60, 100]}\nseeds: 2\n")
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
            out[name] = {{"rc": rc, "err": err.getvalue(), "ray": "ray" in sys.modules}}
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
    assert dry["rc"] == 0 and not dry["ray"]
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
        assert text.startswith("#") and "GPU" in text.split("\n\n")[0] and "CPU" in text.split("\n\n")[0], f
        study = sweep.load_study(f, data_root="/nonexistent-data-root")
        assert study.name == f.stem and study.num_trials >= 1
    assert any(sweep.load_study(f).search for f in files)  # the HPO example
    quick = sweep.load_study(ROOT / "ablations" / "quickstart.yaml")
    assert quick.num_trials == 18 and quick.base["data"]["name"] == "digits"
    assert {t["factors"]["method"] for t in quick.trials} == {"er", "er_mixup", "gradmix"}
    with pytest.raises(ConfigError):
        sweep.load_study(ROOT / "ablations" / "quickstart.yaml", overrides=["memory.size=5"])
