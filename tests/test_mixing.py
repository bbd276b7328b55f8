"""Pair selection, mixing operators and the imbalance-aware / policy baselines."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradmix_tune.augment import PolicyAugment
from gradmix_tune.config import MixingConfig
from gradmix_tune.memory import Probes
from gradmix_tune.mixing import MixContext, Mixer, cutmix_masks, mix_inputs
from gradmix_tune.models import Classifier

# A linear model with zero weights (p uniform) over 2-D features h = x, three classes.
# Class 0 is old (in the buffer) at h0 = [2, 0]. For a mix of new classes 1 and 2,
# <g~, g_buf> = (r~ . r_buf)(h~ . h0 + 1) = -(1/3)(h~ . h0 + 1), so:
#   class 1 at [2, 0]:      (1, 1) scores -5/3 -> detrimental (it pulls class-0-like inputs away)
#   class 2 at [-1.5, 0]:   (2, 2) scores +2/3 -> helpful;  (1, 2) ~ -(1/3)(7 lam - 2) < 0 on average
CENTERS = {0: [2.0, 0.0], 1: [2.0, 0.0], 2: [-1.5, 0.0]}


def _linear_model():
    m = Classifier(nn.Flatten(), 2, 3)
    nn.init.zeros_(m.head.weight)
    nn.init.zeros_(m.head.bias)
    return m


def _probe(k, buffer_k=0):
    xs = torch.tensor([CENTERS[c] for c in (0, 1, 2) for _ in range(k)])
    ys = torch.tensor([c for c in (0, 1, 2) for _ in range(k)])
    nb = buffer_k or 7
    return Probes(xs, ys, ys == 0, torch.tensor([CENTERS[0]] * nb), torch.zeros(nb, dtype=torch.int64))


def _ctx(model, new_epoch=False, counts=None, task=1, probe=_probe):
    """Task 1: class 0 is old (in the buffer), classes 1 and 2 are the current task's."""
    return MixContext(model, probe, buffer_empty=False,
                      class_counts=counts if counts is not None else torch.ones(3), new_epoch=new_epoch,
                      task=task, current_classes=(1, 2))


def _batch():
    y = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    return torch.tensor([CENTERS[int(c)] for c in y]), y


def test_gradmix_never_mixes_a_detrimental_pair_and_mixes_a_helpful_one():
    model = _linear_model()
    mixer = Mixer(MixingConfig(selection="gradient", probes_per_class=50), 3, seed=0)
    x, y = _batch()
    mixer(x, y, _ctx(model))
    S = mixer.S
    assert S[1, 1] == pytest.approx(-5 / 3, abs=1e-5)
    assert S[2, 2] == pytest.approx(2 / 3, abs=1e-5)
    assert S[1, 2] < 0 and S[2, 1] < 0
    assert not mixer.helpful[1, 1] and not mixer.helpful[1, 2] and mixer.helpful[2, 2]
    pairs = set()
    for _ in range(200):
        mixer(x, y, _ctx(model))
        for i in np.nonzero(mixer.last_mixed)[0]:
            pairs.add((int(y[i]), int(y[mixer.last_partner[i]])))
    assert (2, 2) in pairs  # the helpful pair is mixed
    assert not pairs & {(1, 1), (1, 2), (2, 1)}  # the detrimental pairs never are
    assert pairs <= {(a, b) for a in range(3) for b in range(3) if mixer.helpful[a, b]}
    # the mixed inputs are what the partners say
    out, target = mixer(x, y, _ctx(model))
    mixed = mixer.last_mixed
    assert torch.equal(out[~torch.from_numpy(mixed)], x[~torch.from_numpy(mixed)])
    assert torch.allclose(target.sum(1), torch.ones(len(y)))


def test_first_task_mixes_like_er_mixup():
    model = _linear_model()
    mixer = Mixer(MixingConfig(selection="gradient"), 3, seed=0)
    x, y = _batch()
    ctx = _ctx(model)
    ctx.buffer_empty = True
    mixer(x, y, ctx)
    assert mixer.last_mixed.all() and mixer.S is None


def test_cosine_criterion_has_the_same_signs_and_unit_scale():
    model = _linear_model()
    inner = Mixer(MixingConfig(selection="gradient", probes_per_class=20), 3, seed=3)
    cos = Mixer(MixingConfig(selection="gradient", criterion="cosine", probes_per_class=20), 3, seed=3)
    x, y = _batch()
    inner(x, y, _ctx(model))
    cos(x, y, _ctx(model))
    assert torch.equal(torch.sign(inner.S), torch.sign(cos.S))
    assert float(cos.S.abs().max()) <= 1 + 1e-5


def test_full_and_last_layer_scopes_agree_on_a_linear_model():
    torch.manual_seed(0)
    model = Classifier(nn.Flatten(), 2, 3)  # no hidden layer: the head is the whole model
    last = Mixer(MixingConfig(selection="gradient", probes_per_class=8), 3, seed=5)
    full = Mixer(MixingConfig(selection="gradient", gradient_scope="full", probes_per_class=8), 3, seed=5)
    x, y = _batch()
    last(x, y, _ctx(model))
    full(x, y, _ctx(model))
    assert torch.allclose(last.S, full.S, atol=1e-5)


