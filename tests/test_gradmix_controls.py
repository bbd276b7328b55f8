"""GradMix's controls (random_matched, random_composed), its stable pair scores (moving average,
task-change refresh, independent buffer gradient) and the per-epoch diagnostics every arm logs."""
import numpy as np
import pytest
import torch
from torch import nn

from gradmix_tune.config import ConfigError, MixingConfig, load_config
from gradmix_tune.learner import Hooks, run
from gradmix_tune.memory import Buffer, Probes, draw_probes
from gradmix_tune.mixing import MixContext, Mixer, MixStats
from gradmix_tune.models import Classifier
from gradmix_tune.selection import (composed_partners, composition, decision_flips, pair_helpful_fractions,
                                    pair_type_counts)

ARMS = ("random", "random_matched", "random_composed", "gradient", "gradient_sample")
DIAGNOSTICS = {"frac_mixed", "frac_current_mixed", "new_class_label_weight", "frac_pairs_helpful",
               "pairs_helpful_old_old", "pairs_helpful_old_new", "pairs_helpful_new_new", "decision_flip_rate",
               "selection_time_s", "refresh_time_s", "refreshes"}


def _model(d=4, classes=4, seed=0):
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(d, 8), nn.Tanh()), 8, classes)


class World:
    """4 classes in 4-D; task 1: class 0 old (buffer), 1 and 2 current; task 2: 0-2 old, 3 current.
    Probes are fresh Gaussian draws around class centres (so S is noisy from refresh to refresh)."""

    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.centres = torch.randn(4, 4, generator=self.gen) * 2

    def old_new(self, task):
        return ([0], [1, 2]) if task == 1 else ([0, 1, 2], [3])

    def probe(self, task):
        def draw(k, buffer_k=0):
            old, new = self.old_new(task)
            ys = torch.tensor([c for c in old + new for _ in range(k)])
            by = torch.tensor([c for c in old for _ in range(buffer_k or 12)])
            return Probes(self._x(ys), ys, torch.isin(ys, torch.tensor(old)), self._x(by), by)
        return draw

    def _x(self, y):
        return self.centres[y] + torch.randn(len(y), 4, generator=self.gen)

    def batch(self, task, n=20):
        old, new = self.old_new(task)
        classes = torch.tensor(old + new)
        y = classes[torch.randint(0, len(classes), (n,), generator=self.gen)]
        return self._x(y), y

    def ctx(self, model, task, new_epoch=False):
        return MixContext(model, self.probe(task), buffer_empty=False, class_counts=torch.ones(4),
                          new_epoch=new_epoch, task=task, current_classes=tuple(self.old_new(task)[1]))


# ---------------------------------------------------------------- random_composed

def test_composed_partners_reproduce_any_composition_exactly():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 25))
        is_new = rng.random(n) < rng.random()
        ref_partner = (np.arange(n) + rng.integers(1, n, n)) % n
        ref_mixed = rng.random(n) < rng.random()
        comp = composition(is_new, ref_partner, ref_mixed)
        partner, mixed = composed_partners(is_new, comp, rng)
        assert np.array_equal(composition(is_new, partner, mixed), comp)
        assert np.all(partner[mixed] != np.flatnonzero(mixed))  # never mixed with itself
        assert np.array_equal(partner[~mixed], np.flatnonzero(~mixed))  # unmixed: its own partner
    assert list(pair_type_counts(np.array([[3, 1], [2, 4]]))) == [3, 3, 4]


