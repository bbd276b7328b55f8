"""GradMix's class-pair scores of one refresh, computed all at once or pair by pair on demand.

A refresh draws, for every unordered pair (a, b) of seen classes ((a, a) included), k mixes:
parent i of a with parent perm(i) of b, weight lam. `PairWindow` holds those draws and the probe
features' head outputs, so a pair's score can be computed whenever it is first needed:

  all    every pair at the refresh: O(k C^3) a refresh, the S matrix complete
  drawn  only the pairs that batches draw before the next refresh: O(k C) per pair drawn

Both run the same rows through the same element-wise and per-row operations, so a pair scored on
demand gets exactly the value the all-pairs path gives it (tests/test_pair_window.py), and the
random draws are the same in both: switching paths changes no training decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

ALL_PAIRS_UP_TO = 50  # seen classes; `auto` scores every pair up to here (<= 1275 pairs), on demand above


def scores_all(mode: str, seen_classes: int) -> bool:
    """mixing.pair_scoring: all | drawn | auto (all while the seen classes are few)."""
    return mode == "all" or (mode == "auto" and seen_classes <= ALL_PAIRS_UP_TO)


@dataclass
class PairWindow:
    groups: torch.Tensor  # m: the class of each probe group (k parents each)
    group_of: np.ndarray  # C: a class's group, -1 if it has no probes
    pair_id: np.ndarray  # m x m: the unordered pair's index (torch.triu_indices order), symmetric
    ia: torch.Tensor  # P: first group of each pair
    ib: torch.Tensor  # P
    perm: torch.Tensor  # k: parent i of a is mixed with parent perm(i) of b
    lam: torch.Tensor  # P*k mix weights, in the features' dtype
    oh: torch.Tensor  # m*k x C one-hot labels of the parents
    k: int
    score: Callable  # (ja, jb, lam, y_mix) -> <g~, G> per mix (gradients.*.mix_scorer)
    norm: Callable | None  # cosine: (ja, jb, lam, y_mix, n_pairs) -> |mean gradient| per pair
    done: np.ndarray  # P: scored in this window

    @property
    def n_pairs(self) -> int:
        return len(self.ia)

    def class_pairs(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classes (a, b) of each pair id."""
        return self.groups[self.ia[pairs]].cpu(), self.groups[self.ib[pairs]].cpu()

    def needed(self, labels: np.ndarray) -> torch.Tensor:
        """Pair ids among a batch's labels that have probes and are not scored yet."""
        g = self.group_of[np.unique(labels)]
        g = g[g >= 0]
        ids = np.unique(self.pair_id[np.ix_(g, g)])
        return torch.from_numpy(ids[~self.done[ids]])

    @torch.no_grad()
    def scores(self, pairs: torch.Tensor) -> torch.Tensor:
        """Mean of <g~, G> over each pair's k mixes (cosine: divided by the norms); marks them done."""
        k, n = self.k, len(pairs)
        pairs = pairs.to(self.ia.device)
        ar = torch.arange(k, device=self.ia.device).view(1, k)
        ja = (self.ia[pairs].view(n, 1) * k + ar).flatten()
        jb = (self.ib[pairs].view(n, 1) * k + self.perm.view(1, k)).flatten()
        lt = self.lam.view(-1, k)[pairs].reshape(-1, 1)
        y_mix = self.oh[jb] + lt * (self.oh[ja] - self.oh[jb])
        s = self.score(ja, jb, lt, y_mix).view(n, k).mean(dim=1)
        if self.norm is not None:
            s = s / self.norm(ja, jb, lt, y_mix, n)
        self.done[pairs.cpu().numpy()] = True
        return s


def pair_layout(groups: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(ia, ib) of every unordered group pair, (a, a) included, in torch.triu_indices order; the
    pair id of any two groups; each class's group."""
    m = len(groups)
    ia, ib = torch.triu_indices(m, m)
    pair_id = np.zeros((m, m), dtype=np.int64)
    pair_id[ia.numpy(), ib.numpy()] = np.arange(len(ia))
    pair_id[ib.numpy(), ia.numpy()] = np.arange(len(ia))
    group_of = np.full(num_classes, -1, dtype=np.int64)
    group_of[groups.cpu().numpy()] = np.arange(m)
    return ia, ib, pair_id, group_of