def test_refresh_every_epoch_refreshes_only_at_epoch_start():
    model = _linear_model()
    mixer = Mixer(MixingConfig(selection="gradient", refresh_every="epoch"), 3, seed=0)
    x, y = _batch()
    for step in range(6):
        mixer(x, y, _ctx(model, new_epoch=(step % 3 == 0)))
    assert mixer.stats.refreshes == 2
    every2 = Mixer(MixingConfig(selection="gradient", refresh_every=2), 3, seed=0)
    for _ in range(6):
        every2(x, y, _ctx(model))
    assert every2.stats.refreshes == 3


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_random_matched_mixes_at_the_requested_rate(rate):
    model = _linear_model()
    mixer = Mixer(MixingConfig(selection="random_matched", mix_rate=rate), 3, seed=0)
    x, y = torch.randn(20, 2), torch.randint(0, 3, (20,))
    for _ in range(10):
        mixer(x, y, _ctx(model))
        assert mixer.last_mixed.sum() == round(rate * 20)


def test_random_matched_follows_gradmix_rate():
    model = _linear_model()
    x, y = _batch()
    grad = Mixer(MixingConfig(selection="gradient"), 3, seed=0)
    matched = Mixer(MixingConfig(selection="random_matched"), 3, seed=0)
    grad(x, y, _ctx(model))
    matched(x, y, _ctx(model))
    assert matched.last_mixed.sum() == grad.last_mixed.sum()


def test_gradient_sample_scores_each_candidate():
    model = _linear_model()
    mixer = Mixer(MixingConfig(selection="gradient_sample"), 3, seed=0)
    x, y = _batch()
    seen_12 = 0
    for _ in range(100):
        _, target = mixer(x, y, _ctx(model))
        for i in np.nonzero(mixer.last_mixed)[0]:
            a, b = int(y[i]), int(y[mixer.last_partner[i]])
            assert (a, b) != (1, 1)  # scores -5/3 whatever lam is
            if (a, b) == (1, 2):  # scores -(1/3)(7 lam - 2): helpful only for lam < 2/7
                assert float(target[i, 1]) < 2 / 7
                seen_12 += 1
    assert seen_12 > 0  # a per-sample criterion can accept a mix of a class-level detrimental pair


def test_cutmix_box_area_matches_lam():
    rng = np.random.default_rng(0)
    lam = rng.beta(1.0, 1.0, 500)
    mask, true_lam = cutmix_masks(500, 32, 32, lam, rng)
    frac_partner = mask.float().mean(dim=(1, 2, 3)).numpy()
    assert np.allclose(true_lam, 1 - frac_partner)
    # clipping at the border only shrinks the box (the label then uses the true lam, as CutMix does)
    assert np.all(true_lam >= lam - 0.03)
    # a box centred in the image is never clipped: its area is (1 - lam) up to rounding
    lam_c = np.array([0.75, 0.5, 0.9])
    mask_c, centred = cutmix_masks(3, 32, 32, lam_c, np.random.default_rng(0),
                                   centers=(np.full(3, 16), np.full(3, 16)))
    assert np.allclose(centred, lam_c, atol=0.03)
    assert mask_c[0].sum() == 16 * 16
    xa, xb = torch.zeros(500, 3, 32, 32), torch.ones(500, 3, 32, 32)
    out, got = mix_inputs(xa, xb, lam, "cutmix", np.random.default_rng(1))
    assert np.allclose(out.mean(dim=(1, 2, 3)).numpy(), 1 - got, atol=1e-6)


def test_remix_label_rule():
    mixer = Mixer(MixingConfig(selection="remix", remix_kappa=3.0, remix_tau=0.5), 3, seed=0)
    counts = torch.tensor([10.0, 1000.0, 1000.0])  # class 0 is the minority (buffer)
    yn = np.array([1, 0, 1, 1])
    partner = np.array([1, 0, 2, 3])  # 0 <- class 0, 1 <- class 1, 2 <- class 1, 3 <- class 1
    lam = np.array([0.3, 0.7, 0.3, 0.3])
    ctx = _ctx(_linear_model(), counts=counts)
    lam_y = mixer._remix_labels(yn, partner, lam, ctx)
    assert lam_y[0] == 0.0  # majority sample, lam < tau, minority partner: label all minority
    assert lam_y[1] == 1.0  # minority sample, 1 - lam < tau: the label stays the minority's
    assert lam_y[2] == 0.3 and lam_y[3] == 0.3  # equal counts: plain mixup labels


