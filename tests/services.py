"""Real services for the production-stack tests, started on 127.0.0.1 in temporary folders.

    postgres       PostgreSQL (Debian's `postgresql` package: initdb / pg_ctl), a database `mlflow`
    s3             an S3-compatible server (moto's server mode) with one bucket
    mlflow_server  `mlflow server` on that PostgreSQL, artifacts in that bucket (the README's cluster setup)
    RayCluster     a `ray start --head` cluster (plus `ray start --address` workers) in its own temp dir

Session-scoped fixtures; each one skips, saying how to install it, only when what it needs is not
installed (`.ci/run` installs PostgreSQL, `make test` the Python packages of the `dev` extra); a
service that is installed but does not start fails the test with its log. Every process started
here is stopped at teardown, by its own process id (and its children's), never by name.

Used by tests/test_production_stack.py and tests/test_cluster_join.py (`from services import ...`).
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's mlflow, ray, moto_server
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ---------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(check, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    """Poll check() until it is true; fail with the service's log when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode}:\n{log_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up in {timeout_s:g} s:\n{log_tail(log) if log else ''}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, it names one process,
    so a pid reused by another process meanwhile is never signalled."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """pid's children, grandchildren, ... as (pid, start time), from /proc, so a teardown can
    kill what a service started even when the service is gone first."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.split("/")[2]))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            t = _start_time(c)
            if t is not None:
                out.append((c, t))
            todo.append(c)
    return out


