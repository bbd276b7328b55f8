"""Faults (issue 7), each on a real Ray (a local one, or a 2-node cluster on 127.0.0.1), a real
MLflow sqlite store and the offline digits data. Nothing under test is mocked; the faults are
real ones: a driver SIGKILLed in the instant Ray has deleted the checkpoint its saved state still
names (caught by pausing the driver with SIGSTOP and reading its saved state), checkpoint files
cut in half on disk, a Ray worker node removed mid-trial, a node in its own mount namespace that
cannot see the storage folder, storage under a regular file / read-only / on a full tmpfs, and a
learning rate that makes the loss NaN.

What test_runner.py and tests/tracking already cover (a trial that raises, a plain driver kill
and --resume, an MLflow outage, malformed ablation files) is not repeated here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradmix_tune.cli import main
from gradmix_tune.sweep import load_study
from gradmix_tune.sweep.checkpoints import CHECKPOINT_FILE
from helpers import reference, rows, trial_dirs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = str(Path(sys.executable).with_name("ray"))


def env() -> dict:
    """The environment for a driver or node started by a test: read when it starts (ray.init
    puts what joining the cluster needs, e.g. its auth token, into os.environ)."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# 5 tasks of digits: 5 checkpoints per trial, each trial well under a second per task
STUDY = """\
name: {name}
base:
  data: {{name: digits, tasks: 5}}
  model: {{name: mlp, hidden: [{hidden}]}}
  train: {{epochs: {epochs}, batch_size: 10, lr: 0.1}}
  memory: {{size: 60}}
grid: {{method: [{methods}]}}
seeds: [{seeds}]
max_failures: {max_failures}
"""


def study_file(tmp_path: Path, name: str, methods="er, gradmix", seeds="0, 1", hidden="32", epochs=1,
               max_failures=0) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(STUDY.format(name=name, methods=methods, seeds=seeds, hidden=hidden, epochs=epochs,
                              max_failures=max_failures))
    return p


def sweep_args(tmp_path: Path, ablation: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gradmix_tune", "sweep", str(ablation), "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--reports", str(tmp_path / "reports"),
            "--address", address, *extra]


def task_rows(r: list[dict]) -> list[int]:
    return [x["tasks_done"] for x in r if x.get("kind") == "task"]


def finals(r: list[dict]) -> list[dict]:
    return [x for x in r if "final_avg_acc" in x]


def saved_state(exp: Path) -> list[tuple[str, str, str | None]] | None:
    """Ray's saved state of the study, as --resume will read it: (trial id, status, checkpoint
    path) per trial. None while there is none (or it is being written)."""
    from ray.tune import ExperimentAnalysis

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if not list(exp.glob("experiment_state-*.json")):
        return None
    try:
        trials = ExperimentAnalysis(str(exp)).trials
    except Exception:  # noqa: BLE001 - caught mid-write: look again later
        return None
    return [(t.trial_id, t.status, t.checkpoint.path if t.checkpoint else None) for t in trials]


def kill_driver_when(proc: subprocess.Popen, exp: Path, condition, timeout: float = 120):
    """Pause the driver (SIGSTOP) at random moments and read its saved state while it cannot
    change; SIGKILL it the first time `condition(state)` holds, else let it go on (SIGCONT).
    Returns the state it was killed in, or None when the study ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("the driver ran too long")
        time.sleep(random.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGSTOP)
        killed = False
        try:
            state = saved_state(exp)
            if state and condition(state):
                proc.send_signal(signal.SIGKILL)
                killed = True
        finally:
            proc.send_signal(signal.SIGCONT)
        if killed:
            proc.wait()
            return state
    return None


def mlflow_children(tmp_path: Path, study: str) -> dict[str, object]:
    """trial id -> its MLflow child run. A run of a trial that a killed driver created but never
    saved (Ray creates it again under a new id on --resume) must end KILLED, marked superseded."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], "tags.`gradmix.role` = 'trial'", max_results=1000)
    out: dict[str, object] = {}
    for r in runs:
        if r.data.tags.get("superseded") == "true":
            assert r.info.status == "KILLED", r.info
            continue
        assert r.data.tags["trial_id"] not in out, "two runs for one trial"
        out[r.data.tags["trial_id"]] = r
    return out




