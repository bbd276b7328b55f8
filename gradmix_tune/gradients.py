"""Last-layer per-sample gradient algebra shared by GradMix and retrieval.

For a linear head f(x) = W h(x) + b and cross-entropy with (soft) target y, one sample's
gradient is g = r h^T for W and r for b, with r = softmax(f(x)) - y. Every quantity below is
computed from (r, h) without materialising the per-sample C x D matrices. `head_gradients`
gives the same operations for the loss being trained (cross-entropy or the proxy loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def residuals(logits: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
    """r = p - y, N x C."""
    return torch.softmax(logits, dim=1) - y_soft


def augment_bias(h: torch.Tensor) -> torch.Tensor:
    """[h, 1]: folds the bias gradient r into the same algebra (g_b = r * 1)."""
    return torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], dim=1)


def per_sample_grads(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Explicit per-sample gradients [dW | db], N x C x (D+1). For tests and small checks only."""
    return r.unsqueeze(2) * augment_bias(h).unsqueeze(1)


def mean_grad(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Mean gradient over a set of samples, C x (D+1): (1/n) R^T [H, 1]."""
    return r.t() @ augment_bias(h) / max(r.shape[0], 1)


def inner_with(r: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """<g_i, G> for every sample i: r_i^T (G [h_i, 1]); N-vector, no N x C x D tensor."""
    return (r * (augment_bias(h) @ g.t())).sum(dim=1)


def group_sq_norms(r: torch.Tensor, h: torch.Tensor, n_groups: int, k: int) -> torch.Tensor:
    """||mean of g_i over each group||_F^2 for groups of exactly k consecutive samples.

    ||(1/k) sum_i r_i h_i^T||^2 = (1/k^2) sum_ij (r_i.r_j)(h_i.h_j): k x k Gram matrices per group.
    """
    ha = augment_bias(h).view(n_groups, k, -1)
    rr = r.view(n_groups, k, -1)
    gram = (rr @ rr.transpose(1, 2)) * (ha @ ha.transpose(1, 2))
    return gram.sum(dim=(1, 2)) / (k * k)


def soft_cross_entropy(logits: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
    return -(y_soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------- the trained loss
# GradMix's scores and retrieval's loss change use the gradient of the loss that is trained.
# Both heads below offer the same operations on features h and soft targets y:
#   mean_grad(h, y) -> G      inner(h, y, G) -> <g_i, G>      sq_norms(h, y, groups, k)
#   mix_inner(h, ja, jb, lam, y_mix, G): <g~, G> for feature-space mixes h~ = lam h_a + (1-lam) h_b
#   mix_scorer(h, G): the same as a function of (ja, jb, lam, y_mix), for scoring mixes in parts
#   loss(model, x, y): the loss itself (full-model gradients, virtual updates)


class CEHead:
    """Cross-entropy on f(x) = W h + b: g = r [h, 1]^T with r = softmax(f) - y."""

    def __init__(self, head: torch.nn.Linear):
        self.head = head

    def residuals(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return residuals(self.head(h), y)

    def mean_grad(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mean_grad(self.residuals(h, y), h)

    def inner(self, h: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return inner_with(self.residuals(h, y), h, g)

    def sq_norms(self, h: torch.Tensor, y: torch.Tensor, n_groups: int, k: int) -> torch.Tensor:
        return group_sq_norms(self.residuals(h, y), h, n_groups, k)

    def mix_scorer(self, h: torch.Tensor, g: torch.Tensor):
        """(ja, jb, lam, y_mix) -> <g~, G> for feature-space mixes of h's rows. Linear head: the
        mix's logits and G [h~, 1] are the same mix of its parents', taken here once, so each
        mix costs O(C) and nothing of size mixes x D is formed."""
        z, a = self.head(h), augment_bias(h) @ g.t()

        def score(ja, jb, lam, y_mix):
            r = residuals(z[jb] + lam * (z[ja] - z[jb]), y_mix)
            return (r * (a[jb] + lam * (a[ja] - a[jb]))).sum(dim=1)
        return score

    def mix_inner(self, h, ja, jb, lam, y_mix, g) -> torch.Tensor:
        return self.mix_scorer(h, g)(ja, jb, lam, y_mix)

    def loss(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(model(x), y)


class ProxyHead:
    """The proxy-based contrastive loss (losses.proxy_contrastive_loss): logits
    s_c / tau with s_c = cos(h, w_c), softmax over the `present` classes only, no bias.

    Its gradient for proxy w_c is a_c (h^ - s_c w^_c) with a_c = (p_c - y_c) / (tau |w_c|),
    h^ = h / |h|, w^_c = w_c / |w_c|: per class, r_c times the part of h^ orthogonal to w_c, so
    not rank one as for cross-entropy, but inner products and norms are still closed forms."""

    def __init__(self, head: torch.nn.Linear, temperature: float, present: torch.Tensor):
        self.head, self.tau = head, temperature
        self.present = present.to(head.weight.device).bool()  # C, the classes in the softmax

    def _parts(self, h: torch.Tensor, y: torch.Tensor):
        w = self.head.weight
        hn, wn = F.normalize(h, dim=1), F.normalize(w, dim=1)
        s = hn @ wn.t()
        logits = (s / self.tau).masked_fill(~self.present.view(1, -1), float("-inf"))
        r = (torch.softmax(logits, dim=1) - y) * self.present.view(1, -1).to(h.dtype)
        a = r / (self.tau * w.norm(dim=1).clamp_min(1e-12)).view(1, -1)
        return hn, wn, s, a

    def mean_grad(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """C x D: (1/n) sum_i a_ic (h^_i - s_ic w^_c) for every class c."""
        hn, wn, s, a = self._parts(h, y)
        return (a.t() @ hn - (a * s).sum(dim=0).view(-1, 1) * wn) / max(h.shape[0], 1)

    def inner(self, h: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        hn, wn, s, a = self._parts(h, y)
        return (a * (hn @ g.t() - s * (wn * g).sum(dim=1).view(1, -1))).sum(dim=1)

    def sq_norms(self, h: torch.Tensor, y: torch.Tensor, n_groups: int, k: int) -> torch.Tensor:
        """||mean of g_i over each group of k||^2 = (1/k^2) sum_ij [(a_i.a_j)(h^_i.h^_j) - (a_i s_i).(a_j s_j)]
        (the orthogonal parts satisfy u_ic . u_jc = h^_i . h^_j - s_ic s_jc)."""
        hn, _, s, a = self._parts(h, y)
        hn, a, as_ = hn.view(n_groups, k, -1), a.view(n_groups, k, -1), (a * s).view(n_groups, k, -1)
        gram = (a @ a.transpose(1, 2)) * (hn @ hn.transpose(1, 2)) - as_ @ as_.transpose(1, 2)
        return gram.sum(dim=(1, 2)) / (k * k)

    def mix_scorer(self, h: torch.Tensor, g: torch.Tensor):
        def score(ja, jb, lam, y_mix):
            hm = h[jb] + lam * (h[ja] - h[jb])  # normalisation is not linear: form the mixes
            return self.inner(hm, y_mix, g)
        return score

    def mix_inner(self, h, ja, jb, lam, y_mix, g) -> torch.Tensor:
        return self.mix_scorer(h, g)(ja, jb, lam, y_mix)

    def loss(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .losses import proxy_contrastive_loss

        return proxy_contrastive_loss(model.features(x), model.head.weight, y, self.tau, present=self.present)


def head_gradients(loss: str, head: torch.nn.Linear, temperature: float = 0.09,
                   present: torch.Tensor | None = None) -> CEHead | ProxyHead:
    """The closed-form last-layer gradients of `train.loss` (ce | proxy_contrastive).
    present: the classes in the proxy loss's softmax (default: all)."""
    if loss == "proxy_contrastive":
        if present is None:
            present = torch.ones(head.weight.shape[0], dtype=torch.bool)
        return ProxyHead(head, temperature, present)
    return CEHead(head)
