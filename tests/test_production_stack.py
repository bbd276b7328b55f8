"""The README's production stack, run for real on this machine (issue 15).

- An `mlflow server` with its runs in PostgreSQL and its artifacts in S3 (a local S3 server:
  moto): a real study logs to it over HTTP, its runs and metrics are in PostgreSQL, its
  artifacts in the bucket, and `gradmix-tune report` rebuilds the report from the server alone.
  The driver has no S3 settings at all: only the server talks to S3.
- Ray storage on s3:// (the same S3 server, reached through pyarrow's S3 file system with
  AWS_ENDPOINT_URL): a study checkpoints there, its driver is SIGKILLed after a trial has
  finished, and `--resume` finishes it from the bucket without running any trial twice.

The services come from tests/services.py (session fixtures; skipped only when not installed).
The drivers run as subprocesses joining one local Ray (2 CPUs) whose workers have the S3
settings, as a cluster's nodes would.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services import mlflow_server, postgres, s3  # noqa: F401 - pytest fixtures

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

BASE = """\
base:
  data: {name: digits, tasks: 3}
  model: {name: mlp, hidden: [32]}
  train: {epochs: 2, batch_size: 10, lr: 0.1}
  memory: {size: 60}
"""


def ablation(tmp_path: Path, name: str, body: str, base: str = BASE) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\n" + base + textwrap.dedent(body))
    return p


def driver_env(**extra) -> dict:
    """The driver's environment: no S3 or MLflow settings of ours unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def gradmix(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`gradmix-tune ARGS` in a child process; past the timeout it is killed and the test fails
    with what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"gradmix-tune {' '.join(args)} did not end in {timeout:g} s:\n{out[-3000:]}\n{err[-5000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def s3_ray(s3):
    """A local Ray (2 CPUs) whose workers can reach the S3 server (AWS_ENDPOINT_URL and keys in
    their environment, as on a cluster's nodes); drivers join it with --address."""
    import ray

    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # address="local": a new Ray of its own, even while a `ray start` cluster runs on the machine
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- MLflow on PostgreSQL + S3
def test_study_logs_to_mlflow_server_on_postgres_and_s3(tmp_path, mlflow_server, s3_ray):
    from mlflow.tracking import MlflowClient

    path = ablation(tmp_path, "prod_mlflow", """\
        grid: {method: [er, gradmix]}
        seeds: [0]
        """)
    env = driver_env()  # no AWS_*: artifacts go through the server
    res = gradmix("sweep", str(path), "--tracking-uri", mlflow_server.url, "--address", s3_ray,
                  "--storage", str(tmp_path / "ray_results"), "--reports", str(tmp_path / "reports"), env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2/2 done" in res.stdout and f"tracking {mlflow_server.url}" in res.stdout

    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("prod_mlflow")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [r.info.run_name for r in runs]
    for r in children:
        assert r.info.status == "FINISHED"
        assert 0 < r.data.metrics["final_avg_acc"] <= 1
        name = "task/avg_acc" if "task/avg_acc" in r.data.metrics else "avg_acc"  # per task (tracking/runlog.py)
        history = client.get_metric_history(r.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2, 3], (name, [(m.step, m.value) for m in history],
                                                              sorted(r.data.metrics))  # one point per task
        assert "config.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert sorted(r.data.tags["arm"] for r in children) == ["method=er", "method=gradmix"]

    # the runs are rows in PostgreSQL (not a file store), the artifacts objects in the bucket
    import psycopg

    with psycopg.connect(mlflow_server.postgres.uri) as conn:
        n = conn.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                         (int(exp.experiment_id),)).fetchone()[0]
        metrics = conn.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                               "WHERE r.experiment_id = %s AND m.key = 'final_avg_acc'",
                               (int(exp.experiment_id),)).fetchone()[0]
    assert n == 3 and metrics == 2
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    keys = mlflow_server.s3.keys(f"mlflow/{exp.experiment_id}/")
    for r in children:
        assert f"mlflow/{exp.experiment_id}/{r.info.run_id}/artifacts/config.yaml" in keys, sorted(keys)[:20]
        assert f"mlflow/{exp.experiment_id}/{r.info.run_id}/artifacts/accuracy_matrix.png" in keys
    parent = parents[0].info.run_id
    assert f"mlflow/{exp.experiment_id}/{parent}/artifacts/report/report.md" in keys  # the sweep's report

    # the report, rebuilt from the server alone (another folder, nothing local to read)
    out = tmp_path / "rebuilt"
    rep = gradmix("report", "prod_mlflow", "--tracking-uri", mlflow_server.url, "--out", str(out), env=env,
                  timeout=180)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    text = (out / "prod_mlflow" / "report.md").read_text()
    assert "method=er" in text and "method=gradmix" in text
    assert (out / "prod_mlflow" / "report.html").exists()
    summary = json.loads((out / "prod_mlflow" / "summary.json").read_text())
    assert "2 runs" in rep.stdout and summary


