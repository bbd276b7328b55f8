"""Before Ray starts, a study checks what `gradmix-tune run` checks before training, for every arm's
data and learner: a missing dataset is one exit-2 line naming the file, the key, the path and the
fix (in --dry-run too), not every trial failing on a worker. And the exceptions that do cross Ray's
process boundary keep their message. No Ray is started here."""
from __future__ import annotations

import copy
import pickle
import time

import numpy as np
import pytest
from fixtures import write_mnist, write_npz
from helpers import sweep_cli_args, write_ablation

from gradmix_tune.cli import main
from gradmix_tune.config import ConfigError
from gradmix_tune.learner import DivergedError
from gradmix_tune.sweep import load_study
from gradmix_tune.sweep.preflight import DESCRIBED, check_study, datasets

MNIST_BASE = """\
base:
  data: {name: mnist, tasks: 5, download: false, train_per_class: 5, test_per_class: 3}
  model: {name: mlp, hidden: [16]}
  memory: {size: 20}
"""


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_dataset_is_one_exit_2_line_before_ray(tmp_path, capsys, dry_run):
    import ray

    path = write_ablation(tmp_path, "mnist_study", "name: mnist_study\ngrid: {mixing.op: [mixup, cutmix]}\n"
                          "seeds: [0, 1]\n", base=MNIST_BASE)
    empty = tmp_path / "nodata"
    empty.mkdir()
    t0 = time.monotonic()
    code = main(["sweep", str(path), "--data-root", str(empty), *sweep_cli_args(tmp_path)]
                + (["--dry-run"] if dry_run else []))
    took = time.monotonic() - t0
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "key 'data.root'" in line, "the file and the key"
    assert str(empty / "MNIST" / "raw") in line, "the path it looked in"
    assert "--data-root PATH" in line and "GRADMIX_DATA_ROOT" in line, "the fix"
    assert took < 60, f"{took:.0f} s: a check, not a study"
    assert not ray.is_initialized() and not (tmp_path / "ray_results" / "mnist_study").exists(), "no Ray, no trial"


def test_each_arms_data_is_checked_and_the_arm_named(tmp_path, capsys):
    write_mnist(tmp_path / "root", train_per_class=5, test_per_class=3)
    path = write_ablation(tmp_path, "two_data", "name: two_data\ngrid: {data.name: [mnist, fashion_mnist]}\n",
                          base=MNIST_BASE)
    assert main(["sweep", str(path), "--data-root", str(tmp_path / "root"), "--dry-run"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "arm 'data.name=fashion_mnist'" in line and "FashionMNIST/raw" in line, line


def test_the_learner_of_every_arm_is_built_on_its_data(tmp_path, capsys):
    """A model that needs images, on vectors: what `run` says before training, said before Ray."""
    write_npz(tmp_path / "vec.npz", num_classes=4, shape=(12,), dtype=np.float32)
    path = write_ablation(tmp_path, "models", f"""\
        name: models
        base:
          data: {{name: npz, path: {tmp_path / 'vec.npz'}, tasks: 2}}
          memory: {{size: 20}}
        grid: {{model.name: [mlp, cnn]}}
        """, base="")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "key 'model.name'" in line and "needs image inputs" in line, line


def test_a_present_dataset_passes_and_is_described_for_tracking(tmp_path, capsys):
    write_mnist(tmp_path / "root", train_per_class=5, test_per_class=3)
    path = write_ablation(tmp_path, "ok", "name: ok\ngrid: {method: [er, gradmix]}\nseeds: [0, 1]\n",
                          base=MNIST_BASE)
    assert main(["sweep", str(path), "--data-root", str(tmp_path / "root"), "--dry-run"]) == 0
    assert "4 trials" in capsys.readouterr().out
    study = load_study(path, data_root=str(tmp_path / "root"))
    assert check_study(study) == 1, "one data section: loaded once"
    (info,) = datasets(study).values()
    assert info["name"] == "mnist" and (info["train_size"], info["test_size"]) == (50, 30)
    assert sorted(info["class_order"]) == list(range(10)) and len(info["task_classes"]) == 5
    assert info["source"] == str((tmp_path / "root").absolute())
    assert info in DESCRIBED.values()


@pytest.mark.parametrize("err", [
    ConfigError("ablations/x.yaml", "data.root", "mnist not found under /d/MNIST/raw", "pass --data-root PATH"),
    ConfigError(None, None, "bad"),
    DivergedError("loss became nan at task 2 epoch 1 step 40: lower train.lr"),
])
def test_exceptions_keep_their_message_across_the_process_boundary(err):
    """Ray copies (copy.copy) and pickles a trial's exception, and wraps it in a RayTaskError
    subclass of it: each must come back with its message, not as a TypeError."""
    from ray.exceptions import RayTaskError

    for back in (copy.copy(err), pickle.loads(pickle.dumps(err))):
        assert type(back) is type(err) and str(back) == str(err)
    if isinstance(err, ConfigError):
        assert (err.where, err.key, err.problem, err.fix) == (back.where, back.key, back.problem, back.fix)
    wrapped = RayTaskError("train_trial", f"Traceback ...\n{type(err).__name__}: {err}", err).as_instanceof_cause()
    assert isinstance(wrapped, type(err))
    from ray import cloudpickle

    for again in (copy.copy(wrapped), cloudpickle.loads(cloudpickle.dumps(wrapped))):
        assert isinstance(again, type(err)) and str(err) in str(again) and str(again.cause) == str(err)
