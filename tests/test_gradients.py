"""The closed-form last-layer algebra equals autograd's."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradmix_tune import gradients as G
from gradmix_tune.models import Classifier


def _model(seed=0, d_in=6, hidden=5, classes=4):
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh()), hidden, classes).double()


def _batch(n=7, d_in=6, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    # soft targets, as mixed samples have
    y = torch.softmax(torch.randn(n, classes, generator=g, dtype=torch.float64) * 3, dim=1)
    return x, y


def _autograd_head_grads(model, x, y):
    out = []
    for i in range(len(x)):
        model.zero_grad()
        G.soft_cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        out.append(torch.cat([model.head.weight.grad, model.head.bias.grad.unsqueeze(1)], dim=1).clone())
    return torch.stack(out)


def test_per_sample_head_gradients_match_autograd():
    model = _model()
    x, y = _batch()
    h = model.features(x).detach()
    r = G.residuals(model.head(h), y).detach()
    assert torch.allclose(G.per_sample_grads(r, h), _autograd_head_grads(model, x, y), atol=1e-5)


def test_inner_products_and_mean_gradient_match_autograd():
    model = _model()
    x, y = _batch()
    xb, yb = _batch(n=11, seed=2)
    # the buffer gradient: autograd of the mean loss over the buffer probe
    model.zero_grad()
    G.soft_cross_entropy(model(xb), yb).backward()
    g_buf_auto = torch.cat([model.head.weight.grad, model.head.bias.grad.unsqueeze(1)], dim=1)
    hb = model.features(xb).detach()
    g_buf = G.mean_grad(G.residuals(model.head(hb), yb).detach(), hb)
    assert torch.allclose(g_buf, g_buf_auto, atol=1e-5)

    per = _autograd_head_grads(model, x, y)
    expected = (per * g_buf_auto.unsqueeze(0)).sum(dim=(1, 2))
    h = model.features(x).detach()
    r = G.residuals(model.head(h), y).detach()
    assert torch.allclose(G.inner_with(r, h, g_buf), expected, atol=1e-5)


def test_group_norms_match_explicit_mean_gradients():
    model = _model()
    x, y = _batch(n=12)
    h = model.features(x).detach()
    r = G.residuals(model.head(h), y).detach()
    per = G.per_sample_grads(r, h).view(3, 4, *G.per_sample_grads(r, h).shape[1:])
    expected = per.mean(dim=1).pow(2).sum(dim=(1, 2))
    assert torch.allclose(G.group_sq_norms(r, h, 3, 4), expected, atol=1e-8)


def test_soft_cross_entropy_equals_torch_with_one_hot_targets():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(G.soft_cross_entropy(logits, F.one_hot(y, 3).float()), F.cross_entropy(logits, y))


# ---------------------------------------------------------------- the loss being trained

def _proxy_autograd(model, x, y, present, tau):
    """Per-sample gradients of the proxy loss w.r.t. the proxies (head.weight), by autograd."""
    from gradmix_tune.losses import proxy_contrastive_loss

    out = []
    for i in range(len(x)):
        model.zero_grad()
        proxy_contrastive_loss(model.features(x[i:i + 1]), model.head.weight, y[i:i + 1], tau,
                               present=present).backward()
        out.append(model.head.weight.grad.clone())
    return torch.stack(out)


def test_proxy_head_gradients_match_autograd_of_the_proxy_loss():
    model = _model()
    x, y = _batch(n=8)
    xb, yb = _batch(n=6, seed=2)
    present = torch.tensor([True, False, True, True])  # class 1 not in the softmax
    y, yb = y * present, yb * present
    y, yb = y / y.sum(1, keepdim=True), yb / yb.sum(1, keepdim=True)
    tau = 0.2
    hg = G.head_gradients("proxy_contrastive", model.head, tau, present)
    per = _proxy_autograd(model, x, y, present, tau)
    per_b = _proxy_autograd(model, xb, yb, present, tau)
    h = model.features(x).detach()
    hb = model.features(xb).detach()
    with torch.no_grad():
        g_buf = hg.mean_grad(hb, yb)
        assert torch.allclose(g_buf, per_b.mean(0), atol=1e-8)
        assert torch.allclose(hg.inner(h, y, g_buf), (per * g_buf).sum(dim=(1, 2)), atol=1e-8)
        expected = per.view(2, 4, *per.shape[1:]).mean(dim=1).pow(2).sum(dim=(1, 2))
        assert torch.allclose(hg.sq_norms(h, y, 2, 4), expected, atol=1e-8)
    assert per[:, 1].abs().max() == 0  # an absent class's proxy gets no gradient


@pytest.mark.parametrize("loss", ["ce", "proxy_contrastive"])
def test_feature_space_mix_scores_equal_scores_of_the_formed_mixes(loss):
    model = _model()
    x, _ = _batch(n=6)
    y = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 2]), 4).double()
    hg = G.head_gradients(loss, model.head, 0.3)
    with torch.no_grad():
        h = model.features(x)
        g = hg.mean_grad(h, y)
        ja, jb = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 4, 4, 0])
        lam = torch.tensor([0.2, 0.5, 0.9, 1.0], dtype=torch.float64).view(-1, 1)
        y_mix = y[jb] + lam * (y[ja] - y[jb])
        hm = h[jb] + lam * (h[ja] - h[jb])
        assert torch.allclose(hg.mix_inner(h, ja, jb, lam, y_mix, g), hg.inner(hm, y_mix, g), atol=1e-10)