def test_random_composed_has_gradmix_composition_on_every_batch():
    world, model = World(), _model()
    # threshold 0.4: some classes have no helpful partner, so compositions are not trivial
    grad = Mixer(MixingConfig(selection="gradient", refresh_every=3, threshold=0.4), 4, seed=7)
    comp = Mixer(MixingConfig(selection="random_composed", refresh_every=3, threshold=0.4), 4, seed=7)
    kinds, partial = set(), False
    for step in range(40):
        task = 1 if step < 20 else 2
        x, y = world.batch(task)
        ctx = world.ctx(model, task)
        is_new = np.isin(y.numpy(), ctx.current_classes)
        if step == 0:  # same state, same batch: the reference is exactly GradMix's own draw
            grad(x, y, World().ctx(model, 1))
            comp(x, y, World().ctx(model, 1))
            ref_partner, ref_mixed = comp.last_reference
            assert np.array_equal(ref_mixed, grad.last_mixed)
            assert np.array_equal(ref_partner[ref_mixed], grad.last_partner[grad.last_mixed])
            continue
        comp(x, y, ctx)
        ref_partner, ref_mixed = comp.last_reference
        assert np.array_equal(composition(is_new, comp.last_partner, comp.last_mixed),
                              composition(is_new, ref_partner, ref_mixed))
        assert comp.last_mixed.sum() == ref_mixed.sum()
        kinds.add(tuple(composition(is_new, ref_partner, ref_mixed).flatten()))
        partial = partial or 0 < ref_mixed.sum() < len(y)
    assert len(kinds) > 10 and partial  # many different compositions were matched, some with unmixed samples


def test_random_composed_is_not_gradmix():
    # same composition, but partners drawn at random: pairs GradMix calls harmful do get mixed
    world, model = World(), _model()
    comp = Mixer(MixingConfig(selection="random_composed", refresh_every=1000), 4, seed=1)
    x, y = world.batch(1, n=40)
    comp(x, y, world.ctx(model, 1))
    comp.helpful = np.array([[True, True, False, False], [True, False, False, False],
                             [False, False, False, False], [False] * 4])  # only (0, 0) and (0, 1)
    harmful = 0
    for _ in range(50):
        comp(x, y, world.ctx(model, 1))
        yn = y.numpy()
        m = comp.last_mixed
        harmful += int((~comp.helpful[yn[m], yn[comp.last_partner[m]]]).sum())
    assert harmful > 0


# ---------------------------------------------------------------- stable scores

def test_score_momentum_averages_a_tasks_refreshes_and_restarts_at_a_task_change():
    model = _model()
    plain = Mixer(MixingConfig(selection="gradient", refresh_every=1), 4, seed=3)
    avg = Mixer(MixingConfig(selection="gradient", refresh_every=1, score_momentum=0.75), 4, seed=3)
    w1, w2 = World(5), World(5)  # the same probe draws for both
    fresh = [plain.refresh(w1.ctx(model, 1)).clone() for _ in range(3)]
    got = [avg.refresh(w2.ctx(model, 1)).clone() for _ in range(3)]
    expected = fresh[0]
    assert torch.allclose(got[0], expected, rtol=0, atol=0, equal_nan=True)  # exactly, NaN (class 3) included
    for f, g in zip(fresh[1:], got[1:]):
        expected = 0.75 * expected + 0.25 * f
        assert torch.allclose(g, expected, equal_nan=True)
    assert not torch.allclose(got[2], fresh[2], equal_nan=True)
    # a new task: its first refresh starts afresh (other old classes, another buffer gradient)
    f3, g3 = plain.refresh(w1.ctx(model, 2)), avg.refresh(w2.ctx(model, 2))
    assert torch.allclose(f3, g3, rtol=0, atol=0) and torch.isfinite(g3).all()


def test_a_task_change_refreshes_at_once_whatever_refresh_every_says():
    world, model = World(), _model()
    mixer = Mixer(MixingConfig(selection="gradient", refresh_every=1000), 4, seed=0)
    for _ in range(5):
        mixer(*world.batch(1), world.ctx(model, 1))
    assert mixer.stats.refreshes == 1 and torch.isnan(mixer.S[3]).all()  # class 3 not seen yet
    x, y = world.batch(2)
    mixer(x, y, world.ctx(model, 2))
    assert mixer.stats.refreshes == 2 and torch.isfinite(mixer.S).all()  # the new class is scored
    assert mixer.last_mixed[y.numpy() == 3].any() or not mixer.helpful[3].any()


