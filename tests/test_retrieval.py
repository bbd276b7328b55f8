"""Balanced gradient retrieval, the proxy-based contrastive loss and the U-shape analysis."""
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from gradmix_tune.config import load_config
from gradmix_tune.learner import Hooks, run
from gradmix_tune.losses import proxy_contrastive_loss, proxy_drift
from gradmix_tune.memory import Buffer, loss_change, retrieve
from gradmix_tune.metrics import u_shape
from gradmix_tune.models import Classifier


def _tiny(hidden=True, seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(5, 16), nn.Tanh()) if hidden else nn.Flatten()
    return Classifier(backbone, 16 if hidden else 5, 4)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_closed_form_criterion_ranks_like_the_virtual_update():
    model = _tiny()
    x, y = _data(10, 1)
    cx, cy = _data(60, 2)
    closed = loss_change(model, cx, cy, x, y, lr=0.05)
    virtual = loss_change(model, cx, cy, x, y, lr=0.05, virtual_update=True)
    rho = stats.spearmanr(closed.numpy(), virtual.numpy()).statistic
    assert rho > 0.5  # last-layer approximation of a 2-layer net: clearly the same ranking


def test_closed_form_is_exact_to_first_order_on_a_linear_model():
    model = _tiny(hidden=False)
    x, y = _data(10, 1)
    cx, cy = _data(30, 2)
    lr = 1e-4  # the virtual step's second-order term is O(lr^2)
    closed = loss_change(model, cx, cy, x, y, lr)
    virtual = loss_change(model, cx, cy, x, y, lr, virtual_update=True)
    assert torch.allclose(closed, virtual, rtol=1e-2, atol=1e-7)


def _filled_buffer():
    buf = Buffer(40, seed=0)
    x_old, y_old = _data(30, 3)
    buf.add(x_old, y_old, task=0)
    x_new, _ = _data(10, 4)
    buf.add(x_new, torch.full((10,), 3), task=1)  # current-task samples also sit in the buffer
    return buf


@pytest.mark.parametrize("mode", ["mir", "aligned", "balanced"])
def test_retrieval_returns_the_right_extremes_and_never_the_current_task(mode):
    model = _tiny()
    buf = _filled_buffer()
    x, y = _data(10, 1)
    n, cand = 6, 30
    g = torch.Generator().manual_seed(0)
    idx = retrieve(model, buf, x, y, n, mode, cand, task=1, gen=g, lr=0.1)
    want = 2 * n if mode == "balanced" else n  # balanced: N conflicting + N aligned
    assert len(idx) == want and len(set(idx.tolist())) == want
    assert (buf.task[idx] != 1).all()
    # recompute C on the same candidate pool (same generator state) and check the choice
    pool = buf.sample(cand, torch.Generator().manual_seed(0), exclude_task=1)
    c = loss_change(model, buf.x[pool], buf.y[pool], x, y, 0.1)
    order = pool[torch.argsort(c, descending=True, stable=True)].tolist()
    got = set(idx.tolist())
    if mode == "mir":
        assert got == set(order[:n])
    elif mode == "aligned":
        assert got == set(order[-n:])
    else:  # N + N, beside the current batch (Balanced Gradient Sample Retrieval)
        assert got == set(order[:n]) | set(order[-n:])


def test_proxy_contrastive_loss_equals_a_direct_computation():
    torch.manual_seed(0)
    h, w = torch.randn(6, 8), torch.randn(5, 8)
    y = torch.tensor([0, 2, 2, 4, 0, 2])  # classes 1 and 3 absent: not negatives
    tau = 0.1
    expected = 0.0
    for i in range(6):
        sims = {c: float(F.cosine_similarity(h[i], w[c], dim=0)) / tau for c in (0, 2, 4)}
        expected += -(sims[int(y[i])] - math.log(sum(math.exp(s) for s in sims.values())))
    assert proxy_contrastive_loss(h, w, y, tau).item() == pytest.approx(expected / 6, rel=1e-5)


