"""Mixup / CutMix and the pair selections that decide who is mixed with whom.

`mixing.selection`:
  none            plain ER: nothing mixed
  random          ER+Mixup: every sample mixed with a random partner from the batch
  random_matched  random partners, but only a fraction of samples mixed (GradMix's own rate
                  in this batch when mix_rate is "matched"): separates selecting from mixing less
  gradient        GradMix: partner must form a helpful class pair, S[a, b] >= threshold
  gradient_sample per-sample criterion: score each candidate mix with one extra no-grad forward
  remix           Remix (Chou et al. 2020): labels pushed toward the minority class
  balanced_mixup  Balanced-MixUp (Galdran et al. 2021): partner drawn class-balanced, lam~Beta(a, 1)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import gradients as G
from .config import ConfigError, MixingConfig
from .models import eval_mode


@dataclass
class MixContext:
    """What the learner tells the mixer about the current step."""

    model: torch.nn.Module
    probe: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # k -> x, y, is_old
    buffer_empty: bool
    class_counts: torch.Tensor  # samples available per class (task data + buffer), float
    new_epoch: bool


@dataclass
class MixStats:
    mixed: int = 0
    samples: int = 0
    pairs_helpful: float = float("nan")  # of the last refresh
    selection_time_s: float = 0.0  # everything the selection added to the step, refreshes included
    refresh_time_s: float = 0.0
    refreshes: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"frac_mixed": self.mixed / max(self.samples, 1), "frac_pairs_helpful": self.pairs_helpful,
                "selection_time_s": self.selection_time_s, "refresh_time_s": self.refresh_time_s,
                "refreshes": float(self.refreshes)}


def cutmix_masks(n: int, h: int, w: int, lam: np.ndarray, rng: np.random.Generator,
                 centers: tuple[np.ndarray, np.ndarray] | None = None):
    """Per-sample boxes of area ~(1 - lam) (Yun et al. 2019): mask N x 1 x H x W (True = take the
    partner's pixel) and the true lam = 1 - box area / image area after clipping at the border."""
    cut = np.sqrt(np.clip(1 - lam, 0, 1))
    ch, cw = np.round(cut * h), np.round(cut * w)
    cy, cx = centers if centers is not None else (rng.integers(0, h, n), rng.integers(0, w, n))
    y0 = np.floor(np.clip(cy - ch / 2, 0, h))
    y1 = np.floor(np.clip(cy + ch / 2, 0, h))
    x0 = np.floor(np.clip(cx - cw / 2, 0, w))
    x1 = np.floor(np.clip(cx + cw / 2, 0, w))
    rows = np.arange(h).reshape(1, h, 1)
    cols = np.arange(w).reshape(1, 1, w)
    mask = ((rows >= y0.reshape(n, 1, 1)) & (rows < y1.reshape(n, 1, 1))
            & (cols >= x0.reshape(n, 1, 1)) & (cols < x1.reshape(n, 1, 1)))
    true_lam = 1 - mask.sum(axis=(1, 2)) / (h * w)
    return torch.from_numpy(mask).unsqueeze(1), true_lam


def mix_inputs(xa: torch.Tensor, xb: torch.Tensor, lam: np.ndarray, op: str,
               rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """lam_i xa_i + (1 - lam_i) xb_i (mixup), or xb's box pasted into xa (cutmix). Returns x, lam.

    lam == 1 leaves a sample untouched under both ops."""
    if op == "mixup":
        shape = (-1,) + (1,) * (xa.dim() - 1)
        lt = torch.from_numpy(lam).to(xa.device, xa.dtype).view(shape)
        return xb + lt * (xa - xb), lam
    if xa.dim() != 4:
        raise ConfigError(None, "mixing.op", "cutmix needs image inputs (N x C x H x W)", "use mixing.op: mixup")
    mask, true_lam = cutmix_masks(xa.shape[0], xa.shape[2], xa.shape[3], lam, rng)
    return torch.where(mask.to(xa.device), xb, xa), true_lam


def random_partner(allowed: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each row, a uniformly random allowed column (never itself); and whether any was allowed."""
    allowed = allowed.copy()
    np.fill_diagonal(allowed, False)
    scores = rng.random(allowed.shape)
    scores[~allowed] = -1.0
    return scores.argmax(axis=1), allowed.any(axis=1)


def any_partner(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random partner other than itself, for every sample."""
    return (np.arange(n) + rng.integers(1, n, n)) % n if n > 1 else np.zeros(n, dtype=np.int64)


class Mixer:
    """Holds the selection state (S matrix, buffer gradient, its RNG) across steps."""

    def __init__(self, cfg: MixingConfig, num_classes: int, seed: int):
        self.cfg, self.num_classes = cfg, num_classes
        self.rng = np.random.default_rng(seed)  # host-side: cheap per step, checkpointable
        self.S: torch.Tensor | None = None  # C x C, NaN for classes not seen at the last refresh
        self.helpful: np.ndarray | None = None  # C x C bool
        self.g_buf: torch.Tensor | None = None  # C x (D+1), gradient_sample's reference
        self.step_count = 0
        self.stats = MixStats()
        self.last_partner: np.ndarray | None = None  # of the last step, for inspection and tests
        self.last_mixed: np.ndarray | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"S": self.S, "helpful": None if self.helpful is None else torch.from_numpy(self.helpful),
                "g_buf": self.g_buf, "step_count": self.step_count, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict, device: torch.device | str = "cpu") -> None:
        self.S, self.step_count = s["S"], s["step_count"]
        self.g_buf = None if s["g_buf"] is None else s["g_buf"].to(device)  # used with device features
        self.helpful = None if s["helpful"] is None else s["helpful"].numpy()
        self.rng.bit_generator.state = s["rng"]

    def reset_stats(self) -> MixStats:
        old, self.stats = self.stats, MixStats(pairs_helpful=self.stats.pairs_helpful)
        return old

    # ------------------------------------------------------------------ the step
    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: MixContext):
        """Returns (inputs, soft targets). Only called when selection != none."""
        sel, rng = self.cfg.selection, self.rng
        self.step_count += 1
        t0 = time.perf_counter()
        n = x.shape[0]
        yn = y.cpu().numpy()
        lam = rng.beta(self.cfg.alpha, 1.0 if sel == "balanced_mixup" else self.cfg.alpha, n)
        do_mix = np.ones(n, dtype=bool)
        if sel in ("gradient", "random_matched") and not ctx.buffer_empty and self._due(ctx):
            self.refresh(ctx)
        if sel in ("random", "remix"):
            partner = any_partner(n, rng)
        elif sel == "gradient":
            if ctx.buffer_empty or self.helpful is None:  # first task: nothing to protect
                partner = any_partner(n, rng)
            else:
                partner, do_mix = random_partner(self.helpful[yn][:, yn], rng)
        elif sel == "random_matched":
            partner = any_partner(n, rng)
            k = int(round(self._matched_rate(yn) * n if not ctx.buffer_empty else n))
            do_mix = np.zeros(n, dtype=bool)
            do_mix[rng.permutation(n)[:k]] = True
        elif sel == "gradient_sample":
            partner = any_partner(n, rng)
            if not ctx.buffer_empty:
                if self.g_buf is None or self._due(ctx):
                    self.g_buf = self._buffer_grad(ctx)
                pt = torch.from_numpy(partner).to(x.device)
                xm, lam_m = mix_inputs(x, x[pt], lam, self.cfg.op, rng)
                score = self._sample_scores(ctx.model, xm, self._targets(y, pt, lam_m))
                do_mix = (score >= self.cfg.threshold).cpu().numpy()
        elif sel == "balanced_mixup":
            # class-balanced partner: a class uniformly among those in the batch, then a sample of it
            classes = np.unique(yn)
            pick = classes[rng.integers(0, len(classes), n)]
            allowed = yn[None, :] == pick[:, None]
            partner, do_mix = random_partner(allowed, rng)
        else:  # validated in config; kept for programmatic use
            raise ConfigError(None, "mixing.selection", f"unknown selection {sel!r}", "see the README")

        lam = np.where(do_mix, lam, 1.0)
        pt = torch.from_numpy(partner).to(x.device)
        x_out, lam = mix_inputs(x, x[pt], lam, self.cfg.op, rng)
        lam_y = self._remix_labels(yn, partner, lam, ctx) if sel == "remix" else lam
        self.last_partner, self.last_mixed = partner, do_mix
        self.stats.mixed += int(do_mix.sum())
        self.stats.samples += n
        self.stats.selection_time_s += time.perf_counter() - t0
        return x_out, self._targets(y, pt, lam_y)

    def _due(self, ctx: MixContext) -> bool:
        every = self.cfg.refresh_every
        if self.helpful is None and self.g_buf is None:
            return True
        if every == "epoch":
            return ctx.new_epoch
        return (self.step_count - 1) % int(every) == 0

    def _targets(self, y: torch.Tensor, partner: torch.Tensor, lam: np.ndarray) -> torch.Tensor:
        oh = F.one_hot(y, self.num_classes).float()
        lt = torch.from_numpy(np.asarray(lam)).to(oh.device, oh.dtype).view(-1, 1)
        return oh[partner] + lt * (oh - oh[partner])

    def _remix_labels(self, yn, partner, lam, ctx):
        """Remix: when class i outnumbers class j by kappa and lam < tau, the label is all j."""
        counts = ctx.class_counts.numpy()
        ratio = counts[yn] / np.maximum(counts[yn[partner]], 1)
        kappa, tau = self.cfg.remix_kappa, self.cfg.remix_tau
        lam_y = lam.copy()
        lam_y[(ratio >= kappa) & (lam < tau)] = 0.0
        lam_y[(ratio <= 1 / kappa) & (1 - lam < tau)] = 1.0
        return lam_y

    def _matched_rate(self, yn: np.ndarray) -> float:
        rate = self.cfg.mix_rate
        if not isinstance(rate, str):
            return float(rate)
        if self.helpful is None:
            return 1.0  # GradMix mixes everything while there is no buffer
        allowed = self.helpful[yn][:, yn].copy()
        np.fill_diagonal(allowed, False)
        return float(allowed.any(axis=1).mean())

    # ------------------------------------------------------------------ gradient criterion
    @staticmethod
    def _forward(model, x: torch.Tensor, chunk: int = 2048):
        hs, ls = [], []
        for i in range(0, x.shape[0], chunk):
            h = model.features(x[i:i + chunk])
            hs.append(h)
            ls.append(model.head(h))
        return torch.cat(hs), torch.cat(ls)

    def _buffer_grad(self, ctx: MixContext) -> torch.Tensor:
        px, py, old = ctx.probe(self.cfg.probes_per_class)
        with eval_mode(ctx.model) as model, torch.no_grad():
            h, logits = self._forward(model, px[old])
            return G.mean_grad(G.residuals(logits, F.one_hot(py[old], self.num_classes).float()), h)

    def _sample_scores(self, model, xm, ym) -> torch.Tensor:
        with eval_mode(model), torch.no_grad():
            h, logits = self._forward(model, xm)
            r = G.residuals(logits, ym)
            s = G.inner_with(r, h, self.g_buf)
            if self.cfg.criterion == "cosine":
                norms = r.norm(dim=1) * G.augment_bias(h).norm(dim=1) * self.g_buf.norm()
                s = s / norms.clamp_min(1e-12)
        return s

    def refresh(self, ctx: MixContext) -> torch.Tensor:
        """Recompute S[a, b] for every pair of seen classes from k probe mixes per pair.

        last_layer scope: one no-grad forward of the k probes per class; a mix's features and
        logits are taken as the same mix of its parents' (exact for the head, a first-order
        approximation for a nonlinear backbone), so every pair costs O(k C), not a forward.
        full scope: real input-space mixes and full-model gradients per pair (slow, for checks).
        """
        t0 = time.perf_counter()
        model, k, C = ctx.model, self.cfg.probes_per_class, self.num_classes
        px, py, old = ctx.probe(k)
        m = len(py) // k
        groups = py.view(m, k)[:, 0]  # probes arrive grouped, k per class
        ia, ib = torch.triu_indices(m, m)  # unordered pairs, (a, a) included
        P = len(ia)
        perm = torch.from_numpy(self.rng.permutation(k))
        ja = (ia.view(P, 1) * k + torch.arange(k).view(1, k)).flatten().to(px.device)  # probe i of a
        jb = (ib.view(P, 1) * k + perm.view(1, k)).flatten().to(px.device)  # with probe perm(i) of b
        lam = self.rng.beta(self.cfg.alpha, self.cfg.alpha, P * k)
        op = self.cfg.op if px.dim() == 4 else "mixup"
        with eval_mode(model):
            if self.cfg.gradient_scope == "full":
                xm, lam = mix_inputs(px[ja], px[jb], lam, op, self.rng)
                scores = self._full_scores(model, xm, self._pair_targets(py, ja, jb, lam),
                                           px[old], py[old], P, k)
            else:
                if op == "cutmix":  # the label weight is the pasted box's true area
                    _, lam = cutmix_masks(P * k, px.shape[2], px.shape[3], lam, self.rng)
                scores = self._last_layer_scores(model, px, py, old, ja, jb, lam, P, k)
        S = torch.full((C, C), float("nan"))
        ca, cb = groups[ia].cpu(), groups[ib].cpu()
        sc = scores.float().cpu()
        S[ca, cb] = sc
        S[cb, ca] = sc
        self.S = S
        self.helpful = (S >= self.cfg.threshold).numpy()  # NaN (unseen) compares False
        self.stats.pairs_helpful = float((sc >= self.cfg.threshold).float().mean())
        self.stats.refreshes += 1
        self.stats.refresh_time_s += time.perf_counter() - t0  # part of selection_time_s
        return S

    def _pair_targets(self, py, ja, jb, lam) -> torch.Tensor:
        oh = F.one_hot(py, self.num_classes).float()
        lt = torch.from_numpy(np.asarray(lam)).to(oh.device, oh.dtype).view(-1, 1)
        return oh[jb] + lt * (oh[ja] - oh[jb])

    @torch.no_grad()
    def _last_layer_scores(self, model, px, py, old, ja, jb, lam, P, k) -> torch.Tensor:
        h, z = self._forward(model, px)
        h, z = h.float(), z.float()
        oh = F.one_hot(py, self.num_classes).float()
        g_buf = G.mean_grad(G.residuals(z[old], oh[old]), h[old])
        self.g_buf = g_buf
        lt = torch.from_numpy(lam).to(z.device, z.dtype).view(-1, 1)
        a = G.augment_bias(h) @ g_buf.t()  # G [h, 1] for every probe: C-vectors
        r = G.residuals(z[jb] + lt * (z[ja] - z[jb]), oh[jb] + lt * (oh[ja] - oh[jb]))
        scores = (r * (a[jb] + lt * (a[ja] - a[jb]))).sum(dim=1).view(P, k).mean(dim=1)
        if self.cfg.criterion == "cosine":
            hm = h[jb] + lt * (h[ja] - h[jb])
            scores = scores / (G.group_sq_norms(r, hm, P, k).sqrt() * g_buf.norm()).clamp_min(1e-12)
        return scores

    def _full_scores(self, model, xm, ym, bx, by, n_pairs, k) -> torch.Tensor:
        """Full-model gradients per pair (slow; checks the last-layer approximation)."""
        params = [p for p in model.parameters() if p.requires_grad]

        def flat_grad(loss):
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])

        g_buf = flat_grad(F.cross_entropy(model(bx), by))
        out = []
        for i in range(n_pairs):
            sl = slice(i * k, (i + 1) * k)
            g = flat_grad(G.soft_cross_entropy(model(xm[sl]), ym[sl]))
            s = g @ g_buf
            if self.cfg.criterion == "cosine":
                s = s / (g.norm() * g_buf.norm()).clamp_min(1e-12)
            out.append(s.detach())
        return torch.stack(out)
