"""Last-layer per-sample gradient algebra shared by GradMix and retrieval.

For a linear head f(x) = W h(x) + b and cross-entropy with (soft) target y, one sample's
gradient is g = r h^T for W and r for b, with r = softmax(f(x)) - y. Every quantity below is
computed from (r, h) without materialising the per-sample C x D matrices.
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
