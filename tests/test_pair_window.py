"""mixing.pair_scoring: scoring only the class pairs batches draw gives GradMix's exact decisions.

`all` scores every pair of seen classes at a refresh (O(k C^3)); `drawn` scores a pair when a batch
first needs it, from the same refresh's draws and a frozen copy of the head. The two must agree bit
for bit on every pair they both score, so every training decision is the same.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradmix_tune.config import ConfigError, MixingConfig, load_config
from gradmix_tune.learner import run
from gradmix_tune.memory import Probes
from gradmix_tune.mixing import MixContext, Mixer
from gradmix_tune.models import Classifier
from gradmix_tune.pair_window import ALL_PAIRS_UP_TO, scores_all


class Stream:
    """`classes` Gaussian classes in 6-D; the last `new` are the current task's, the rest are old
    (in the buffer). Batches draw from `batch_classes` random classes each."""

    def __init__(self, classes=6, new=2, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.C, self.new = classes, list(range(classes - new, classes))
        self.old = list(range(classes - new))
        self.centres = torch.randn(classes, 6, generator=self.gen) * 2

    def _x(self, y):
        return self.centres[y] + torch.randn(len(y), 6, generator=self.gen)

    def probe(self, k, buffer_k=0):
        ys = torch.tensor([c for c in self.old + self.new for _ in range(k)])
        by = torch.tensor([c for c in self.old for _ in range(buffer_k or 5)])
        return Probes(self._x(ys), ys, torch.isin(ys, torch.tensor(self.old)), self._x(by), by)

    def batch(self, n=20, batch_classes=None):
        pool = torch.arange(self.C)
        if batch_classes:
            pool = pool[torch.randperm(self.C, generator=self.gen)[:batch_classes]]
        y = pool[torch.randint(0, len(pool), (n,), generator=self.gen)]
        return self._x(y), y

    def ctx(self, model, new_epoch=False):
        return MixContext(model, self.probe, buffer_empty=False, class_counts=torch.ones(self.C),
                          new_epoch=new_epoch, task=1, current_classes=tuple(self.new))


def _model(classes, seed=0):
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(6, 8), nn.Tanh()), 8, classes)


def _train_both(cfg: dict, loss="ce", classes=6, steps=12, batch_classes=None):
    """Two mixers, pair_scoring all and drawn, each training its own copy of one model on the same
    batches (the probes are the same draws: the stream is re-seeded per mixer)."""
    out = {}
    for mode in ("all", "drawn"):
        stream, model = Stream(classes), _model(classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        mixer = Mixer(MixingConfig(selection="gradient", pair_scoring=mode, **cfg), classes, seed=1, loss=loss)
        trace = []
        for _ in range(steps):
            x, y = stream.batch(batch_classes=batch_classes)
            xm, ym = mixer(x, y, stream.ctx(model))
            trace.append((xm, ym, mixer.last_partner.copy(), mixer.last_mixed.copy()))
            opt.zero_grad()
            F.cross_entropy(model(xm), ym).backward()  # the head moves between a refresh and a pair's use
            opt.step()
        out[mode] = (mixer, trace, model)
    return out


@pytest.mark.parametrize("cfg,loss", [({}, "ce"), ({"criterion": "cosine"}, "ce"),
                                      ({"score_momentum": 0.5}, "ce"), ({}, "proxy_contrastive"),
                                      ({"threshold": 0.01, "refresh_every": 1}, "ce")])
def test_drawn_pairs_score_exactly_as_all_pairs_and_every_step_decides_alike(cfg, loss):
    runs = _train_both({"refresh_every": 3, "probes_per_class": 4, **cfg}, loss)
    (m_all, t_all, model_all), (m_drawn, t_drawn, model_drawn) = runs["all"], runs["drawn"]
    for (xa, ya, pa, ma), (xd, yd, pd, md) in zip(t_all, t_drawn):
        assert np.array_equal(pa, pd) and np.array_equal(ma, md)
        assert torch.equal(xa, xd) and torch.equal(ya, yd)
    assert all(torch.equal(a, b) for a, b in zip(model_all.parameters(), model_drawn.parameters()))
    scored = torch.isfinite(m_drawn.S)
    if not cfg.get("score_momentum"):  # with momentum, drawn blends with the pair's last score, not the last refresh's
        assert torch.equal(m_drawn.S[scored], m_all.S[scored])
    assert m_drawn.stats.refreshes == m_all.stats.refreshes


def test_drawn_scores_only_the_pairs_batches_draw():
    """120 classes (7260 pairs): batches of 20 samples from 5 classes draw at most 15 pairs each."""
    runs = _train_both({"refresh_every": 4, "probes_per_class": 2}, classes=120, steps=4, batch_classes=5)
    drawn, _, _ = runs["drawn"]
    all_, _, _ = runs["all"]
    assert drawn.window.n_pairs == 120 * 121 // 2
    assert 0 < drawn.window.done.sum() <= 4 * 15
    assert torch.isfinite(all_.S).all() and torch.isfinite(drawn.S).sum() <= 2 * 4 * 15
    d = drawn.reset_stats().as_dict()  # the diagnostics cover the pairs scored
    assert 0 <= d["frac_pairs_helpful"] <= 1


def test_auto_scores_every_pair_up_to_50_classes_and_drawn_pairs_above():
    assert scores_all("auto", ALL_PAIRS_UP_TO) and not scores_all("auto", ALL_PAIRS_UP_TO + 1)
    assert scores_all("all", 500) and not scores_all("drawn", 3)


def test_a_whole_run_is_the_same_with_either_path():
    base = ["data.tasks=3", "data.class_order=[0,1,2,3,4,5]", "memory.size=60", "method=gradmix",
            "train.epochs=1", "mixing.refresh_every=2"]
    a = run(load_config(None, base + ["mixing.pair_scoring=all"]))
    b = run(load_config(None, base + ["mixing.pair_scoring=drawn"]))
    assert a.accuracy_matrix == b.accuracy_matrix and a.final_avg_acc == b.final_avg_acc


def test_unknown_pair_scoring_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method=gradmix", "mixing.pair_scoring=some"])
    assert "mixing.pair_scoring" in str(e.value) and "drawn" in str(e.value)
