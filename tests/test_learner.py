"""The CIL loop on digits: every method preset runs, checkpoints resume exactly, NaN stops."""
import io

import pytest
import torch

from gradmix_tune.config import METHODS, load_config
from gradmix_tune.learner import DivergedError, Hooks, Learner, run

TINY = ["data.tasks=2", "data.class_order=[0,1,2,3]", "memory.size=40", "train.batch_size=10"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_preset_runs_end_to_end_on_digits(method):
    cfg = load_config(None, TINY + [f"method={method}"])
    epochs = []
    result = run(cfg, Hooks(on_epoch=epochs.append))
    assert len(result.accuracy_matrix) == 2 and len(result.accuracy_matrix[1]) == 2
    assert 0.0 <= result.final_avg_acc <= 1.0
    assert result.final_avg_acc > 0.5  # 4 classes: well above chance (0.25) after two tasks
    if cfg.mixing.selection != "none":
        assert "frac_mixed" in epochs[-1].diagnostics
        assert 0.0 < epochs[-1].diagnostics["frac_mixed"] <= 1.0
    if cfg.mixing.selection == "gradient":
        assert result.s_matrix is not None
        assert 0.0 <= epochs[-1].diagnostics["frac_pairs_helpful"] <= 1.0


def test_resuming_from_a_task_checkpoint_gives_the_uninterrupted_result():
    cfg = load_config(None, ["method=gradmix", "data.tasks=3", "train.epochs=2"])
    full = run(cfg)
    saved = {}

    def keep_first(rec, learner):
        if rec.task == 0:
            # what a trainable writes to disk: a serialised copy, not live objects
            import io

            buf = io.BytesIO()
            torch.save(learner.state_dict(), buf)
            buf.seek(0)
            saved["state"] = torch.load(buf, weights_only=True)  # safe loading works

    run(cfg, Hooks(on_task=keep_first))
    resumed = run(cfg, resume=saved["state"])
    assert resumed.accuracy_matrix == full.accuracy_matrix
    assert [e["seen_acc"] for e in resumed.epochs] == [e["seen_acc"] for e in full.epochs]


def test_same_seed_same_metrics_other_seed_differs():
    a = run(load_config(None, ["method=er_mixup", "data.tasks=3"]))
    b = run(load_config(None, ["method=er_mixup", "data.tasks=3"]))
    c = run(load_config(None, ["method=er_mixup", "data.tasks=3", "seed=1"]))
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.accuracy_matrix != c.accuracy_matrix


def test_a_diverging_loss_stops_the_run_with_a_clear_error():
    cfg = load_config(None, ["train.lr=1e6", "data.tasks=2", "model.hidden=[64]"])
    with pytest.raises(DivergedError, match="lower train.lr"):
        run(cfg)


def test_per_epoch_seen_class_accuracy_is_logged():
    cfg = load_config(None, ["data.tasks=2", "train.epochs=3"])
    seen = []
    run(cfg, Hooks(on_epoch=seen.append))
    assert [(r.task, r.epoch, r.global_epoch) for r in seen] == [
        (0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 4), (1, 1, 5), (1, 2, 6)]
    assert all(0 <= r.seen_acc <= 1 for r in seen)


def test_buffer_holds_old_classes_and_finetuning_has_none():
    cfg = load_config(None, ["data.tasks=5", "memory.size=100", "memory.policy=class_balanced"])
    learner = Learner(cfg)
    for t in range(5):
        learner.train_task(t, Hooks())
    counts = learner.buffer.class_counts()
    assert len(learner.buffer) == 100 and len(counts) == 10
    assert max(counts.values()) - min(counts.values()) <= 1
    ft = Learner(load_config(None, ["data.tasks=2", "method=finetune"]))
    ft.train_task(0, Hooks())
    assert len(ft.buffer) == 0


def _trained(cfg, per_step=False):
    """Every task trained; per_step: plain ER's batches made step by step instead of planned a
    chunk of steps ahead (see Learner._batches)."""
    learner = Learner(cfg)
    if per_step:
        learner._plannable = lambda: False
    for t in range(learner.num_tasks):
        learner.train_task(t, Hooks())
    return learner


@pytest.mark.parametrize("extra", [
    [],
    ["memory.size=25", "train.batch_size=7", "memory.replay_batch_size=9", "train.epochs=2"],  # fills mid-task
    ["memory.policy=class_balanced", "memory.size=30", "data.val_fraction=0.2"],
])
def test_plain_er_planned_ahead_trains_exactly_as_step_by_step(extra, monkeypatch):
    monkeypatch.setattr("gradmix_tune.learner.CHUNK_BYTES", 20_000)  # several chunks a task
    cfg = load_config(None, ["data.tasks=3", *extra])
    planned, stepwise = _trained(cfg), _trained(cfg, per_step=True)
    assert planned._plannable() and planned.acc == stepwise.acc
    assert [e["loss"] for e in planned.epochs] == [e["loss"] for e in stepwise.epochs]
    for (k, a), b in zip(planned.model.state_dict().items(), stepwise.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(planned.buffer.rows, stepwise.buffer.rows) and planned.buffer.seen == stepwise.buffer.seen
    assert torch.equal(planned.gen.get_state(), stepwise.gen.get_state())


def test_resuming_from_a_checkpoint_whose_buffer_holds_copies():
    # checkpoints from before the buffer stored rows of the training data: the rows are found again
    cfg = load_config(None, ["data.tasks=3", "memory.size=60"])
    full = run(cfg)
    saved = {}

    def keep_first(rec, learner):
        if rec.task == 0:  # a serialised copy, as a trainable writes it, less the buffer's rows
            f = io.BytesIO()
            torch.save(learner.state_dict(), f)
            f.seek(0)
            saved["state"] = torch.load(f, weights_only=True)
            del saved["state"]["buffer"]["rows"]

    run(cfg, Hooks(on_task=keep_first))
    assert run(cfg, resume=saved["state"]).accuracy_matrix == full.accuracy_matrix