def can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---------------------------------------------------------------------------- a 2-node cluster
@pytest.fixture(scope="class")
def cluster(tmp_path_factory):
    """ray.cluster_utils.Cluster on 127.0.0.1: a head with no CPUs (nothing runs there) and one
    worker node with 1 CPU, so the node that runs a trial is known. Class-scoped: it is gone
    before the tests that use a plain local Ray start one (2 cores cannot host both).
    Its nodes run without token auth (RAY_AUTH_MODE=disabled, which every node started in the
    class inherits; a local ray.init earlier in this process sets token mode in os.environ),
    while the drivers under test have a token on hand and no RAY_AUTH_MODE (driver_env): the
    case of a machine that once ran Ray locally joining a cluster started without tokens."""
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the nodes' workers inherit it
    os.environ["RAY_AUTH_MODE"] = "disabled"
    token = tmp_path_factory.mktemp("ray_token") / "auth_token"
    token.write_text("0123456789abcdef" * 4)
    os.environ["GRADMIX_TEST_DRIVER_TOKEN"] = str(token)
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        c.worker = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        os.environ.clear()  # Cluster sets RAY_ADDRESS: later ray.init calls must not join it
        os.environ.update(saved)


def driver_env() -> dict:
    """A driver joining the `cluster` fixture's nodes: a token on hand, RAY_AUTH_MODE unset."""
    e = env()
    e.pop("RAY_AUTH_MODE", None)
    e["RAY_AUTH_TOKEN_PATH"] = e.pop("GRADMIX_TEST_DRIVER_TOKEN")
    return e


