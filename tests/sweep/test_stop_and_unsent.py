"""A study stopped by SIGTERM, and a study whose MLflow store went away for good, on a real local Ray,
real MLflow stores and the offline digits data:

- SIGTERM stops the trials, ends the MLflow runs KILLED (none left RUNNING), says how to resume and
  exits 143; `--resume` finishes the study in the same runs, without a duplicate metric. The finished
  study has what the README's "Comparing runs in the MLflow UI" recipe relies on.
- What the store did not take stays in the study's results folder; the final lines say so (exit 1,
  no claim that the report was logged); `--resume` sends it first; replaying it again adds nothing.
"""
from __future__ import annotations

import json
import signal

import pytest
from helpers import Driver, client, free_port, sweep_cli_args, write_ablation

from gradmix_tune.cli import main
from gradmix_tune.sweep import load_study, run_study
from gradmix_tune.tracking import ROLE

pytestmark = pytest.mark.integration


def runs(uri: str, experiment: str) -> list:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=1000) if exp else []


def test_sigterm_stops_the_study_and_resume_finishes_it_in_the_same_runs(tmp_path, ray_address):
    path = write_ablation(tmp_path, "stopme", base="", text="""\
        # Question: does a study stopped by SIGTERM resume to the same runs, without duplicates?
        name: stopme
        base:
          data: {name: digits, tasks: 4}
          model: {name: mlp, hidden: [32]}
          train: {epochs: 2, batch_size: 10}
          memory: {size: 60}
        grid: {method: [er, gradmix]}
        seeds: [0, 1]
        """)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tmp_path / "ray_results" / "stopme"
    driver = Driver(["sweep", str(path), *sweep_cli_args(tmp_path), "--address", ray_address,
                     "--max-concurrent", "2"], tmp_path)
    driver.wait_until(lambda: list(exp.glob("t*/checkpoint_*")), 180, "a task of some trial done (mid-study)")
    code = driver.stop(signal.SIGTERM)
    out = driver.output()
    assert code == 143, out[-3000:]
    assert f"gradmix-tune sweep {path} --resume" in out and "SIGTERM" in out
    stopped = runs(uri, "stopme")
    assert stopped and not [r.info.run_name for r in stopped if r.info.status == "RUNNING"], \
        [(r.info.run_name, r.info.status) for r in stopped]
    parent = next(r for r in stopped if r.data.tags.get(ROLE) == "parent")
    assert parent.info.status == "KILLED"
    assert any(r.info.status == "KILLED" for r in stopped if r.data.tags.get(ROLE) == "trial")

    res = driver.resume(timeout_s=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "resuming study stopme" in res.stdout and "4/4 done" in res.stdout
    c = client(uri)
    done = runs(uri, "stopme")
    parents = [r for r in done if r.data.tags.get(ROLE) == "parent"]
    kids = [r for r in done if r.data.tags.get(ROLE) == "trial"]
    assert [p.info.run_id for p in parents] == [parent.info.run_id], "the same parent run"
    assert sorted((r.data.tags["arm"], r.data.tags["seed"]) for r in kids) == \
        sorted((f"method={m}", str(s)) for m in ("er", "gradmix") for s in (0, 1)), "one run per trial"
    for r in done:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
    for r in kids:
        rid = r.info.run_id
        assert [m.step for m in c.get_metric_history(rid, "epoch/seen_acc")] == list(range(1, 9)), "no duplicate"
        assert [m.step for m in c.get_metric_history(rid, "task/avg_acc")] == [1, 2, 3, 4]
        assert len(c.get_metric_history(rid, "final_avg_acc")) == 1

    # what README "Comparing runs in the MLflow UI" relies on
    e = c.get_experiment_by_name("stopme")
    assert e.tags["mlflow.experimentKind"] == "custom_model_development", "the UI opens on the training runs"
    view = json.loads(e.tags["mlflow.sharedViewState.arms"])  # ?viewStateShareKey=arms
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "arm"}]
    assert "metrics.`final_avg_acc`" in view["selectedColumns"] and "gradmix.role" in view["searchFilter"]
    for r in kids:
        t = r.data.tags
        assert {"arm", "method", "seed", "study"} <= set(t) and t["method"] in ("er", "gradmix")
        assert r.info.run_name == f"{t['method']} seed={t['seed']}"
        assert "final_avg_acc" in r.data.metrics and r.data.params["memory.size"] == "60"
        (ds,) = r.inputs.dataset_inputs
        profile = json.loads(ds.dataset.profile)
        assert ds.dataset.name == "digits" and len(profile["class_order"]) == 10 and profile["tasks"] == 4
    note = parents[0].data.tags["mlflow.note.content"]
    assert "resume to the same runs, without duplicates?" in note and "**Findings**" in note, note


