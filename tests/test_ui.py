"""`gradmix-tune ui` serves the MLflow UI on 127.0.0.1 only, unless told otherwise."""
import socket
import subprocess
import sys
import time
import urllib.request



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Addresses listening on `port`, from the kernel's socket tables (Linux)."""
    out = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.split(":")
                if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                    continue
                if v6:
                    out.add("::" if set(addr) == {"0"} else addr)
                else:
                    out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_ui_binds_to_loopback_and_serves_the_store(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", "ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        body = None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the UI did not come up"
        assert _listening(port) == {"127.0.0.1"}
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_says_ready_only_once_it_answers(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", "ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and "UI ready on" not in line:
            line = proc.stdout.readline()
            assert line, "the UI exited before it was ready"
        assert f"http://127.0.0.1:{port}" in line
        # the moment it says ready, it answers
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
