"""`gradmix-tune run` as a user runs it: a subprocess on a YAML file, on offline data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import write_mnist
from gradmix_tune import metrics

EXPERIMENT = """\
data: {name: digits, tasks: 5}
model: {name: mlp}
train: {epochs: 1, threads: 1}
memory: {size: 200}
seed: 0
"""
JSON_KEYS = {"final_avg_acc", "avg_incremental_acc", "forgetting", "bwt", "accuracy_matrix", "wall_time_s", "config"}


def user_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRADMIX_DATA_ROOT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def start(*args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradmix_tune", *map(str, args)], cwd=cwd, env=env or user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gradmix(*args, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    p = start(*args, cwd=cwd, env=env)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


NO_TRACK = "--no-track"  # these tests are about the engine; MLflow logging has its own tests


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """ER twice with the same seed and fine-tuning once, started together (one thread each)."""
    d = tmp_path_factory.mktemp("cli")
    (d / "exp.yaml").write_text(EXPERIMENT)
    procs = {"er": start("run", "exp.yaml", "--json", "out/er.json", NO_TRACK, cwd=d),
             "er_again": start("run", "exp.yaml", "--json", "out/er_again.json", NO_TRACK, cwd=d),
             "finetune": start("run", "exp.yaml", "--set", "memory.size=0", "--json", "out/ft.json", NO_TRACK, cwd=d)}
    files = {"er": "er.json", "er_again": "er_again.json", "finetune": "ft.json"}
    runs = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{name} failed:\n{err}"
        runs[name] = {"stdout": out, "stderr": err, "json": json.loads((d / "out" / files[name]).read_text())}
    return runs


def test_run_prints_progress_and_the_metrics_table(digits_runs):
    out, result = digits_runs["er"]["stdout"], digits_runs["er"]["json"]
    for t in range(1, 6):
        assert f"task {t}: avg acc" in out
    assert "accuracy matrix (row: after task i, column: test on task j)" in out
    assert f"final average accuracy   {result['final_avg_acc']:.4f}" in out
    assert f"average incremental acc  {result['avg_incremental_acc']:.4f}" in out
    assert f"forgetting               {result['forgetting']:.4f}" in out
    assert f"backward transfer (BWT)  {result['bwt']:.4f}" in out
    assert "wall time" in out and "wrote out/er.json" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  T")]  # header: 8 spaces
    assert [r[0] for r in rows] == ["T1", "T2", "T3", "T4", "T5"], "tasks counted from 1, as the progress lines"
    assert [[float(v) for v in r[1:]] for r in rows] == [[round(v, 3) for v in row]
                                                         for row in result["accuracy_matrix"]]


def test_json_has_exactly_the_documented_keys_and_consistent_metrics(digits_runs):
    result = digits_runs["er"]["json"]
    assert set(result) == JSON_KEYS
    a = result["accuracy_matrix"]
    assert [len(row) for row in a] == [1, 2, 3, 4, 5]
    assert all(0.0 <= v <= 1.0 for row in a for v in row)
    for k, v in metrics.summarize(a).items():
        assert result[k] == pytest.approx(v)
    assert result["wall_time_s"] > 0
    cfg = result["config"]
    assert cfg["data"]["name"] == "digits" and cfg["memory"]["size"] == 200 and cfg["seed"] == 0
    assert cfg["train"]["threads"] == 1


def test_replay_beats_fine_tuning_on_digits(digits_runs):
    er, ft = digits_runs["er"]["json"], digits_runs["finetune"]["json"]
    assert ft["config"]["memory"]["size"] == 0
    assert er["final_avg_acc"] > ft["final_avg_acc"] + 0.3, (er["final_avg_acc"], ft["final_avg_acc"])
    assert er["forgetting"] < ft["forgetting"]
    assert ft["final_avg_acc"] < 0.4  # fine-tuning forgets the old tasks almost entirely


def test_same_seed_gives_identical_json_metrics(digits_runs):
    a = {k: v for k, v in digits_runs["er"]["json"].items() if k != "wall_time_s"}
    b = {k: v for k, v in digits_runs["er_again"]["json"].items() if k != "wall_time_s"}
    assert a == b


def _assert_bad_input(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for f in fragments:
        assert f in lines[0], lines[0]


def test_unknown_key_in_yaml_exits_2_naming_the_file(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.replace("memory: {size: 200}", "memory: {szie: 200}"))
    proc = gradmix("run", "exp.yaml", cwd=tmp_path)
    _assert_bad_input(proc, "exp.yaml", "memory.szie", "did you mean 'memory.size'?")
    assert proc.stdout == ""


def test_other_bad_input_exits_2_without_traceback(tmp_path):
    _assert_bad_input(gradmix("run", "missing.yaml", cwd=tmp_path), "missing.yaml", "file not found")
    _assert_bad_input(gradmix("run", "--set", "mixing.selection=gradmixx", cwd=tmp_path),
                      "mixing.selection", "did you mean 'gradient'?")
    (tmp_path / "bad.yaml").write_text("data: {name: digits\n")
    _assert_bad_input(gradmix("run", "bad.yaml", cwd=tmp_path), "bad.yaml", "invalid YAML")


MNIST_SETS = ["--set", "data.name=mnist", "--set", "data.download=false", "--set", "data.train_per_class=5",
              "--set", "data.test_per_class=3", "--set", "memory.size=20", "--set", "train.threads=1"]


def test_data_root_from_the_environment(tmp_path):
    write_mnist(tmp_path / "mnist_root", train_per_class=6, test_per_class=3)
    work = tmp_path / "work"  # no ./data here
    work.mkdir()
    proc = gradmix("run", *MNIST_SETS, "--json", "m.json", NO_TRACK, cwd=work,
                   env=user_env(GRADMIX_DATA_ROOT=str(tmp_path / "mnist_root")))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((work / "m.json").read_text())
    assert set(result) == JSON_KEYS
    assert result["config"]["data"]["name"] == "mnist" and len(result["accuracy_matrix"]) == 5
    assert result["config"]["data"]["train_per_class"] == 5


def test_missing_dataset_exits_2_with_one_line_saying_where_to_put_the_files(tmp_path):
    # without GRADMIX_DATA_ROOT the data root is ./data: empty here. A user mistake, not a crash:
    # one line on stderr (no log chatter, no traceback), exit code 2.
    proc = gradmix("run", *MNIST_SETS, cwd=tmp_path)
    _assert_bad_input(proc, "mnist not found under", str(tmp_path / "data" / "MNIST" / "raw"),
                      "put the four idx files there", "--data-root PATH", "GRADMIX_DATA_ROOT")