def test_decision_flip_rate_counts_changes_within_a_task_only():
    world, model = World(), _model()
    mixer = Mixer(MixingConfig(selection="gradient", refresh_every=1, probes_per_class=2), 4, seed=0)
    mixer(*world.batch(1), world.ctx(model, 1))
    assert np.isnan(mixer.reset_stats().as_dict()["decision_flip_rate"])  # one refresh: nothing to compare
    helpful_before = mixer.helpful.copy()
    mixer(*world.batch(1), world.ctx(model, 1))
    iu = np.triu_indices(3)  # classes 0-2 seen in task 1
    changed = (helpful_before[:3, :3] != mixer.helpful[:3, :3])[iu]
    assert mixer.stats.as_dict()["decision_flip_rate"] == pytest.approx(changed.mean())
    mixer.reset_stats()
    mixer(*world.batch(2), world.ctx(model, 2))  # a new task's first refresh compares with nothing
    assert np.isnan(mixer.stats.as_dict()["decision_flip_rate"])


def test_probes_parents_without_replacement_and_buffer_gradient_sample_disjoint():
    buf = Buffer(60, seed=0)
    x = torch.arange(60, dtype=torch.float32).view(60, 1)  # x = sample id
    y = torch.tensor([0] * 30 + [1] * 30)
    buf.add(x, y, task=0)
    data_x = torch.arange(100, 200, dtype=torch.float32).view(100, 1)
    by_class = {2: np.arange(0, 50), 3: np.arange(50, 100)}
    p = draw_probes(buf, data_x, by_class, [2, 3], 10, np.random.default_rng(0))
    assert p.y.tolist() == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 and p.is_old.sum() == 20
    for c in range(4):
        ids = p.x[p.y == c].flatten().tolist()
        assert len(set(ids)) == 10  # without replacement
    parents = set(p.x[p.is_old].flatten().tolist())
    grad_ids = p.bx.flatten().tolist()
    assert len(grad_ids) == 40 and not parents & set(grad_ids)  # all the rest, none a parent
    assert sorted(parents | set(grad_ids)) == list(range(60))
    assert p.by.tolist() == [int(i >= 30) for i in grad_ids]
    few = draw_probes(buf, data_x, by_class, [2, 3], 10, np.random.default_rng(0), buffer_k=4)
    assert len(few.bx) == 8


# ---------------------------------------------------------------- diagnostics

