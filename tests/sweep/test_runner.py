"""sweep/runner.py (run_study and `gradmix-tune sweep`) on a real local Ray (2 CPUs, no dashboard) and
the offline digits data: trials equal single runs, a failing trial fails alone, a trial that fits no
node is bad input, a killed study resumes without re-running finished trials.

One Ray is started for the module; the CLI runs in-process (it joins that Ray) or, where the test
needs to kill the driver, in a subprocess that joins it with --address.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradmix_tune.cli import main
from gradmix_tune.sweep import load_study, run_study
from gradmix_tune.results import unpack
from helpers import Driver, reference, rows, sweep_cli_args, trial_dirs, write_ablation

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------- studies
def test_study_trials_equal_single_runs(tmp_path, ray_address, capsys):
    path = write_ablation(tmp_path, "four", """\
        name: four
        grid: {method: [er, gradmix]}
        seeds: [0, 1]
        """)
    study = load_study(path, storage=str(tmp_path / "rr"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert [(t["arm"], t["seed"]) for t in study.trials] == [
        ("method=er", 0), ("method=gradmix", 0), ("method=er", 1), ("method=gradmix", 1)]
    out = run_study(study, reports_dir=str(tmp_path / "reports"))
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
    path = write_ablation(tmp_path, "diverge", """\
        name: diverge
        grid: {train.lr: [0.1, 1.0e6]}
        seeds: [0, 1]
        """)
    code = main(["sweep", str(path), *sweep_cli_args(tmp_path)])
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
    path = write_ablation(tmp_path, "gpu", "name: gpu\nresources: {cpu: 1, gpu: 0.5}\n")
    assert main(["sweep", str(path), *sweep_cli_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resources" in err and "no Ray node has that" in err and "--num-gpus" in err
    assert not list((tmp_path / "ray_results").glob("gpu/t*"))  # no trial started



# ---------------------------------------------------------------------------------------- resume
def persisted(exp: Path) -> dict[str, tuple[str, int]]:
    """What a resume starts from: the study's saved state, trial id -> (status, tasks checkpointed).
    Loading it turns RUNNING into PENDING: a resume continues those."""
    import logging

    from ray.tune import ExperimentAnalysis

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # "no result.json yet"
    if not list(exp.glob("experiment_state-*.json")):
        return {}
    out = {}  # read whole: Ray's copies of its state are atomic (ray_compat.atomic_state_uploads)
    for t in ExperimentAnalysis(str(exp)).trials:
        ckpt = t.checkpoint
        out[t.trial_id] = (t.status, int(Path(ckpt.path).name.split("_")[1]) + 1 if ckpt else 0)
    return out


def test_killed_study_resumes_without_rerunning(tmp_path, ray_address):
    path = write_ablation(tmp_path, "killme", base="", text="""\
        name: killme
        base:
          data: {name: digits, tasks: 5}
          model: {name: mlp}
          train: {epochs: 3, batch_size: 10}
          memory: {size: 100}
        grid: {method: [er, er_mixup, gradmix]}
        seeds: [0, 1]
        """)
    exp = tmp_path / "ray_results" / "killme"
    driver = Driver(["sweep", str(path), *sweep_cli_args(tmp_path), "--address", ray_address,
                     "--max-concurrent", "2"], tmp_path)

    def two_finished_one_partway():  # in the saved state: two trials finished and one part-way through
        if sum(any("final_avg_acc" in x for x in rows(d)) for d in trial_dirs(exp).values()) < 2:
            return False
        state = persisted(exp)
        st = [v[0] for v in state.values()]
        return st.count("TERMINATED") >= 2 and any(s == "PENDING" and k >= 1 for s, k in state.values())

    driver.kill_when(two_finished_one_partway, 120, "two trials finished and one part-way")
    state = persisted(exp)  # as the driver left it
    before = {n: (d / "result.json").read_bytes() for n, d in trial_dirs(exp).items() if (d / "result.json").exists()}
    ids = {n.split("_")[1]: n for n in trial_dirs(exp)}
    finished = {ids[i] for i, (s, _) in state.items() if s == "TERMINATED"}
    partial = {ids[i]: k for i, (s, k) in state.items() if s == "PENDING" and k >= 1}
    assert len(finished) >= 2 and partial and len(finished) < 6

    res = driver.resume(timeout_s=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "resuming study killme" in res.stdout and "6/6 done" in res.stdout
    after = trial_dirs(exp)
    # every trial the saved state knew keeps its id; one created in the instant before the kill
    # (never saved) starts again under a new id and leaves no empty folder behind
    # (a trial saved as PENDING may have had no folder yet when the driver was killed)
    assert len(after) == 6 and set(state) <= {n.split("_")[1] for n in after}, (sorted(state), sorted(after))
    study = load_study(path)
    for n, d in after.items():
        r = rows(d)
        finals = [x for x in r if "final_avg_acc" in x]
        assert len(finals) == 1, (n, len(finals))  # every trial ends exactly once
        if n in finished:  # finished before the kill: not run again
            assert (d / "result.json").read_bytes() == before[n]
        if n in partial:  # interrupted: continued at its last recorded task, not from task 0
            had = [x for ln in before[n].decode().splitlines() if ln.strip() for x in unpack(json.loads(ln))]
            # result.json can be ahead of the saved state (Ray saves its state on a timer): the
            # trial continues from the newest task whose result is recorded, or, if it had ended,
            # is restored to its final checkpoint and runs and reports nothing again
            last = max([x["tasks_done"] for x in had if x["kind"] == "task"], default=0)
            assert last >= partial[n], (partial[n], last)
            if last == 5:
                assert len(r) == len(had), n
            else:
                assert r[len(had)]["task"] == last and r[len(had)]["kind"] == "epoch", (last, r[len(had)])
                assert [x["tasks_done"] for x in r[len(had):] if x["kind"] == "task"] == list(range(last + 1, 6))
        cfg = json.loads((d / "params.json").read_text())
        assert cfg == study.trials[cfg["index"]]
        # resumed or not, the result is the one an uninterrupted run gives
        assert finals[0]["final_avg_acc"] == reference(cfg["config"]).final_avg_acc