class TestTwoNodeCluster:
    """Faults of a 2-node Ray cluster on this machine (ray.cluster_utils.Cluster)."""

    def test_lost_worker_node_trial_retried_from_its_last_checkpoint(self, tmp_path, cluster):
        """Kill the node running trial 0 after its 2nd task: Ray retries it (max_failures: 1) on a new
        node from the checkpoint of task 2; the study completes with both trials, results exact."""
        path = study_file(tmp_path, "nodeloss", methods="er", hidden="100, 100", epochs=4, max_failures=1)
        exp = tmp_path / "rr" / "nodeloss"
        log = tmp_path / "driver.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(sweep_args(tmp_path, path, cluster.address), cwd=ROOT, env=driver_env(), stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 180
                killed_at, pid = None, None
                while killed_at is None:
                    assert proc.poll() is None, "ended before the node was killed:\n" + log.read_text()[-3000:]
                    assert time.monotonic() < deadline, "trial 0 did not get going:\n" + log.read_text()[-3000:]
                    for name, d in trial_dirs(exp).items():
                        r = rows(d)
                        if name.startswith("t0000_") and task_rows(r) and max(task_rows(r)) >= 2:
                            assert not finals(r), "trial 0 ended before the kill: make it longer"
                            cluster.remove_node(cluster.worker)  # the only node with a CPU: trial 0's
                            killed_at, pid = max(task_rows(r)), r[-1]["pid"]
                            break
                    time.sleep(0.005)
                cluster.worker = cluster.add_node(num_cpus=1)  # somewhere to run the retry
                proc.wait(timeout=240)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        assert "2/2 done" in text and "failed, retrying from its last checkpoint" in text, text[-3000:]
        with pytest.raises(ProcessLookupError):  # the trial's worker went with its node
            os.kill(pid, 0)
        dirs = trial_dirs(exp)
        assert len(dirs) == 2
        t0 = rows(next(d for n, d in dirs.items() if n.startswith("t0000_")))
        first = [x for x in t0 if x["pid"] == pid]
        again = [x for x in t0 if x["pid"] != pid]
        # the rows of the killed worker end at (or one task after) the kill; the retry continues
        # from the last checkpoint that worker wrote, i.e. it redoes no finished task
        last_ckpt = max(task_rows(first))
        assert last_ckpt >= killed_at
        assert again and again[0]["kind"] == "epoch" and again[0]["task"] == last_ckpt, again[:1]
        assert task_rows(again) == list(range(last_ckpt + 1, 6))
        assert task_rows(t0) == [1, 2, 3, 4, 5]  # every task's result once: none lost, none redone
        study = load_study(path)
        for d in dirs.values():
            r = rows(d)
            assert len(finals(r)) == 1
            cfg = json.loads((d / "params.json").read_text())
            assert finals(r)[0]["final_avg_acc"] == reference(cfg["config"]).final_avg_acc  # exact, resumed or not
            assert cfg == study.trials[cfg["index"]]

    @pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare -m` (root) for a node with its own mounts")
    def test_node_that_cannot_see_the_storage_is_refused(self, tmp_path, cluster):
        """A third node joins in its own mount namespace, where a tmpfs hides the storage folder (as
        on a machine without the NFS mount): the sweep exits 2 with one line naming that node, and
        starts no trial. (The node-loss test above shows the same check passing on shared storage.)"""
        hidden = tmp_path / "shared"
        hidden.mkdir()
        node_log = tmp_path / "node.log"
        with open(node_log, "w") as log:
            node = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount -t tmpfs tmpfs {hidden} && exec {RAY_BIN} start --address={cluster.address} --num-cpus=1 "
                 "--block --disable-usage-stats"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env())
        try:
            deadline = time.monotonic() + 90
            while "Ray runtime started" not in node_log.read_text():
                assert node.poll() is None and time.monotonic() < deadline, node_log.read_text()[-2000:]
                time.sleep(0.2)
            path = study_file(tmp_path, "blind", methods="er", seeds="0")
            res = subprocess.run([sys.executable, "-m", "gradmix_tune", "sweep", str(path), "--storage",
                                  str(hidden / "rr"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                                  "--address", cluster.address], cwd=ROOT, env=driver_env(), capture_output=True, text=True,
                                 timeout=180)
        finally:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(60)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        err = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
        assert "cannot see the results folder" in err[0] and str(hidden / "rr") in err[0], err[0]
        assert "1 of them" in err[0] and "(node " in err[0] and "shared storage" in err[0], err[0]
        assert not list((hidden / "rr").glob("blind/t*")), "a trial started"


# ---------------------------------------------------------------------------- checkpoints
def test_killed_in_the_checkpoint_race_resumes(tmp_path, ray_address):
    """The reported bug: with CheckpointConfig(num_to_keep=1) Ray deletes a trial's previous
    checkpoint as soon as it registers the next one, but saves its state (naming the checkpoint
    to restore from) a moment later. Kill the driver in that moment, for real: --resume used to fail the trial with "Could
    not recover from checkpoint as it does not exist on storage anymore". Now the trial continues
    from the newest checkpoint whose result is in its result.json, else starts over, says so,
    and every trial ends once with the result of an uninterrupted run, logged once in MLflow."""
    path = study_file(tmp_path, "race")
    exp = tmp_path / "rr" / "race"
    args = sweep_args(tmp_path, path, ray_address, "--max-concurrent", "2")

    def raced(state):
        return {tid: ck for tid, st, ck in state if st not in ("TERMINATED", "ERROR") and ck and not os.path.exists(ck)}

    state = None
    for attempt in range(4):  # the window is a few ms per checkpoint; a study run nearly always hits it
        with open(tmp_path / "driver.log", "w") as out:
            proc = subprocess.Popen(args + (["--overwrite"] if attempt else []), cwd=ROOT, env=env(), stdout=out,
                                    stderr=subprocess.STDOUT)
            state = kill_driver_when(proc, exp, raced)
        if state:
            break
    assert state, "never caught the driver between deleting a checkpoint and saving its state"
    names = {n.split("_", 1)[1]: n for n in trial_dirs(exp)}
    missing = {names[tid]: Path(ck).name for tid, ck in raced(state).items()}

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "does not exist on storage anymore" not in res.stdout + res.stderr
    assert "4/4 done" in res.stdout, res.stdout[-3000:]
    after = trial_dirs(exp)
    assert len(after) == 4
    for n, gone in missing.items():
        r = rows(after[n])
        notes = [i for i, x in enumerate(r) if x.get("restore_note")]
        if not notes:  # it had ended: restored to its final checkpoint, nothing run or reported again
            assert len(finals(r)) == 1 and f"trial {int(n[1:5])} (" in res.stdout
            assert finals(r)[0] is r[-1]
            continue
        i = notes[-1]
        note, k = r[i]["restore_note"], r[i]["task"]
        assert r[i]["kind"] == "epoch" and note.startswith(f"checkpoint {gone} is unusable (it is missing)"), note
        assert f"trial {int(n[1:5])} (" in res.stdout and note in res.stdout  # said on the driver's output
        assert task_rows(r[i:]) == list(range(k + 1, 6))
        if k:  # continued from the newest checkpoint whose result was recorded: no task redone, no gap
            assert note.endswith(f"(after task {k})") and "continued from checkpoint_" in note, note
            assert task_rows(r[:i])[-k:] == list(range(1, k + 1))
        else:  # no such checkpoint: started over
            assert note.endswith("no other usable one is recorded; started over from task 0"), note
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    children = mlflow_children(tmp_path, "race")
    assert len(children) == 4
    for n, d in after.items():
        r = rows(d)
        assert len(finals(r)) == 1, n  # every trial ends exactly once
        cfg = json.loads((d / "params.json").read_text())
        assert finals(r)[0]["final_avg_acc"] == reference(cfg["config"]).final_avg_acc
        kept = [c.name for c in d.glob("checkpoint_*")]  # the final one (and the one a lagging state named)
        assert finals(r)[0]["checkpoint_dir_name"] in kept and len(kept) <= 2, (n, kept)
        run = children[n.split("_", 1)[1]]
        assert run.info.status == "FINISHED" and "final_avg_acc" in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "task/acc_task_1")]
        assert sorted(steps) == [1, 2, 3, 4, 5], (n, steps)  # every task logged once, none lost


def test_half_written_checkpoint_is_never_trusted(tmp_path, ray_address):
    """Kill the driver while a trial has a checkpoint after some tasks, then cut every checkpoint
    of that trial in half (a copy interrupted by a crash or a full disk): --resume must not load
    them (torch.load would fail, or worse, half a state): the trial starts over from task 0 with
    a clear line, and ends with the result of an uninterrupted run."""
    path = study_file(tmp_path, "torn")
    exp = tmp_path / "rr" / "torn"
    args = sweep_args(tmp_path, path, ray_address, "--max-concurrent", "2")

    def part_way(state):  # saved as running with a checkpoint after task 2 or later, and not ended on disk
        # (the saved state can lag: the trial may have ended since; its result.json, which the
        # paused driver writes, says so)
        return [ck for _, st, ck in state if st not in ("TERMINATED", "ERROR") and ck and os.path.exists(ck)
                and int(Path(ck).name.split("_")[1]) >= 1 and not finals(rows(Path(ck).parent))]

    with open(tmp_path / "driver.log", "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
        state = kill_driver_when(proc, exp, part_way)
    assert state, "the study ended before a trial had two checkpoints"
    ck = part_way(state)[0]
    d = Path(ck).parent
    cut = []
    for c in d.glob("checkpoint_*/" + CHECKPOINT_FILE):
        data = c.read_bytes()
        c.write_bytes(data[: len(data) // 2])
        cut.append(c.parent.name)
    assert Path(ck).name in cut

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    index = int(d.name[1:5])
    line = next((ln for ln in res.stdout.splitlines() if f"trial {index} (" in ln and "unusable" in ln), "")
    assert f"checkpoint {Path(ck).name} is unusable (it cannot be read, half-written or corrupt" in line, \
        res.stdout[-3000:]
    assert line.endswith("and no other usable one is recorded; started over from task 0"), line
    # (result.json can hold rows the saved state does not know: the resumed part starts at the note)
    new = rows(d)[next(i for i, x in enumerate(rows(d)) if x.get("restore_note")):]
    assert new[0]["kind"] == "epoch" and new[0]["task"] == 0 and new[0]["global_epoch"] == 1, new[:1]
    assert task_rows(new) == [1, 2, 3, 4, 5]
    assert len(finals(rows(d))) == 1
    cfg = json.loads((d / "params.json").read_text())
    assert finals(rows(d))[0]["final_avg_acc"] == reference(cfg["config"]).final_avg_acc
    assert not set(c.name for c in d.glob("checkpoint_*")) & set(cut)  # the torn ones are gone, not reused
    assert "4/4 done" in res.stdout


def test_an_ended_trial_whose_final_checkpoint_is_torn_is_not_run_again(tmp_path, ray_address):
    """The saved state can lag a trial by several checkpoints (state saves are throttled), so a
    killed driver can leave a trial saved as running that had in fact ended (its final result is
    in result.json). If its final checkpoint is then unreadable too, --resume must not run it
    again from task 0 (a second final row, a second end): its recorded result stands."""
    path = study_file(tmp_path, "ended", methods="er", seeds="0")
    args = sweep_args(tmp_path, path, ray_address)
    first = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    exp = tmp_path / "rr" / "ended"
    (d,) = trial_dirs(exp).values()
    before = (d / "result.json").read_bytes()
    # the state as a driver killed just before it saved the trial's end leaves it
    state_file = next(exp.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    trial_json = json.loads(state["trial_data"][0][0])
    assert trial_json["status"] == "TERMINATED"
    trial_json["status"] = "RUNNING"
    state["trial_data"][0][0] = json.dumps(trial_json)
    state_file.write_text(json.dumps(state))
    (final,) = [c for c in d.glob("checkpoint_*/" + CHECKPOINT_FILE)]
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1/1 done" in res.stdout, res.stdout[-3000:]
    assert (d / "result.json").read_bytes() == before  # nothing run or reported again
    assert len(finals(rows(d))) == 1
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ended").experiment_id],
                                "tags.`gradmix.role` = 'trial'")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "task/acc_task_1")] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- storage
def test_a_saved_state_ray_cannot_restore_is_one_exit_2_line(tmp_path, ray_address):
    """Ray's restore of a study can fail past the checks before it (here: its callbacks' saved
    state cut in half, as a crash mid-write once left it). Ray logs why, carries on as if the
    study were new and dies on an assertion; --resume says Ray's reason in one exit-2 line
    instead, and leaves no MLflow run RUNNING."""
    path = study_file(tmp_path, "cutstate", methods="er", seeds="0")
    args = sweep_args(tmp_path, path, ray_address)
    first = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    state = next((tmp_path / "rr" / "cutstate").glob("callback-states-*.pkl"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    res = subprocess.run(args + ["--resume"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "Ray could not restore the study's saved state" in err[0] and "--overwrite" in err[0], err[0]
    assert "assert not self._experiment" not in res.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cutstate").experiment_id])
    assert runs and "RUNNING" not in {r.info.status for r in runs}, [r.info.status for r in runs]


def test_unusable_storage_exits_2_before_ray(tmp_path):
    """--storage under a regular file (fails even for root), a read-only folder (chmod 0o500; as
    root, run without the capability that overrides file modes) and a full disk (a 256 KiB tmpfs
    in a private mount namespace): exit 2, one line naming the folder and the cause, and Ray
    never imported."""
    ablation = tmp_path / "s.yaml"
    ablation.write_text(STUDY.format(name="s", methods="er", seeds="0", hidden="16", epochs=1, max_failures=0))
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    (tmp_path / "full").mkdir()
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from gradmix_tune.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["sweep", sys.argv[1], "--storage", sys.argv[2], "--tracking-uri", "sqlite:///" + sys.argv[3]])
        print(json.dumps({"rc": rc, "err": err.getvalue(), "ray": "ray" in sys.modules}))
        """)

    def attempt(storage: Path, prefix: list[str] = ()) -> dict:
        res = subprocess.run([*prefix, sys.executable, "-c", script, str(ablation), str(storage),
                              str(tmp_path / "m.db")], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    as_user = []
    if os.geteuid() == 0:  # root writes anywhere: drop that power, as an ordinary user has none
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    cases = {"under a file": (attempt(tmp_path / "file" / "sub"), f"{tmp_path / 'file'} is a file, not a folder"),
             "read-only": (attempt(tmp_path / "ro" / "rr", as_user), "Permission denied")}
    if can_unshare_mounts():
        sh = f'mount -t tmpfs -o size=256k tmpfs {tmp_path / "full"} && exec "$@"'
        cases["disk full"] = (attempt(tmp_path / "full" / "rr", ["unshare", "-m", "--propagation", "private",
                                                                 "sh", "-c", sh, "sh"]), "No space left on device")
    for what, (o, cause) in cases.items():
        lines = o["err"].strip().splitlines()
        assert o["rc"] == 2 and not o["ray"], (what, o)
        assert len(lines) == 1 and lines[0].startswith("error: --storage: results and checkpoints cannot be "
                                                       "written to "), (what, o["err"])
        assert cause in lines[0] and "Fix: pass --storage a writable folder" in lines[0], (what, lines[0])
    assert not list((tmp_path / "full").iterdir()) and not list((tmp_path / "ro").iterdir())
    (tmp_path / "ro").chmod(0o700)


# ---------------------------------------------------------------------------- NaN / inf
def test_diverged_trial_fails_alone_and_is_reported(tmp_path, ray_address, capsys):
    """lr=1e6 makes the loss NaN/inf in the first epoch: that trial stops with DivergedError (no
    result or checkpoint with a non-finite loss is reported), the other finishes, exit code 1; the
    report lists the failed trial with its error; its MLflow run is FAILED with the error."""
    p = tmp_path / "nan.yaml"
    p.write_text(textwrap.dedent("""\
        name: nan
        base:
          data: {name: digits, tasks: 3}
          model: {name: mlp, hidden: [32]}
          train: {epochs: 1, batch_size: 10}
          memory: {size: 60}
        grid: {train.lr: [0.1, 1.0e6]}
        seeds: [0]
        """))
    code = main(["sweep", str(p), "--storage", str(tmp_path / "rr"), "--tracking-uri",
                 f"sqlite:///{tmp_path}/mlflow.db", "--reports", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    assert code == 1
    bad = next(ln for ln in out.splitlines() if "FAILED" in ln)
    assert "train.lr=1e+06" in bad and "DivergedError: loss became" in bad and "lower train.lr" in bad, bad
    assert "1/2 done, 0 running, 1 failed" in out
    dirs = trial_dirs(tmp_path / "rr" / "nan")
    failed = next(d for n, d in dirs.items() if n.startswith("t0001_"))
    assert all(math.isfinite(x["loss"]) for x in rows(failed) if "loss" in x)  # garbage never reported
    assert not list(failed.glob("checkpoint_*"))
    assert "DivergedError" in (failed / "error.txt").read_text()

    report = (tmp_path / "reports" / "nan" / "report.md").read_text()
    section = report.split("Failed or unfinished trials", 1)[1].split("\n## ", 1)[0]
    row = next(ln for ln in section.splitlines() if "1e+06" in ln)
    assert "FAILED" in row and "DivergedError: loss became" in row, row

    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    children = mlflow_children(tmp_path, "nan")
    assert len(children) == 2
    by_lr = {r.data.params["train.lr"]: r for r in children.values()}
    assert by_lr["0.1"].info.status == "FINISHED"
    r = by_lr["1000000.0"]
    assert r.info.status == "FAILED" and "DivergedError: loss became" in r.data.tags["error"]
    assert "error.txt" in [a.path for a in c.list_artifacts(r.info.run_id)]
    assert "final_avg_acc" not in r.data.metrics