def test_an_outage_that_outlasts_the_study_is_kept_and_resume_sends_it(tmp_path, ray_address, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("GRADMIX_MLFLOW_WAIT_S", "2")  # how long the end waits for the store
    path = write_ablation(tmp_path, "kept", "name: kept\ngrid: {method: [er, gradmix]}\nseeds: [0]\n")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    study = load_study(path, storage=str(tmp_path / "rr"), tracking_uri=dead)
    out = run_study(study, reports_dir=str(tmp_path / "reports"))
    printed = capsys.readouterr().out
    assert out.exit_code == 1 and [t.status for t in out.trials] == ["ok", "ok"]
    (spill,) = sorted((tmp_path / "rr" / "kept" / "mlflow-unsent").glob("*/unsent.jsonl"))
    assert "tracking incomplete" in printed and f"gradmix-tune tracking replay {spill}" in printed
    assert "also logged" not in printed and not (tmp_path / "reports").exists(), "no report of a partial store"
    assert {p.name for p in spill.parent.glob("files/*/*")} >= {"config.yaml", "accuracy_matrix.png", "curve.png"}

    uri = f"sqlite:///{tmp_path}/later.db"
    study = load_study(path, storage=str(tmp_path / "rr"), tracking_uri=uri)
    out = run_study(study, resume=True, reports_dir=str(tmp_path / "reports"))
    printed = capsys.readouterr().out
    assert out.exit_code == 0, printed
    assert f"replayed {len(spill.read_text().splitlines())} entries of {spill} to {uri}" in printed
    assert "also logged to the study's MLflow run" in printed
    got = runs(uri, "kept")
    assert sorted(r.info.run_name for r in got) == ["er seed=0", "gradmix seed=0", "kept"]
    assert all(r.info.status == "FINISHED" for r in got)
    c = client(uri)
    for r in got:
        if r.data.tags.get(ROLE) == "trial":
            assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch/seen_acc")] == [1, 2, 3]
            assert {"config.yaml", "accuracy_matrix.png", "curve.png"} <= {a.path for a in c.list_artifacts(
                r.info.run_id)}
    # the file stays (it is the user's); sending it again writes nothing twice
    assert main(["tracking", "replay", str(spill), "--tracking-uri", uri]) == 0
    again = capsys.readouterr().out
    assert "0 runs created, 3 found again, 0 metric values, 0 artifacts, 0 datasets, 0 run ends" in again, again
    assert len(runs(uri, "kept")) == 3


def test_a_trials_config_error_reaches_its_line_and_run_with_its_message(tmp_path, ray_address, capsys):
    """Without the driver's check (preflight=False), a trial meets the missing dataset on its
    worker: the ConfigError crosses Ray's process boundary whole, so the progress line, the
    summary and the MLflow run say why (not `TypeError: __init__() missing 2 arguments`)."""
    path = write_ablation(tmp_path, "nodata", """\
        name: nodata
        base: {data: {name: mnist, download: false, tasks: 2}}
        grid: {method: [er]}
        seeds: [0]
        """, base="")
    uri = f"sqlite:///{tmp_path}/m.db"
    study = load_study(path, data_root=str(tmp_path / "empty"), storage=str(tmp_path / "rr"), tracking_uri=uri)
    out = run_study(study, reports_dir=str(tmp_path / "reports"), preflight=False)
    printed = capsys.readouterr().out
    assert out.exit_code == 1 and [t.status for t in out.trials] == ["failed"]
    assert "ConfigError" in out.trials[0].error and "mnist not found under" in out.trials[0].error
    assert "TypeError" not in printed and "FAILED: " in printed and "mnist not found under" in printed
    (run,) = [r for r in runs(uri, "nodata") if r.data.tags.get(ROLE) == "trial"]
    assert run.info.status == "FAILED" and "mnist not found under" in run.data.tags["error"]
