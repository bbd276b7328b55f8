"""Joining a Ray cluster as the README says (issue 15), against a real `ray start` cluster.

The pinned Ray (2.60) turns token authentication on for a cluster that `ray start --head`
launches on a machine with a token (~/.ray/auth_token, which every local ray.init() writes), but
a driver given an explicit address does not send its token unless RAY_AUTH_MODE=token: it got a
screen of InvalidAuthToken warnings and a ConnectionError ~20 s later. Here: a head started with
`ray start --head` (token auth on) plus a worker started with `ray start --address`, each in its
own process group and temp dir (tests/services.py RayCluster), and drivers that

- join with no extra flags when a token is available: the default token file, or RAY_AUTH_TOKEN;
- are refused (no token, a wrong token, nothing listening) with one exit-2 line on stderr that
  names the address and the fix, within seconds, and no traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services import RayCluster, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` (token authentication on: a token file in its HOME) + one
    `RAY_AUTH_MODE=token ray start --address HEAD` worker, 1 CPU each."""
    home = tmp_path_factory.mktemp("head_home")
    c = RayCluster(home)
    try:
        c.start_head(num_cpus=1, token=True)
        c.add_worker(num_cpus=1)
        yield c
    finally:
        c.stop()


def driver_env(home: Path, **extra) -> dict:
    """A driver's environment: HOME (whose ~/.ray/auth_token is the default token file) and
    nothing of Ray's auth settings unless given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def write_study(tmp_path: Path) -> Path:
    p = tmp_path / "joined.yaml"
    p.write_text(textwrap.dedent("""\
        name: joined
        base:
          data: {name: digits, tasks: 2}
          model: {name: mlp, hidden: [32]}
          train: {epochs: 1, batch_size: 10, lr: 0.1}
          memory: {size: 60}
        grid: {method: [er, gradmix]}
        seeds: [0]
        """))
    return p


# `gradmix-tune sweep ...` in a child process that writes to $GM_TIMING how long main() took once
# the modules were loaded (Ray's included): the time the join takes, whatever the machine's load
TIMED = """\
import os, sys, time
import gradmix_tune.sweep.tuner  # noqa: F401 - ray, ray.tune: loaded before the clock starts
from gradmix_tune.cli import main
t0 = time.monotonic()
try:
    code = main(sys.argv[1:])
finally:
    with open(os.environ["GM_TIMING"], "w") as f:
        f.write(str(time.monotonic() - t0))
raise SystemExit(code)
"""


def sweep(tmp_path: Path, address: str, env: dict, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    """The sweep CLI joining `address`: (its result, seconds main() ran)."""
    args = [sys.executable, "-c", TIMED, "sweep", str(write_study(tmp_path)), "--address", address,
            "--storage", str(tmp_path / "ray_results"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--reports", str(tmp_path / "reports")]
    timing = tmp_path / "took.txt"
    res = subprocess.run(args, cwd=ROOT, env=dict(env, GM_TIMING=str(timing)), capture_output=True, text=True,
                         timeout=timeout)
    return res, float(timing.read_text()) if timing.exists() else float("nan")


def test_study_joins_token_cluster_with_the_default_token_file(tmp_path, cluster):
    # the README's recipe: `ray start --head`, `ray start --address`, then the study with --address
    res, _ = sweep(tmp_path, cluster.address, driver_env(cluster.home))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:] + cluster.logs()[-3000:]
    assert "2/2 done" in res.stdout
    assert "InvalidAuthToken" not in out and "Traceback" not in out


def test_driver_joins_with_RAY_AUTH_TOKEN_and_sees_both_nodes(tmp_path, cluster):
    """The token from RAY_AUTH_TOKEN alone (a HOME without a token file): the sweep's join
    (sweep.cluster.init_ray, what `gradmix-tune --address` calls) connects to both nodes."""
    code = ("from gradmix_tune.sweep.cluster import init_ray\nimport ray\n"
            f"assert init_ray({cluster.address!r}, None, None, False)\n"
            "print('NODES', sum(n['Alive'] for n in ray.nodes()))\n")
    empty = tmp_path / "home"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=driver_env(empty, RAY_AUTH_TOKEN=cluster.token))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "NODES 2" in res.stdout


@pytest.mark.parametrize("case", ["no_token", "wrong_token", "token_mode_without_token", "nothing_listening"])
def test_refused_join_is_one_line_exit_2_within_seconds(tmp_path, cluster, case):
    empty = tmp_path / "home"
    empty.mkdir()
    address = cluster.address
    if case == "no_token":
        env = driver_env(empty)
        expect = ["requires token authentication", "no token", "ray get-auth-token", "RAY_AUTH_TOKEN"]
    elif case == "wrong_token":
        env = driver_env(empty, RAY_AUTH_TOKEN="0" * 64)
        expect = ["refused this machine's token", "RAY_AUTH_TOKEN", "ray get-auth-token"]
    elif case == "token_mode_without_token":  # Ray's own client aborts the process here
        env = driver_env(empty, RAY_AUTH_MODE="token")
        expect = ["RAY_AUTH_MODE=token", "no Ray token", "ray get-auth-token"]
    else:
        address = f"127.0.0.1:{free_port()}"
        env = driver_env(cluster.home)
        expect = ["nothing answers", "ray start --head"]
    res, took = sweep(tmp_path, address, env, timeout=180)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert len(lines) == 1, res.stderr  # one line: no warnings, no traceback
    line = lines[0]
    assert line.startswith("error: --address:") and address in line and "Fix:" in line, line
    for word in expect:
        assert word in line, (word, line)
    assert "Traceback" not in res.stdout + res.stderr
    # (about a second on an idle machine; Ray alone retries for ~20 s with a wrong token and
    # ~60 s when nothing listens, then prints a traceback)
    assert took < 15, took
