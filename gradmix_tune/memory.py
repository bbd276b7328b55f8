"""Replay buffers (reservoir, class-balanced) as preallocated tensors on the device.

Replacement decisions use a Python RNG (cheap per sample, checkpointable); the data moves
in one indexed copy per batch.
"""
from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import gradients as G
from .losses import proxy_contrastive_loss
from .models import eval_mode


class Buffer:
    """Fixed-size sample store. `policy`: reservoir | class_balanced."""

    def __init__(self, size: int, policy: str = "reservoir", seed: int = 0):
        self.size, self.policy = size, policy
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.task = None  # task id of each stored sample (retrieval excludes the current task)
        self.n = 0  # filled slots
        self.seen = 0  # samples offered so far
        self.rng = random.Random(seed)
        self._counts: dict[int, int] = {}  # stored samples per class
        self._class_seen: dict[int, int] = {}  # offered samples per class
        self._labels: list[int] = [0] * size  # label of each slot, host-side

    def __len__(self) -> int:
        return self.n

    def _alloc(self, x: torch.Tensor) -> None:
        self.x = torch.empty((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.empty(self.size, dtype=torch.int64, device=x.device)
        self.task = torch.empty(self.size, dtype=torch.int64, device=x.device)

    def add(self, x: torch.Tensor, y: torch.Tensor, task: int = 0) -> None:
        if self.size == 0:
            return
        if self.x is None:
            self._alloc(x)
        labels = y.tolist()
        src, dst = [], []
        for i, label in enumerate(labels):
            self._class_seen[label] = self._class_seen.get(label, 0) + 1
            slot = self._slot(label)
            self.seen += 1
            if slot is None:
                continue
            if slot < self.n:  # evicting: keep class counts right
                old = int(self._labels[slot])
                self._counts[old] -= 1
                if self._counts[old] == 0:
                    del self._counts[old]
            else:
                self.n += 1
            self._labels[slot] = label
            self._counts[label] = self._counts.get(label, 0) + 1
            # a later sample in the same batch may take the same slot: last write wins
            if slot in dst:
                k = dst.index(slot)
                del src[k], dst[k]
            src.append(i)
            dst.append(slot)
        if dst:
            d = torch.tensor(dst, device=x.device)
            s = torch.tensor(src, device=x.device)
            self.x[d] = x[s]
            self.y[d] = y[s]
            self.task[d] = task

    def _slot(self, label: int) -> int | None:
        if self.n < self.size:
            return self.n
        if self.policy == "reservoir":
            j = self.rng.randint(0, self.seen)  # inclusive: P(keep) = size / (seen + 1)
            return j if j < self.size else None
        # class_balanced (CBRS, Chrysakis & Moens 2020): a sample of a smaller class evicts a
        # random sample of a largest class; a sample of a largest class replaces one of its own
        # class with probability stored/seen of that class (reservoir within the class).
        largest = max(self._counts.values())
        if self._counts.get(label, 0) >= largest:
            if self.rng.random() >= self._counts[label] / self._class_seen[label]:
                return None
            target = label
        else:
            biggest = [c for c, n in self._counts.items() if n == largest]
            target = biggest[self.rng.randrange(len(biggest))]
        slots = [i for i, lab in enumerate(self._labels[: self.n]) if lab == target]
        return slots[self.rng.randrange(len(slots))]

    def sample(self, n: int, gen: torch.Generator, exclude_task: int | None = None) -> torch.Tensor:
        """Indices of n stored samples drawn uniformly without replacement."""
        if self.n == 0 or n == 0:
            return torch.empty(0, dtype=torch.int64)
        if exclude_task is not None:
            pool = torch.nonzero(self.task[: self.n].cpu() != exclude_task).flatten()
            if len(pool) == 0:
                return pool
            perm = torch.randperm(len(pool), generator=gen)[:n]
            return pool[perm]
        return torch.randperm(self.n, generator=gen)[:n]

    def class_counts(self) -> dict[int, int]:
        return dict(sorted(self._counts.items()))

    def labels(self) -> list[int]:
        """The label of each filled slot, host-side (no device sync)."""
        return self._labels[: self.n]

    def state_dict(self) -> dict:
        return {"size": self.size, "policy": self.policy, "n": self.n, "seen": self.seen,
                # clones: a checkpoint kept in memory must not follow the live buffer
                "x": None if self.x is None else self.x[: self.n].cpu().clone(),
                "y": None if self.y is None else self.y[: self.n].cpu().clone(),
                "task": None if self.task is None else self.task[: self.n].cpu().clone(),
                "rng": self.rng.getstate(), "class_seen": dict(self._class_seen)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.size, self.policy, self.n, self.seen = state["size"], state["policy"], state["n"], state["seen"]
        self.rng.setstate(_as_rng_state(state["rng"]))
        self._class_seen = {int(k): v for k, v in state["class_seen"].items()}
        self._labels = [0] * self.size
        self._counts = {}
        if state["x"] is not None:
            self._alloc(state["x"].to(device))
            self.x[: self.n] = state["x"].to(device)
            self.y[: self.n] = state["y"].to(device)
            self.task[: self.n] = state["task"].to(device)
            for i, lab in enumerate(state["y"].tolist()):
                self._labels[i] = lab
                self._counts[lab] = self._counts.get(lab, 0) + 1


def _as_rng_state(s):
    # random.getstate() is (version, tuple, gauss); serialisers may turn tuples into lists
    return (s[0], tuple(s[1]), s[2])


# ---------------------------------------------------------------------------- probes

class Probes(NamedTuple):
    """GradMix's probes. x, y, is_old: k mix parents per seen class, grouped by class, old
    classes first. bx, by: the buffer-gradient sample of the old classes, disjoint from the
    parents wherever the buffer holds more than k of a class."""

    x: torch.Tensor
    y: torch.Tensor
    is_old: torch.Tensor
    bx: torch.Tensor
    by: torch.Tensor


def draw_probes(buffer: Buffer, data_x: torch.Tensor, by_class: dict[int, np.ndarray], current: list[int],
                k: int, rng: np.random.Generator, buffer_k: int = 0) -> Probes:
    """Parents: k per seen class, without replacement where the class has k samples (the buffer
    for old classes, those it holds that are not `current`; `data_x[by_class[c]]` for current
    ones). Buffer-gradient sample: `buffer_k` more per old class from the samples that are not
    parents (0 = all of them; fewer when fewer remain; the parents' pool when none remain)."""
    labels = np.asarray(buffer.labels())
    old_classes = sorted(set(labels.tolist()) - set(current))
    device = data_x.device

    def parents(pool: np.ndarray) -> np.ndarray:
        return rng.choice(pool, k, replace=len(pool) < k)

    par, rest = [], []
    for c in old_classes:
        pool = rng.permutation(np.flatnonzero(labels == c))
        if len(pool) > k:
            par.append(pool[:k])
            r = pool[k:]
        else:
            par.append(parents(pool))
            r = pool
        rest.append(r if buffer_k <= 0 else r[:buffer_k])
    cur = [parents(by_class[c]) for c in current]
    parts = []
    if par:
        parts.append(buffer.x[torch.from_numpy(np.concatenate(par)).to(device)])
    if cur:
        parts.append(data_x[torch.from_numpy(np.concatenate(cur)).to(device)])
    y = torch.tensor(np.repeat(old_classes + list(current), k), dtype=torch.int64, device=device)
    old = torch.zeros(len(y), dtype=torch.bool, device=device)
    old[: len(old_classes) * k] = True
    rest_idx = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
    bidx = torch.from_numpy(rest_idx).to(device)
    by = torch.from_numpy(labels[rest_idx].astype(np.int64)).to(device)
    return Probes(torch.cat(parts), y, old, buffer.x[bidx], by)


# ---------------------------------------------------------------------------- retrieval

def loss_change(model, cx: torch.Tensor, cy: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                lr: float, virtual_update: bool = False, loss: str = "ce",
                temperature: float = 0.09) -> torch.Tensor:
    """C(x) for each candidate: how much its loss would rise after an SGD step on the current batch.

    Closed form (default): C(x) ~ -lr <grad l(x), grad L_cur>, from the last layer's per-sample
    gradients of the trained loss (`loss`: ce | proxy_contrastive; no backward pass). Under the
    proxy loss the softmax runs over the classes of the current batch and the candidates, as in
    a training batch of both. virtual_update: the true change after a virtual SGD step on a
    functional copy of the whole model, as in the original MIR (Aljundi et al. 2019).
    """
    C = model.head.weight.shape[0]
    present = torch.zeros(C, dtype=torch.bool, device=x.device)
    present[y] = True
    present[cy] = True
    hg = G.head_gradients(loss, model.head, temperature, present)
    oh, ohc = F.one_hot(y, C).float(), F.one_hot(cy, C).float()
    with eval_mode(model):
        if not virtual_update:
            with torch.no_grad():
                g_cur = hg.mean_grad(model.features(x), oh)
                return -lr * hg.inner(model.features(cx), ohc, g_cur)
        params = {k: v for k, v in model.named_parameters()}
        grads = torch.autograd.grad(hg.loss(model, x, oh), list(params.values()), allow_unused=True)
        with torch.no_grad():
            stepped = {k: (v - lr * g if g is not None else v) for (k, v), g in zip(params.items(), grads)}
            before = _per_sample_loss(model, dict(params), cx, ohc, loss, temperature, present)
            after = _per_sample_loss(model, stepped, cx, ohc, loss, temperature, present)
        return after - before


def _per_sample_loss(model, params: dict, x, y_soft, loss, temperature, present) -> torch.Tensor:
    """The trained loss of each sample under the parameters `params` (functional call)."""
    from torch.func import functional_call

    if loss == "proxy_contrastive":
        bb = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        h = functional_call(model.backbone, bb, (x,), strict=False)
        return proxy_contrastive_loss(h, params["head.weight"], y_soft, temperature, present=present,
                                      reduction="none")
    return -(y_soft * F.log_softmax(functional_call(model, params, (x,), strict=False), dim=1)).sum(dim=1)


def retrieve(model, buffer: Buffer, x: torch.Tensor, y: torch.Tensor, n: int, mode: str,
             candidates: int, task: int, gen: torch.Generator, lr: float,
             virtual_update: bool = False, loss: str = "ce", temperature: float = 0.09) -> torch.Tensor:
    """Indices of the replay batch. random: n uniform over the buffer (ER). Otherwise from a random
    subset of `candidates` buffer samples of earlier tasks, scored by `loss_change`: mir = the n
    largest C (gradient-conflicting), aligned = the n smallest, balanced = n of each, 2n in all
    (Balanced Gradient Sample Retrieval: N + N beside the current batch; a pool of fewer than 2n
    candidates is taken whole). While the buffer holds no earlier task (the first task) every
    rule replays as random does, the same n samples from the same draws."""
    if mode == "random":
        return buffer.sample(n, gen)
    pool = buffer.sample(candidates, gen, exclude_task=task).to(buffer.x.device)
    if len(pool) == 0:  # nothing of an earlier task: replay as ER does
        return buffer.sample(n, gen)
    want = 2 * n if mode == "balanced" else n
    if len(pool) <= want:
        return pool
    c = loss_change(model, buffer.x[pool], buffer.y[pool], x, y, lr, virtual_update, loss, temperature)
    order = torch.argsort(c, descending=True, stable=True)
    if mode == "mir":
        pick = order[:n]
    elif mode == "aligned":
        pick = order[-n:]
    else:  # balanced: the n most conflicting and the n most aligned (disjoint: the pool exceeds 2n)
        pick = torch.cat([order[:n], order[len(order) - n:]])
    return pool[pick]
