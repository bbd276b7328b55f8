"""The closed-form last-layer algebra equals autograd's."""
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