def test_proxy_drift_measures_how_far_old_proxies_moved():
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    after = torch.tensor([[0.0, 1.0], [0.0, 2.0], [5.0, 5.0]])  # only class 0 changes direction
    assert proxy_drift(before, after, [0]) == pytest.approx(math.sqrt(2))
    assert proxy_drift(before, after, [1, 2]) == pytest.approx(0.0, abs=1e-6)


def test_proxy_contrastive_training_beats_finetuning_on_digits():
    pcr = run(load_config(None, ["train.loss=proxy_contrastive", "memory.retrieval=balanced"]))
    ft = run(load_config(None, ["method=finetune"]))
    assert pcr.final_avg_acc > ft.final_avg_acc + 0.2
    assert all("proxy_drift" in t["diagnostics"] for t in pcr.tasks)


def test_u_shape_finds_the_peak_and_the_drop():
    curve = [0.50, 0.70, 0.82, 0.85, 0.84, 0.80, 0.78]
    u = u_shape(curve)
    assert u["peak_epoch"] == 4 and u["peak_acc"] == 0.85 and u["final_acc"] == 0.78
    assert u["u_shape_drop"] == pytest.approx(0.07)
    assert u_shape([0.5, 0.5, 0.5])["u_shape_drop"] == 0.0


def test_early_stopping_on_held_out_data_stops_and_keeps_the_best_epoch():
    cfg = load_config(None, ["data.tasks=2", "train.epochs=30", "train.early_stop_on=val",
                             "train.patience=2", "train.lr=0.5"])
    epochs = []
    result = run(cfg, Hooks(on_epoch=epochs.append))
    per_task = [sum(1 for e in epochs if e.task == t) for t in (0, 1)]
    assert all(n < 30 for n in per_task)  # stopped early
    assert all("val_seen_acc" in e.diagnostics for e in epochs)
    assert result.final_avg_acc > 0.7


@pytest.mark.parametrize("mode", ["mir", "aligned", "balanced"])
def test_every_rule_replays_as_random_while_the_buffer_holds_no_earlier_task(mode):
    model = _tiny()
    buf = Buffer(40, seed=0)
    x0, y0 = _data(30, 3)
    buf.add(x0, y0, task=0)
    x, y = _data(10, 1)
    got = retrieve(model, buf, x, y, 6, mode, 30, task=0, gen=torch.Generator().manual_seed(5), lr=0.1)
    want = retrieve(model, buf, x, y, 6, "random", 30, task=0, gen=torch.Generator().manual_seed(5), lr=0.1)
    assert torch.equal(got, want) and len(got) == 6


def test_first_task_is_the_same_run_under_every_retrieval_rule():
    base = ["data.tasks=2", "memory.size=100", "memory.retrieval_candidates=40"]
    runs = {mode: run(load_config(None, base + [f"memory.retrieval={mode}"])) for mode in ("random", "mir", "balanced")}
    first = {mode: (r.accuracy_matrix[0], r.epochs[0]["loss"]) for mode, r in runs.items()}
    assert first["mir"] == first["random"] == first["balanced"]


def test_closed_form_criterion_under_the_proxy_loss_is_exact_to_first_order():
    model = _tiny(hidden=False).double()  # float64: the virtual step's change is ~1e-5
    x, y = _data(10, 1)
    cx, cy = _data(30, 2)
    x, cx = x.double(), cx.double()
    lr = 1e-5
    closed = loss_change(model, cx, cy, x, y, lr, loss="proxy_contrastive", temperature=0.5)
    virtual = loss_change(model, cx, cy, x, y, lr, virtual_update=True, loss="proxy_contrastive", temperature=0.5)
    assert torch.allclose(closed, virtual, rtol=1e-3, atol=1e-12)
    ce = loss_change(model, cx, cy, x, y, lr)
    assert not torch.allclose(closed, ce, rtol=0.1)  # the proxy loss's gradient, not cross-entropy's