# ---------------------------------------------------------------------------- Ray storage on s3://
def saved_state(s3, prefix: str) -> dict[str, tuple[str, int]]:
    """Ray's newest saved state of the study in the bucket: trial id -> (status, tasks done at
    its last result). What a --resume starts from."""
    states = sorted(k for k in s3.keys(prefix) if k.rsplit("/", 1)[-1].startswith("experiment_state-"))
    if not states:
        return {}
    try:
        data = json.loads(s3.read(states[-1]))
    except ValueError:  # being written
        return {}
    out = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        out[trial["trial_id"]] = (trial["status"], int((meta.get("last_result") or {}).get("tasks_done") or 0))
    return out


def trial_results(s3, prefix: str) -> dict[str, list[dict]]:
    """Trial folder name -> the rows of its result.json in the bucket."""
    out = {}
    for key in s3.keys(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 2 and parts[1] == "result.json" and parts[0].startswith("t"):
            out[parts[0]] = [json.loads(x) for x in s3.read(key).decode().splitlines() if x.strip()]
    return out


def trial_dirs_in(s3, prefix: str) -> set[str]:
    """The trial folders (t<index>_<id>) under the study's prefix in the bucket."""
    return {k[len(prefix):].split("/")[0] for k in s3.keys(prefix)
            if re.match(r"t\d{4}_", k[len(prefix):]) and "/" in k[len(prefix):]}


def test_s3_storage_study_killed_and_resumed(tmp_path, s3, s3_ray):
    path = ablation(tmp_path, "prod_s3", """\
        base:
          data: {name: digits, tasks: 4}
          model: {name: mlp, hidden: [32]}
          train: {epochs: 3, batch_size: 10, lr: 0.1}
          memory: {size: 60}
        grid: {method: [er, er_mixup, gradmix]}
        seeds: [0]
        """, base="")
    storage = f"s3://{s3.bucket}/ray"
    prefix = "ray/prod_s3/"
    args = ["sweep", str(path), "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--reports", str(tmp_path / "reports"), "--address", s3_ray, "--max-concurrent", "1"]
    env = driver_env(**s3.env)  # pyarrow's S3 file system reads AWS_ENDPOINT_URL and the keys
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    try:  # kill once the bucket's saved state has a finished trial and one part-way through
        while True:
            assert proc.poll() is None, "ended before the kill: " + (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time: " + \
                (tmp_path / "driver.log").read_text()[-3000:]
            state = saved_state(s3, prefix)
            done = [t for t, (st, _) in state.items() if st == "TERMINATED"]
            partial = {t: k for t, (st, k) in state.items() if st in ("RUNNING", "PENDING") and 1 <= k < 4}
            if done and partial:
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (it joined the Ray above: its trials go on
        proc.wait()                          # until Ray sees the driver gone, then stop)
        log.close()
    assert storage in (tmp_path / "driver.log").read_text()
    # what the bucket holds at the kill: every checkpoint object, by key, with its ETag and time
    objects = {k: e for k, e in s3.etags(prefix).items() if "/checkpoint_" in k}
    assert objects  # the checkpoints are in the bucket
    finished = {n for n in trial_results(s3, prefix) if n.split("_", 1)[1] in done}
    assert finished

    # what a killed driver can also leave in the bucket: a checkpoint a worker wrote whose result the
    # driver never recorded (here: a copy of the interrupted trial's newest, under a later index),
    # and the folder of a trial it created but never saved (params.json only)
    client = s3.client()
    part_dir = next(n for n in trial_dirs_in(s3, prefix) if n.split("_", 1)[1] in partial)
    newest = max(k[len(prefix):].split("/")[1] for k in objects if k.startswith(prefix + part_dir + "/checkpoint_"))
    stale = f"checkpoint_{int(newest.split('_')[1]) + 50:06d}"
    for k in [k for k in objects if k.startswith(f"{prefix}{part_dir}/{newest}/")]:
        client.copy_object(Bucket=s3.bucket, Key=k.replace(f"/{newest}/", f"/{stale}/"),
                           CopySource={"Bucket": s3.bucket, "Key": k})
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}t0003_0000dead/params.json", Body=b"{}")

    res = gradmix(*args, "--resume", env=env, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resuming study prod_s3 from {storage}/prod_s3" in res.stdout and "3/3 done" in res.stdout
    # cleaned up in the bucket as on a local disk: one trial folder a trial, one checkpoint each
    # (its final one); the unrecorded checkpoint was never restored from, and is gone
    ckpts = {}
    for key in s3.keys(prefix):
        name, _, rest = key[len(prefix):].partition("/")
        if rest.startswith("checkpoint_"):
            ckpts.setdefault(name, set()).add(rest.split("/")[0])
    assert len(trial_dirs_in(s3, prefix)) == 3, sorted(trial_dirs_in(s3, prefix))
    assert all(len(v) == 1 for v in ckpts.values()) and stale not in ckpts[part_dir], ckpts

    after = trial_results(s3, prefix)
    finals = {}
    for name, rows in after.items():
        ends = [r for r in rows if "final_avg_acc" in r]
        assert len(ends) <= 1, (name, len(ends))  # no trial ends twice
        if ends:
            finals.setdefault(ends[0]["config"]["index"], []).append(name)
    assert sorted(finals) == [0, 1, 2] and all(len(v) == 1 for v in finals.values()), finals  # each trial once
    now = s3.etags(prefix)
    for name in finished:  # finished before the kill: not run again (its checkpoints not written again)
        mine = {k: e for k, e in objects.items() if k.startswith(prefix + name + "/")}
        assert mine and all(now.get(k) == e for k, e in mine.items()), name
        assert not any(r.get("iterations_since_restore") == 1 and r.get("training_iteration", 0) > 1
                       for r in after[name])
    # the interrupted trial continued from its checkpoint in the bucket, not from task 1: Ray
    # restored it (iterations_since_restore starts again at 1 with training_iteration > 1) at a
    # task after the first, and it went on to the last task
    resumed = [name for name in after if name.split("_", 1)[1] in partial]
    assert resumed, (partial, sorted(after))
    for name in resumed:
        rows = after[name]
        restored = [r for r in rows if r.get("iterations_since_restore") == 1 and r.get("training_iteration", 0) > 1]
        assert restored and restored[0]["task"] >= 1, [(r.get("kind"), r.get("task"),
                                                          r.get("training_iteration")) for r in rows]
        tasks = [r["tasks_done"] for r in rows if r.get("kind") == "task"]
        assert tasks and tasks[-1] == 4 and set(range(restored[0]["task"] + 1, 5)) <= set(tasks), tasks
    for name in after:  # each trial's last checkpoint is in the bucket
        assert any(k.startswith(f"{prefix}{name}/checkpoint_") and k.endswith("learner.pt") for k in now), name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("prod_s3")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}  # resumed in the same runs


def test_unsent_entries_are_kept_in_s3_storage_and_resume_from_another_folder_sends_them(tmp_path, s3, s3_ray):
    """Ray storage on s3:// and a tracking server that is down for the whole study: what MLflow did
    not take is kept in the bucket (<storage>/<study>/mlflow-unsent/), not only on the driver's
    disk. A --resume from another folder (another machine's view: no local copy) fetches it from
    the bucket and sends it to the store it is given; nothing is sent twice."""
    from services import free_port

    path = ablation(tmp_path, "prod_unsent", "grid: {method: [er]}\nseeds: [0]\n")
    storage = f"s3://{s3.bucket}/kept"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = driver_env(GRADMIX_MLFLOW_WAIT_S="2", **s3.env)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    def sweep(cwd, uri, *extra):
        return subprocess.run([sys.executable, "-m", "gradmix_tune", "sweep", str(path), "--storage", storage,
                               "--tracking-uri", uri, "--reports", str(tmp_path / "reports"), "--address", s3_ray,
                               *extra], cwd=cwd, env=env, text=True, capture_output=True, timeout=300)

    res = sweep(first, dead)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tracking incomplete" in res.stdout and f"{storage}/prod_unsent/mlflow-unsent/" in res.stdout
    kept = [k for k in s3.keys("kept/prod_unsent/mlflow-unsent/") if k.endswith("/unsent.jsonl")]
    assert len(kept) == 1, s3.keys("kept/prod_unsent/")
    assert any(k.endswith("config.yaml") for k in s3.keys("kept/prod_unsent/mlflow-unsent/"))

    uri = f"sqlite:///{tmp_path}/later.db"
    res = sweep(second, uri, "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"to {uri}" in res.stdout and "replayed" in res.stdout
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("prod_unsent").experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(trials[0].info.run_id, "task/avg_acc")] == [1, 2, 3]
    res = sweep(second, uri, "--resume")  # the bucket's file is marked sent to this store: not again
    assert res.returncode == 0 and "replayed" not in res.stdout, res.stdout[-3000:]
    assert len(c.search_runs([c.get_experiment_by_name("prod_unsent").experiment_id])) == len(runs)
