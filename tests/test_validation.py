"""Validation split (data.val_fraction): disjoint from training, fixed per seed, and val_* metrics
that follow the same definitions as the test ones."""
import pytest
import torch

from gradmix_tune import metrics
from gradmix_tune.config import ConfigError, from_dict
from gradmix_tune.data import load_benchmark, validation_split
from gradmix_tune.learner import Hooks, Learner, run
from gradmix_tune.results import task_result

BASE = {"data": {"name": "digits", "tasks": 2}, "model": {"hidden": [16]}, "memory": {"size": 50},
        "train": {"epochs": 1, "threads": 1}}


def cfg(**data):
    d = {**BASE, "data": {**BASE["data"], **data}}
    return from_dict(d)


def test_split_is_disjoint_from_training_and_fixed_per_seed():
    c = cfg(val_fraction=0.2)
    bench = load_benchmark(c)
    a, b = validation_split(bench, 0.2, seed=3), validation_split(bench, 0.2, seed=3)
    other = validation_split(bench, 0.2, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, other))
    for task, held in enumerate(a):
        classes = set(bench.task_classes[task])
        assert set(bench.train.y[held].tolist()) == classes  # every class of the task is validated
        n_task = len(bench.task_indices("train", task))
        assert 0.15 * n_task <= len(held) <= 0.2 * n_task
    # what the learner trains on never includes a held-out sample
    learner = Learner(c, bench)
    seen_in_training = []
    orig = learner._step

    def spy(x, y, task, new_epoch):
        seen_in_training.append(learner._task_idx.clone())
        return orig(x, y, task, new_epoch)

    learner._step = spy
    learner.train_task(0, Hooks())
    trained = set(seen_in_training[0].tolist())
    assert trained and not trained & set(learner.val_idx[0].tolist())
    assert trained | set(learner.val_idx[0].tolist()) == set(bench.task_indices("train", 0).tolist())


def test_val_metrics_equal_a_hand_computation():
    c = cfg(val_fraction=0.25)
    tasks = []
    learner_box = {}

    def on_task(rec, learner):
        tasks.append(task_result(rec, learner))
        learner_box["l"] = learner

    result = run(c, Hooks(on_task=on_task))
    learner = learner_box["l"]
    # hand computation: predictions of the final model on the held-out samples of each task
    model = learner.model.eval()
    rows = []
    for j, held in enumerate(learner.val_idx):
        with torch.no_grad():
            pred = model(learner.bench.train.x[held]).argmax(1)
        rows.append(float((pred == learner.bench.train.y[held]).float().mean()))
    assert result.val_matrix[-1] == pytest.approx(rows)
    assert result.val_metrics["val_final_avg_acc"] == pytest.approx(sum(rows) / len(rows))
    assert result.val_metrics == pytest.approx(metrics.summarize(result.val_matrix, prefix="val_"))
    last = tasks[-1]
    for k in ("val_final_avg_acc", "val_avg_incremental_acc", "val_forgetting", "val_bwt"):
        assert last[k] == pytest.approx(result.val_metrics[k])
    assert tasks[0]["val_avg_acc"] == pytest.approx(result.val_matrix[0][0])
    assert "val_acc_task_1" in last


def test_no_split_by_default_and_none_in_results():
    result = run(cfg())
    assert result.val_matrix == [] and result.val_metrics == {}


def test_bad_val_fraction_is_one_clear_error():
    with pytest.raises(ConfigError, match="data.val_fraction"):
        cfg(val_fraction=1.5)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        from_dict({**BASE, "data": {"name": "digits", "val_fraction": 0.0}, "train": {"early_stop_on": "val"}})
