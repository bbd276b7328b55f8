"""Training losses: cross-entropy (hard or soft targets) and the proxy-based contrastive loss.

proxy_contrastive (PCR, Lin et al. 2023, the framework of the balanced-retrieval paper): the
head's weight rows are class proxies; a sample is pulled to its class proxy and pushed from
the proxies of the other classes *present in the batch* only, on the unit sphere with a
temperature. Restricting the negatives to the batch's classes is what limits the drift of
old-class proxies compared with cross-entropy over all classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def proxy_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of features to every class proxy, divided by the temperature."""
    return F.normalize(h, dim=1) @ F.normalize(weight, dim=1).t() / temperature


def proxy_contrastive_loss(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                           temperature: float, present: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """target: class indices (N) or soft targets (N x C). Negatives: classes present in the batch,
    or the `present` mask (C, bool) when given (scores that stand in for a training batch).
    reduction: mean | none (per-sample losses)."""
    logits = proxy_logits(h, weight, temperature)
    soft = target if target.dim() == 2 else F.one_hot(target, logits.shape[1]).to(logits.dtype)
    if present is None:
        present = soft.sum(dim=0) > 0
    present = present.to(logits.device).bool()
    logits = logits.masked_fill(~present.view(1, -1), float("-inf"))
    logp = torch.log_softmax(logits, dim=1).masked_fill(~present.view(1, -1), 0.0)
    per_sample = -(soft * logp).sum(dim=1)
    return per_sample if reduction == "none" else per_sample.mean()


def proxy_drift(before: torch.Tensor, after: torch.Tensor, classes: list[int]) -> float:
    """Mean distance each listed class's (unit-normalised) proxy moved."""
    if not classes:
        return 0.0
    idx = torch.tensor(classes, device=before.device)
    return float((F.normalize(after[idx], dim=1) - F.normalize(before[idx], dim=1)).norm(dim=1).mean())