def test_diagnostics_on_a_hand_made_batch():
    # y: old class 0 (x2), new classes 1, 2 (x2 each); random_matched at rate 0.5 mixes 3 of 6
    x = torch.arange(6, dtype=torch.float32).view(6, 1).repeat(1, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    model = _model()
    mixer = Mixer(MixingConfig(selection="random_matched", mix_rate=0.5), 4, seed=0)
    ctx = World().ctx(model, 1)
    _, target = mixer(x, y, ctx)
    mixed, partner = mixer.last_mixed, mixer.last_partner
    d = mixer.stats.as_dict()
    assert mixed.sum() == 3 and d["frac_mixed"] == 0.5
    assert d["frac_current_mixed"] == pytest.approx(mixed[2:].sum() / 4)
    assert d["new_class_label_weight"] == pytest.approx(float(target[:, 1:3].sum(1).mean()))
    # by hand, from the partners and the label weights
    lam = target[torch.arange(6), y].numpy()
    same = y.numpy() == y.numpy()[partner]
    lam = np.where(same, 1.0, lam)
    is_new = y.numpy() > 0
    by_hand = (lam * is_new + (1 - lam) * is_new[partner]).mean()
    assert d["new_class_label_weight"] == pytest.approx(by_hand, abs=1e-6)
    # nothing mixed: the weight is the share of new samples
    none = Mixer(MixingConfig(selection="random", start_task=2), 4, seed=0)
    none(x, y, ctx)
    nd = none.stats.as_dict()
    assert nd["frac_mixed"] == 0 and nd["frac_current_mixed"] == 0
    assert nd["new_class_label_weight"] == pytest.approx(4 / 6)


def test_pair_helpful_fractions_and_flips_by_hand():
    helpful = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=bool)
    seen = np.ones((3, 3), dtype=bool)
    class_new = np.array([False, True, True])  # class 0 old
    f = pair_helpful_fractions(helpful, seen, class_new)
    # unordered pairs: (0,0) old-old: 1/1; (0,1),(0,2) old-new: 1/2; (1,1),(1,2),(2,2) new-new: 2/3
    assert f["old_old"] == 1.0 and f["old_new"] == 0.5 and f["new_new"] == pytest.approx(2 / 3)
    assert f["all"] == pytest.approx(4 / 6)
    seen2 = seen.copy()
    seen2[2, :] = seen2[:, 2] = False
    assert np.isnan(pair_helpful_fractions(helpful, np.zeros((3, 3), bool), class_new)["all"])
    flipped = helpful.copy()
    flipped[0, 1] = flipped[1, 0] = False
    flipped[2, 2] = False
    assert decision_flips(helpful, seen, flipped, seen) == (2, 6)
    assert decision_flips(helpful, seen2, flipped, seen) == (1, 3)  # only pairs seen both times
    s = MixStats(flips=2, compared=8)
    assert s.as_dict()["decision_flip_rate"] == 0.25
    assert np.isnan(MixStats().as_dict()["decision_flip_rate"])


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_logs_the_same_diagnostics(arm):
    world, model = World(), _model()
    mixer = Mixer(MixingConfig(selection=arm, refresh_every=2), 4, seed=0)
    for _ in range(4):
        mixer(*world.batch(1), world.ctx(model, 1))
    d = mixer.reset_stats().as_dict()
    assert set(d) == DIAGNOSTICS
    for k in ("frac_mixed", "frac_current_mixed", "new_class_label_weight"):
        assert 0 <= d[k] <= 1
    if arm != "random":  # a criterion: its verdict is logged (random_* controls: GradMix's S)
        assert 0 <= d["frac_pairs_helpful"] <= 1
    if arm in ("gradient", "random_matched", "random_composed"):
        assert 0 <= d["decision_flip_rate"] <= 1


def test_epoch_records_carry_the_diagnostics():
    epochs = []
    run(load_config(None, ["data.tasks=2", "data.class_order=[0,1,2,3]", "memory.size=40", "method=random_composed",
                           "train.epochs=2"]), Hooks(on_epoch=epochs.append))
    assert all(DIAGNOSTICS <= set(e.diagnostics) for e in epochs)
    task1 = [e.diagnostics for e in epochs if e.task == 1]
    assert all(0 < d["new_class_label_weight"] < 1 for d in task1)  # old-class replay in the batch
    assert all(d["refreshes"] > 0 for d in task1)
    assert np.isfinite(task1[-1]["decision_flip_rate"])


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("key,value,fix", [
    ("mixing.score_momentum", 1.0, "0 keeps only the latest refresh"),
    ("mixing.score_momentum", -0.1, "mixing.score_momentum: 0.5"),
    ("mixing.start_task", -1, "0 mixes from the first task"),
    ("mixing.balanced_alpha", 0.0, "Balanced-MixUp used 0.1-0.3"),
    ("mixing.buffer_probes", -5, "0 takes every buffer sample"),
    ("mixing.selection", "random_composd", "random_composed"),
])
def test_new_keys_are_validated_with_a_clear_error(key, value, fix):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert e.value.key == key and fix in str(e.value)


def test_control_presets():
    assert load_config(None, ["method=random_composed"]).mixing.selection == "random_composed"
    cfg = load_config(None, ["method=random_matched"])
    assert (cfg.mixing.selection, cfg.mixing.mix_rate) == ("random_matched", "matched")
