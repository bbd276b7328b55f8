"""Replay buffers (reservoir, class-balanced): a host-side slot table of rows into sample tensors.

A slot holds the row of a stored sample in its storage: the learner's in-memory training tensors
when the buffer is bound to them (`source=`), else the buffer's own copies (row = slot). The slot
table (row, task) lives on the host, where the replacement decisions are made with a Python RNG
(cheap per sample, checkpointable): storing a bound sample is a Python-level write, no tensor op,
and a replay batch is gathered straight from the training data (`gather`). Decisions are drawn per
sample exactly as offering the samples one at a time would.
"""
from __future__ import annotations

import random
from bisect import insort
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import gradients as G
from .losses import proxy_contrastive_loss
from .models import eval_mode


class Buffer:
    """Fixed-size sample store. `policy`: reservoir | class_balanced.

    source: the (x, y) tensors samples are offered from (the training data); the buffer then
    stores each sample's row in them (`add_rows`) instead of a copy of the sample (`add`)."""

    def __init__(self, size: int, policy: str = "reservoir", seed: int = 0,
                 source: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.size, self.policy = size, policy
        self.source = source
        self._x, self._y = source if source is not None else (None, None)  # the storage rows point into
        self.n = 0  # filled slots
        self.seen = 0  # samples offered so far
        self.rng = random.Random(seed)
        self._table(size)

    def _table(self, size: int) -> None:
        """An empty slot table of `size` slots and its bookkeeping."""
        # CPU tensors over numpy arrays: index ops read `rows`/`task`, Python writes `_row`/`_task`
        self._row, self._task = np.zeros(size, np.int64), np.zeros(size, np.int64)
        self.rows = torch.from_numpy(self._row)  # storage row of each slot
        self.task = torch.from_numpy(self._task)  # task id of each slot (retrieval excludes the current task)
        self._labels: list[int] = [0] * size  # label of each slot
        self._counts: dict[int, int] = {}  # stored samples per class
        self._class_seen: dict[int, int] = {}  # offered samples per class
        self._slots: dict[int, list[int]] = {}  # slots of each class, ascending (class_balanced evicts from them)

    def __len__(self) -> int:
        return self.n

    @property
    def x(self) -> torch.Tensor | None:
        """The stored samples in slot order (a copy; the training loop uses `gather`)."""
        return None if self._x is None else self.gather(torch.arange(self.n))[0]

    @property
    def y(self) -> torch.Tensor | None:
        return None if self._y is None else self.gather(torch.arange(self.n))[1]

    def gather(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples (x, y) in slots i (a host tensor is best: the slot table is there)."""
        r = self.rows.index_select(0, i.cpu()).to(self._x.device)
        return self._x.index_select(0, r), self._y.index_select(0, r)

    def add(self, x: torch.Tensor, y: torch.Tensor, task: int = 0) -> None:
        """Offer a batch of samples (x, y) to a buffer of its own copies."""
        if self.source is not None:
            raise ValueError("this buffer stores rows of its source tensors: offer them with add_rows")
        put = self._place(y.tolist() if self.size else [], task)
        if not put:
            return
        if self._x is None:  # own copies: the row of a slot is the slot
            self._x = torch.empty((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self._y = torch.empty(self.size, dtype=torch.int64, device=x.device)
            self._row[:] = np.arange(self.size)
        dst = torch.tensor(list(put), device=x.device)
        src = torch.tensor(list(put.values()), device=x.device)
        self._x[dst] = x[src]
        self._y[dst] = y[src]

    def add_rows(self, rows: Sequence[int], labels: Sequence[int], task: int = 0) -> None:
        """Offer the samples at `rows` of the source tensors (labels: their classes, host-side):
        a bound buffer stores the rows, with Python-level writes only (no tensor op, no sync)."""
        if self.source is None:
            raise ValueError("this buffer keeps copies (no source tensors): offer samples with add")
        for slot, i in self._place(labels, task).items():
            self._row[slot] = rows[i]

    def _place(self, labels: Sequence[int], task: int) -> dict[int, int]:
        """Decide where each offered sample goes and update the bookkeeping, in offer order.
        Returns {slot: index in the batch} of the samples stored (the last offered wins a slot)."""
        put: dict[int, int] = {}
        if self.size == 0:
            return put
        if self.policy == "reservoir":
            fill = min(len(labels), self.size - self.n)  # free slots take the first samples
            for i in range(fill):
                put[self.n] = i
                self._put(self.n, labels[i])
            # then sample i is kept with P = size / (seen_i + 1), seen_i = samples offered before it:
            # j uniform in [0, seen_i], the draw randint(0, seen_i) makes
            draws = [self.rng.randrange(s + 1) for s in range(self.seen + fill, self.seen + len(labels))]
            for i, j in enumerate(draws, fill):
                if j < self.size:
                    put[j] = i
                    self._put(j, labels[i])
            for label in labels:
                self._class_seen[label] = self._class_seen.get(label, 0) + 1
            self.seen += len(labels)
        else:  # class_balanced: each decision depends on the one before
            for i, label in enumerate(labels):
                self._class_seen[label] = self._class_seen.get(label, 0) + 1
                slot = self._balanced_slot(label)
                self.seen += 1
                if slot is not None:
                    put[slot] = i
                    self._put(slot, label)
        for slot in put:
            self._task[slot] = task
        return put

    def _put(self, slot: int, label: int) -> None:
        """Slot `slot` now holds a sample of `label`: class counts and slot lists follow."""
        if slot < self.n:  # evicting
            old = self._labels[slot]
            self._counts[old] -= 1
            self._slots[old].remove(slot)
            if self._counts[old] == 0:
                del self._counts[old], self._slots[old]
        else:
            self.n += 1
        self._labels[slot] = label
        self._counts[label] = self._counts.get(label, 0) + 1
        insort(self._slots.setdefault(label, []), slot)

    def _balanced_slot(self, label: int) -> int | None:
        if self.n < self.size:
            return self.n
        # CBRS (Chrysakis & Moens 2020): a sample of a smaller class evicts a random sample of a
        # largest class; a sample of a largest class replaces one of its own class with
        # probability stored/seen of that class (reservoir within the class).
        largest = max(self._counts.values())
        if self._counts.get(label, 0) >= largest:
            if self.rng.random() >= self._counts[label] / self._class_seen[label]:
                return None
            target = label
        else:
            biggest = [c for c, n in self._counts.items() if n == largest]
            target = biggest[self.rng.randrange(len(biggest))]
        slots = self._slots[target]
        return slots[self.rng.randrange(len(slots))]

    def sample(self, n: int, gen: torch.Generator, exclude_task: int | None = None) -> torch.Tensor:
        """Slots of n stored samples drawn uniformly without replacement (a host tensor)."""
        if self.n == 0 or n == 0:
            return torch.empty(0, dtype=torch.int64)
        if exclude_task is not None:
            pool = torch.nonzero(self.task[: self.n] != exclude_task).flatten()
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
        n, bound = self.n, self.source is not None
        x, y = (self.x.cpu(), self.y.cpu()) if n else (None, None)  # copies, bound too: a checkpoint stands alone
        return {"size": self.size, "policy": self.policy, "n": n, "seen": self.seen, "x": x, "y": y,
                # clones: a checkpoint kept in memory must not follow the live buffer
                "task": self.task[:n].clone() if n else None,
                "rows": self.rows[:n].clone() if n and bound else None,
                "rng": self.rng.getstate(), "class_seen": dict(self._class_seen)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.size, self.policy, self.n, self.seen = state["size"], state["policy"], state["n"], state["seen"]
        self.rng.setstate(_as_rng_state(state["rng"]))
        self._table(self.size)
        self._class_seen = {int(k): v for k, v in state["class_seen"].items()}
        if state["x"] is None:
            return
        n = self.n
        self._task[:n] = state["task"].cpu().numpy()
        if self.source is not None:
            rows = state.get("rows")
            if rows is None:  # a checkpoint from before buffers stored rows: find its copies' rows
                rows = _locate(self.source, state["x"], state["y"])
            self._row[:n] = rows.cpu().numpy()
        else:
            x = state["x"].to(device)
            self._x = torch.empty((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self._y = torch.empty(self.size, dtype=torch.int64, device=x.device)
            self._x[:n] = x
            self._y[:n] = state["y"].to(device)
            self._row[:] = np.arange(self.size)
        for i, lab in enumerate(state["y"].tolist()):
            self._labels[i] = lab
            self._counts[lab] = self._counts.get(lab, 0) + 1
            self._slots.setdefault(lab, []).append(i)


def _locate(source: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The row of the source tensors holding each sample (x, y): matched on a weighted sum of the
    sample's bytes (exact integer arithmetic), then checked for equality."""
    sx, sy = source[0].cpu(), source[1].cpu()
    w = torch.arange(1, 2 * sx[0].numel() * sx.element_size(), 2)  # distinct weights: moved bytes differ

    def key(t: torch.Tensor) -> torch.Tensor:  # in chunks: the int64 copy is 8x the data
        return torch.cat([(c.reshape(len(c), -1).contiguous().view(torch.uint8).long() * w).sum(1)
                          for c in t.split(512)])

    ks = key(sx)
    order = torch.argsort(ks)
    pos = torch.searchsorted(ks[order], key(x)).clamp(max=len(ks) - 1)
    rows = order[pos]
    if not (torch.equal(sx[rows], x) and torch.equal(sy[rows], y)):
        raise ValueError("this checkpoint's buffer holds samples that are not in the training data")
    return rows


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
        parts.append(buffer.gather(torch.from_numpy(np.concatenate(par)))[0])
    if cur:
        parts.append(data_x[torch.from_numpy(np.concatenate(cur)).to(device)])
    y = torch.tensor(np.repeat(old_classes + list(current), k), dtype=torch.int64, device=device)
    old = torch.zeros(len(y), dtype=torch.bool, device=device)
    old[: len(old_classes) * k] = True
    rest_idx = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
    by = torch.from_numpy(labels[rest_idx].astype(np.int64)).to(device)
    return Probes(torch.cat(parts), y, old, buffer.gather(torch.from_numpy(rest_idx))[0], by)


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
    """Buffer slots of the replay batch (a host tensor). random: n uniform over the buffer (ER).
    Otherwise from a random subset of `candidates` buffer samples of earlier tasks, scored by
    `loss_change`: mir = the n largest C (gradient-conflicting), aligned = the n smallest,
    balanced = n of each, 2n in all (Balanced Gradient Sample Retrieval: N + N beside the current
    batch; a pool of fewer than 2n candidates is taken whole). While the buffer holds no earlier task (the first task) every
    rule replays as random does, the same n samples from the same draws."""
    if mode == "random":
        return buffer.sample(n, gen)
    pool = buffer.sample(candidates, gen, exclude_task=task)
    if len(pool) == 0:  # nothing of an earlier task: replay as ER does
        return buffer.sample(n, gen)
    want = 2 * n if mode == "balanced" else n
    if len(pool) <= want:
        return pool
    cx, cy = buffer.gather(pool)
    c = loss_change(model, cx, cy, x, y, lr, virtual_update, loss, temperature)
    order = torch.argsort(c, descending=True, stable=True).cpu()  # the slot table is on the host
    if mode == "mir":
        pick = order[:n]
    elif mode == "aligned":
        pick = order[-n:]
    else:  # balanced: the n most conflicting and the n most aligned (disjoint: the pool exceeds 2n)
        pick = torch.cat([order[:n], order[len(order) - n:]])
    return pool[pick]