def kill_same(procs: list[tuple[int, str]]) -> None:
    """SIGKILL each (pid, start time) that is still that same process."""
    for pid, started in procs:
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process (started with start_new_session=True) and its group, then SIGKILL
    whatever is left of it and of every process it started."""
    tree = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    kill_same(tree + descendants(proc.pid))
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its group: still ours while the leader is not reaped
        except OSError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def start(args: list[str], log: Path, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)


# ---------------------------------------------------------------------------- PostgreSQL
def postgres_bin() -> Path | None:
    """The folder of initdb / pg_ctl: Debian's /usr/lib/postgresql/<version>/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class Postgres:
    uri: str  # postgresql://mlflow@127.0.0.1:PORT/mlflow (trust authentication, 127.0.0.1 only)
    port: int
    root: Path
    run_as: list[str]
    bindir: Path

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): "
                    "`apt-get install postgresql` (.ci/run does this)")
    try:
        import psycopg  # noqa: F401 - what `mlflow server` needs for postgresql:// URIs (SQLAlchemy 2.1)
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -c constraints.txt -e '.[dev]' (make test does this)")
    # initdb refuses to run as root: then run PostgreSQL as the `postgres` user the package created
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser`: cannot start PostgreSQL as another user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="gm-pg-"))  # in /tmp, not pytest's root-only tmp folders
    if run_as:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    log = root / "postgres.log"
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "mlflow", "--auth=trust",
                           "-E", "UTF8", "--no-locale", "-N"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}{init.stderr[-2000:]}")
    started = subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(log), "-w",
                              "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"],
                             capture_output=True, text=True, timeout=90)
    pg = Postgres(f"postgresql://mlflow@127.0.0.1:{port}/mlflow", port, root, run_as, bindir)
    if started.returncode != 0:
        text = started.stdout + started.stderr + log_tail(log)
        pg.stop()
        pytest.fail(f"PostgreSQL did not start ({started.returncode}):\n{text}")
    made = subprocess.run([*run_as, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
                           "mlflow"], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pg.stop()
        pytest.fail(f"createdb failed:\n{made.stderr}")
    return pg


@pytest.fixture(scope="session")
def postgres():
    pg = start_postgres()
    yield pg
    pg.stop()


# ---------------------------------------------------------------------------- S3 (moto server)
@dataclass
class S3:
    url: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict = field(default_factory=dict)  # what a client needs: keys, region, AWS_ENDPOINT_URL

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_KEYS["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Object key -> size, under prefix."""
        out, token = {}, None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client().list_objects_v2(**kw)
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def etags(self, prefix: str = "") -> dict[str, tuple]:
        """Object key -> (ETag, last modified): changes when the object is written again."""
        out, token = {}, None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client().list_objects_v2(**kw)
            out.update({o["Key"]: (o["ETag"], o["LastModified"]) for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3():
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        pytest.skip("moto[server] / boto3 are not installed: pip install -c constraints.txt -e '.[dev]' "
                    "(make test does this)")
    root = Path(tempfile.mkdtemp(prefix="gm-s3-"))
    port = free_port()
    log = root / "moto.log"
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log,
                 env=dict(os.environ, **S3_KEYS))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url + "/"), 60, "the S3 server (moto)", proc, log)
        store = S3(url, "gradmix-test", {**S3_KEYS, "AWS_ENDPOINT_URL": url})
        store.client().create_bucket(Bucket=store.bucket)
        yield store
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------- MLflow server
@dataclass
class MlflowServer:
    url: str
    artifacts: str  # s3://bucket/prefix
    postgres: Postgres
    s3: S3
    log: Path


@pytest.fixture(scope="session")
def mlflow_server(postgres, s3):
    """`mlflow server` as the README's cluster recipe starts it: runs in PostgreSQL, artifacts in
    S3 (served through the server: clients need no S3 access)."""
    root = Path(tempfile.mkdtemp(prefix="gm-mlflow-"))
    port = free_port()
    log = root / "mlflow.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(S3_KEYS, MLFLOW_S3_ENDPOINT_URL=s3.url)
    artifacts = f"s3://{s3.bucket}/mlflow"
    proc = start([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres.uri, "--artifacts-destination",
                  artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log, env=env,
                 cwd=str(root))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url + "/health"), 180, "mlflow server", proc, log)
        yield MlflowServer(url, artifacts, postgres, s3, log)
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------- a `ray start` cluster
class RayCluster:
    """A Ray cluster as `ray start` makes one on a real machine: `ray start --head --block` and
    `ray start --address ... --block` processes, in a temp dir of their own (so nothing here
    touches another Ray on the machine), with HOME pointing at `home` (the default token file
    is home/.ray/auth_token). Ports are picked free; stop() ends every process it started."""

    def __init__(self, home: Path, env: dict | None = None):
        self.home = Path(home)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="gmr", dir="/tmp"))  # short: Ray's socket paths
        self.env = dict(os.environ if env is None else env, HOME=str(self.home), RAY_USAGE_STATS_ENABLED="0")
        for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(k, None)
        self.procs: list[subprocess.Popen] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
                str(free_port()), "--runtime-env-agent-port", str(free_port()), "--metrics-export-port",
                str(free_port())]

    def _start(self, args: list[str], name: str, env: dict) -> None:
        log = self.temp_dir / f"{name}.log"
        proc = start([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args, *self._ports()],
                     log, env=env)
        self.procs.append(proc)

    def start_head(self, num_cpus: int = 1, token: bool = True, timeout_s: float = 90) -> "RayCluster":
        """`ray start --head`; with token=True there is a token file in home first, so (as on a
        user's machine where ray.init once ran) Ray 2.60 turns token authentication on."""
        if token:
            (self.home / ".ray").mkdir(parents=True, exist_ok=True)
            (self.home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        self.port = free_port()
        self._start(["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), "--include-dashboard=false",
                     "--temp-dir", str(self.temp_dir)], "head", self.env)
        log = self.temp_dir / "head.log"
        wait_until(lambda: "Ray runtime started" in log_tail(log, 100000), timeout_s, "ray start --head",
                   self.procs[-1], log)
        return self

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text().strip()

    def add_worker(self, num_cpus: int = 1, timeout_s: float = 90) -> None:
        """`ray start --address HEAD` as the README says: with the cluster's token and RAY_AUTH_MODE=token."""
        n = len(self.procs)
        env = dict(self.env, RAY_AUTH_MODE="token") if (self.home / ".ray" / "auth_token").exists() else self.env
        self._start(["--address", self.address, "--num-cpus", str(num_cpus)], f"worker{n}", env)
        log = self.temp_dir / f"worker{n}.log"
        wait_until(lambda: "Ray runtime started" in log_tail(log, 100000), timeout_s, "ray start --address",
                   self.procs[-1], log)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{log_tail(p)}" for p in sorted(self.temp_dir.glob("*.log")))

    def stop(self) -> None:
        # SIGTERM every `ray start --block` at once (each ends the processes it started, draining
        # for a few seconds), then SIGKILL whatever is left of any of them
        trees = {proc.pid: descendants(proc.pid) for proc in self.procs}
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 4
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            kill_same(trees[proc.pid])
            stop_process(proc, grace_s=0.1)
        # whatever Ray started in a session of its own (workers) and still runs from this temp dir
        for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                if str(self.temp_dir) in Path(cmdline).read_bytes().decode(errors="replace"):
                    os.kill(int(cmdline.split("/")[2]), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        shutil.rmtree(self.temp_dir, ignore_errors=True)
