"""Tensor augmentations: the standard crop+flip and the policy baselines (AutoAugment, RandAugment,
TrivialAugment).

torchvision.transforms.v2 policies expect uint8 images, so a batch is un-normalised to uint8,
augmented sample by sample (each draws its own ops) and normalised back.
"""
from __future__ import annotations

from typing import Callable

import torch

from .config import ConfigError


def _policy(name: str) -> Callable:
    from torchvision.transforms import v2

    return {"autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            "randaugment": v2.RandAugment,
            "trivialaugment": v2.TrivialAugmentWide}[name]()


class PolicyAugment:
    def __init__(self, name: str, mean: tuple[float, ...], std: tuple[float, ...], seed: int):
        self.name = name
        self.policy = _policy(name)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.seed = seed

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(None, "augment.policy", f"{self.name} needs image inputs (N x C x H x W)",
                              "use augment.policy: none for vector data")
        dev = x.device
        mean, std = self.mean.to(dev), self.std.to(dev)
        u8 = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        # v2 policies draw from torch's global RNG: seed it from our generator so runs repeat
        state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out = torch.stack([self.policy(img) for img in u8])
        torch.set_rng_state(state)
        return (out.float() / 255 - mean) / std


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation as tensor ops: random crop with zero padding + h-flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # n x h
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # n x w
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out.contiguous()