def test_balanced_mixup_draws_partner_classes_uniformly():
    mixer = Mixer(MixingConfig(selection="balanced_mixup", alpha=0.2), 3, seed=0)
    y = torch.tensor([1] * 18 + [0, 2])  # heavily imbalanced batch
    x = torch.randn(20, 2)
    counts = np.zeros(3)
    for _ in range(300):
        mixer(x, y, _ctx(_linear_model()))
        np.add.at(counts, y.numpy()[mixer.last_partner], 1)
    frac = counts / counts.sum()
    assert np.all(np.abs(frac - 1 / 3) < 0.05)


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
@pytest.mark.parametrize("shape,mean,std", [((1, 28, 28), (0.1307,), (0.3081,)),
                                            ((3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
def test_policies_run_on_mnist_and_cifar_shapes(policy, shape, mean, std):
    aug = PolicyAugment(policy, mean, std, seed=0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, *shape) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    out = aug(x, g)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # repeatable from the generator's state
    out2 = PolicyAugment(policy, mean, std, seed=0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, out2)


# ---------------------------------------------------------------- faithfulness options

def test_balanced_mixup_draws_lam_from_its_own_beta():
    from scipy import stats

    mixer = Mixer(MixingConfig(selection="balanced_mixup", alpha=1.0, balanced_alpha=0.2), 5, seed=0)
    y = torch.arange(5)  # one sample a class: a mixed sample's partner is of another class
    x = torch.randn(5, 2)
    lams = []
    for _ in range(400):
        _, target = mixer(x, y, _ctx(_linear_model()))
        m = mixer.last_mixed
        lams += target[torch.arange(5), y][torch.from_numpy(m)].tolist()  # the instance side's weight
    lams = np.array(lams)
    assert len(lams) > 1000
    assert stats.kstest(lams, stats.beta(0.2, 1.0).cdf).pvalue > 0.01
    assert lams.mean() == pytest.approx(0.2 / 1.2, abs=0.02)  # not Beta(alpha, alpha)'s 0.5


def test_keep_clean_trains_the_clean_batch_and_the_mixes():
    mixer = Mixer(MixingConfig(selection="random_matched", mix_rate=0.5, keep_clean=True), 3, seed=0)
    x, y = _batch()
    out, target = mixer(x, y, _ctx(_linear_model()))
    m = mixer.last_mixed
    assert m.sum() == 5 and len(out) == len(y) + 5
    assert torch.equal(out[:10], x) and torch.equal(target[:10], F.one_hot(y, 3).float())
    assert torch.allclose(target[10:].sum(1), torch.ones(5))
    d = mixer.stats.as_dict()
    assert d["frac_mixed"] == 0.5
    assert d["new_class_label_weight"] == pytest.approx(float(target[:, 1:].sum(1).mean()))


def test_start_task_leaves_earlier_tasks_unmixed():
    mixer = Mixer(MixingConfig(selection="random", start_task=1), 3, seed=0)
    x, y = _batch()
    out, target = mixer(x, y, _ctx(_linear_model(), task=0))
    assert torch.equal(out, x) and torch.equal(target, F.one_hot(y, 3).float()) and not mixer.last_mixed.any()
    mixer(x, y, _ctx(_linear_model(), task=1))
    assert mixer.last_mixed.all()


def test_gradient_sample_cutmix_trains_the_box_it_scored():
    model = Classifier(nn.Flatten(), 3 * 8 * 8, 3)
    mixer = Mixer(MixingConfig(selection="gradient_sample", op="cutmix"), 3, seed=0)
    scored = {}
    original = mixer._sample_scores

    def spy(model_, xm, ym):
        scored["x"], scored["y"] = xm.clone(), ym.clone()
        return original(model_, xm, ym)

    mixer._sample_scores = spy
    y = torch.tensor([0, 1, 2, 1, 2, 0, 1, 2])
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 8, 8).contiguous()

    def probe(k, buffer_k=0):
        ys = torch.tensor([c for c in (0, 1, 2) for _ in range(k)])
        return Probes(torch.randn(len(ys), 3, 8, 8), ys, ys == 0, torch.randn(6, 3, 8, 8),
                      torch.zeros(6, dtype=torch.int64))

    seen = 0
    for _ in range(20):
        out, target = mixer(x, y, _ctx(model, probe=probe))
        m = torch.from_numpy(mixer.last_mixed)
        assert torch.equal(out[m], scored["x"][m]) and torch.equal(target[m], scored["y"][m])
        assert torch.equal(out[~m], x[~m])
        seen += int(m.sum())
    assert seen > 0


def test_proxy_loss_scores_agree_across_scopes_on_a_linear_model():
    torch.manual_seed(0)
    model = Classifier(nn.Flatten(), 2, 3)
    kw = dict(selection="gradient", probes_per_class=8)
    last = Mixer(MixingConfig(**kw), 3, seed=5, loss="proxy_contrastive", temperature=0.5)
    full = Mixer(MixingConfig(gradient_scope="full", **kw), 3, seed=5, loss="proxy_contrastive", temperature=0.5)
    ce = Mixer(MixingConfig(**kw), 3, seed=5)
    x, y = _batch()
    for m in (last, full, ce):
        m(x, y, _ctx(model))
    assert torch.allclose(last.S, full.S, atol=1e-5)
    assert not torch.allclose(last.S, ce.S, atol=1e-3)  # scored with the proxy loss, not cross-entropy
