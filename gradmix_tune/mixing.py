"""Mixup / CutMix and the pair selections that decide who is mixed with whom.

`mixing.selection`:
  none            plain ER: nothing mixed
  random          ER+Mixup: every sample mixed with a random partner from the batch
  random_matched  random partners, but only as many samples mixed as GradMix would mix in this
                  batch (mix_rate "matched") or a fixed fraction: separates selecting from mixing less
  random_composed random partners with GradMix's composition in this batch: as many mixed, and
                  as many old-old, old-new and new-new pairs: separates the criterion from the
                  rebalancing toward old-class partners it brings
  gradient        GradMix: partner must form a helpful class pair, S[a, b] >= threshold
  gradient_sample per-sample criterion: score each candidate mix with one extra no-grad forward
  remix           Remix (Chou et al. 2020): labels pushed toward the minority class
  balanced_mixup  Balanced-MixUp (Galdran et al. 2021): partner drawn class-balanced,
                  lam ~ Beta(balanced_alpha, 1) on the instance-sampled side
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import gradients as G
from .config import ConfigError, MixingConfig
from .models import eval_mode
from .pair_window import PairWindow, pair_layout, scores_all
from .selection import (PAIR_TYPES, any_partner, composed_partners, composition, decision_flips,
                        pair_helpful_fractions, random_partner)

if TYPE_CHECKING:
    from .memory import Probes

NAN = float("nan")
SCORED = ("gradient", "random_matched", "random_composed")  # the selections that keep GradMix's S


@dataclass
class MixContext:
    """What the learner tells the mixer about the current step."""

    model: torch.nn.Module
    # (k, buffer_k) -> memory.Probes: k mix parents per seen class (x, y, is_old, grouped by class)
    # and a buffer-gradient sample of the old classes disjoint from them (bx, by; buffer_k per class, 0 = all)
    probe: Callable[[int, int], "Probes"]
    buffer_empty: bool
    class_counts: torch.Tensor | None  # samples available per class (task data + buffer), float
    new_epoch: bool
    task: int = 0
    current_classes: tuple[int, ...] = ()  # the current task's classes: "new"


@dataclass
class MixStats:
    """Per-epoch counters; `as_dict` is what the learner logs. Every selection reports every name
    (NaN where it does not apply: no criterion, or no two refreshes of a task yet)."""

    samples: int = 0  # in the batch before mixing
    mixed: int = 0
    current: int = 0  # samples of the current task's classes
    current_mixed: int = 0
    rows: int = 0  # trained rows (keep_clean: clean + mixed)
    new_mass: float = 0.0  # label mass on the current task's classes over the trained rows
    flips: int = 0
    compared: int = 0
    scored: np.ndarray = field(default_factory=lambda: np.zeros(3))  # gradient_sample, per pair type
    accepted: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pairs_helpful: dict[str, float] = field(default_factory=dict)  # of the last refresh
    selection_time_s: float = 0.0  # everything the selection added to the step, refreshes included
    refresh_time_s: float = 0.0
    refreshes: int = 0

    def as_dict(self) -> dict[str, float]:
        ph = dict(self.pairs_helpful)
        if self.scored.sum() > 0:  # gradient_sample: the candidate mixes scored this epoch
            ph = {"all": float(self.accepted.sum() / self.scored.sum())}
            ph.update({t: float(self.accepted[i] / self.scored[i]) if self.scored[i] else NAN
                       for i, t in enumerate(PAIR_TYPES)})
        out = {"frac_mixed": self.mixed / max(self.samples, 1),
               "frac_current_mixed": self.current_mixed / self.current if self.current else NAN,
               "new_class_label_weight": self.new_mass / self.rows if self.rows else NAN,
               "frac_pairs_helpful": ph.get("all", NAN)}
        out.update({f"pairs_helpful_{t}": ph.get(t, NAN) for t in PAIR_TYPES})
        out.update({"decision_flip_rate": self.flips / self.compared if self.compared else NAN,
                    "selection_time_s": self.selection_time_s, "refresh_time_s": self.refresh_time_s,
                    "refreshes": float(self.refreshes)})
        return out


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

    lam == 1 leaves a sample untouched, bit for bit, under both ops."""
    if op == "mixup":
        shape = (-1,) + (1,) * (xa.dim() - 1)
        lt = torch.from_numpy(np.asarray(lam)).to(xa.device, xa.dtype).view(shape)
        return torch.where(lt == 1, xa, xb + lt * (xa - xb)), lam
    if xa.dim() != 4:
        raise ConfigError(None, "mixing.op", "cutmix needs image inputs (N x C x H x W)", "use mixing.op: mixup")
    mask, true_lam = cutmix_masks(xa.shape[0], xa.shape[2], xa.shape[3], lam, rng)
    return torch.where(mask.to(xa.device), xb, xa), true_lam


def soft_targets(y: torch.Tensor, partner: torch.Tensor, lam: np.ndarray, num_classes: int) -> torch.Tensor:
    """lam y + (1 - lam) y[partner], one-hot."""
    oh = F.one_hot(y, num_classes).float()
    lt = torch.from_numpy(np.asarray(lam)).to(oh.device, oh.dtype).view(-1, 1)
    return oh[partner] + lt * (oh - oh[partner])


class Mixer:
    """Holds the selection state (S matrix, buffer gradient, its RNG) across steps.

    loss / temperature: the trained loss (`train.loss`), whose gradients the criterion uses."""

    def __init__(self, cfg: MixingConfig, num_classes: int, seed: int, loss: str = "ce",
                 temperature: float = 0.09):
        self.cfg, self.num_classes = cfg, num_classes
        self.loss, self.temperature = loss, temperature
        self.rng = np.random.default_rng(seed)  # host-side: cheap per step, checkpointable
        self.S: torch.Tensor | None = None  # C x C, NaN for classes not seen at the last refresh
        self.helpful: np.ndarray | None = None  # C x C bool
        self.class_new = np.zeros(num_classes, dtype=bool)  # at the last refresh
        self.present = torch.zeros(num_classes, dtype=torch.bool)  # classes seen at the last refresh
        self.g_buf: torch.Tensor | None = None  # the buffer gradient of the last refresh
        self.task: int | None = None  # the task of the last refresh
        self.since_refresh = 0  # steps
        self.stats = MixStats()
        self.last_partner: np.ndarray | None = None  # of the last step, for inspection and tests
        self.last_mixed: np.ndarray | None = None
        self.last_reference: tuple[np.ndarray, np.ndarray] | None = None  # random_composed: GradMix's draw
        self.window: PairWindow | None = None  # pair_scoring drawn: the last refresh's draws, scored on demand
        self._pairs_dirty = False  # drawn: pairs_helpful to recompute from S

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"S": self.S, "helpful": None if self.helpful is None else torch.from_numpy(self.helpful),
                "g_buf": self.g_buf, "since_refresh": self.since_refresh, "task": self.task,
                "class_new": torch.from_numpy(self.class_new), "present": self.present.cpu(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict, device: torch.device | str = "cpu") -> None:
        self.S, self.since_refresh, self.task = s["S"], s["since_refresh"], s["task"]
        self.g_buf = None if s["g_buf"] is None else s["g_buf"].to(device)  # used with device features
        self.helpful = None if s["helpful"] is None else s["helpful"].numpy()
        self.class_new, self.present = s["class_new"].numpy().copy(), s["present"].clone()
        self.rng.bit_generator.state = s["rng"]

    def reset_stats(self) -> MixStats:
        if self._pairs_dirty:  # drawn: over the pairs scored so far in the task, each by its latest score
            self.stats.pairs_helpful = pair_helpful_fractions(self.helpful, torch.isfinite(self.S).numpy(),
                                                              self.class_new)
            self._pairs_dirty = False
        old, self.stats = self.stats, MixStats(pairs_helpful=dict(self.stats.pairs_helpful))
        return old

    # ------------------------------------------------------------------ the step
    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: MixContext):
        """Returns (inputs, soft targets). Only called when selection != none."""
        cfg, sel, rng = self.cfg, self.cfg.selection, self.rng
        t0 = time.perf_counter()
        n = x.shape[0]
        yn = y.cpu().numpy()
        is_new = np.isin(yn, np.asarray(ctx.current_classes, dtype=yn.dtype))
        if ctx.task < cfg.start_task:  # no mixing before mixing.start_task
            return self._finish(x, x, y, np.arange(n), np.zeros(n, dtype=bool), np.ones(n), is_new, t0)
        if sel == "balanced_mixup":  # lam weighs the instance-sampled side
            lam = rng.beta(cfg.balanced_alpha, 1.0, n)
        else:
            lam = rng.beta(cfg.alpha, cfg.alpha, n)
        scored = sel in SCORED and not ctx.buffer_empty
        if scored and self._due(ctx):
            self.refresh(ctx)
        elif sel == "gradient_sample" and not ctx.buffer_empty and self._due(ctx):
            self._refresh_buffer_grad(ctx)
        self.since_refresh += 1
        if scored and self.window is not None:
            self._score_drawn(yn)
        do_mix = np.ones(n, dtype=bool)
        if sel in ("random", "remix") or sel in SCORED and not scored:  # first task: mix as ER+Mixup
            partner = any_partner(n, rng)
        elif sel == "gradient":
            partner, do_mix = random_partner(self.helpful[yn][:, yn], rng)
        elif sel == "random_matched":
            partner = any_partner(n, rng)
            k = int(round(self._matched_rate(yn) * n))
            do_mix = np.zeros(n, dtype=bool)
            do_mix[rng.permutation(n)[:k]] = True
        elif sel == "random_composed":
            ref = random_partner(self.helpful[yn][:, yn], rng)  # what GradMix would choose here
            self.last_reference = ref
            partner, do_mix = composed_partners(is_new, composition(is_new, *ref), rng)
        elif sel == "gradient_sample":
            partner = any_partner(n, rng)
            if not ctx.buffer_empty:  # score the very mixes that are then trained (one box each)
                pt = torch.from_numpy(partner).to(x.device)
                xm, lam_m = mix_inputs(x, x[pt], lam, cfg.op, rng)
                score = self._sample_scores(ctx.model, xm, soft_targets(y, pt, lam_m, self.num_classes))
                do_mix = (score >= cfg.threshold).cpu().numpy()
                kind = is_new.astype(int) + is_new[partner].astype(int)
                np.add.at(self.stats.scored, kind, 1)
                np.add.at(self.stats.accepted, kind[do_mix], 1)
                keep = torch.from_numpy(do_mix).to(x.device).view((-1,) + (1,) * (x.dim() - 1))
                partner = np.where(do_mix, partner, np.arange(n))
                return self._finish(x, torch.where(keep, xm, x), y, partner, do_mix,
                                    np.where(do_mix, lam_m, 1.0), is_new, t0)
        elif sel == "balanced_mixup":
            # class-balanced partner: a class uniformly among those in the batch, then a sample of it
            classes = np.unique(yn)
            pick = classes[rng.integers(0, len(classes), n)]
            partner, do_mix = random_partner(yn[None, :] == pick[:, None], rng)
        else:  # validated in config; kept for programmatic use
            raise ConfigError(None, "mixing.selection", f"unknown selection {sel!r}", "see the README")
        partner = np.where(do_mix, partner, np.arange(n))  # an unmixed sample is its own partner
        lam = np.where(do_mix, lam, 1.0)
        x_out, lam = mix_inputs(x, x[torch.from_numpy(partner).to(x.device)], lam, cfg.op, rng)
        lam_y = self._remix_labels(yn, partner, lam, ctx) if sel == "remix" else lam
        return self._finish(x, x_out, y, partner, do_mix, lam_y, is_new, t0)

    def _finish(self, x, x_out, y, partner, do_mix, lam_y, is_new, t0):
        """Targets, `keep_clean` and the per-epoch counters; returns (inputs, soft targets)."""
        n = len(partner)
        target = soft_targets(y, torch.from_numpy(partner).to(y.device), lam_y, self.num_classes)
        mass = lam_y * is_new + (1 - lam_y) * is_new[partner]  # label mass on new classes, per row
        rows, new_mass = n, float(mass.sum())
        if self.cfg.keep_clean:  # the clean batch (hard labels) and, besides it, the mixes
            m = torch.from_numpy(do_mix).to(x.device)
            x_out = torch.cat([x, x_out[m]])
            target = torch.cat([F.one_hot(y, self.num_classes).to(target.dtype), target[m]])
            rows, new_mass = n + int(do_mix.sum()), float(is_new.sum() + mass[do_mix].sum())
        st = self.stats
        st.samples += n
        st.mixed += int(do_mix.sum())
        st.current += int(is_new.sum())
        st.current_mixed += int((do_mix & is_new).sum())
        st.rows += rows
        st.new_mass += new_mass
        self.last_partner, self.last_mixed = partner, do_mix
        st.selection_time_s += time.perf_counter() - t0
        return x_out, target

    def _due(self, ctx: MixContext) -> bool:
        """Refresh at a task's first step (new classes, a new set of old ones), then every
        `refresh_every` steps of the task, or at every epoch's first step."""
        if self.task != ctx.task or (self.helpful is None and self.g_buf is None):
            return True
        if self.cfg.refresh_every == "epoch":
            return ctx.new_epoch
        return self.since_refresh >= int(self.cfg.refresh_every)

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
        allowed = self.helpful[yn][:, yn].copy()
        np.fill_diagonal(allowed, False)
        return float(allowed.any(axis=1).mean())

    # ------------------------------------------------------------------ gradient criterion
    def _head(self, model):
        return G.head_gradients(self.loss, model.head, self.temperature, self.present)

    @staticmethod
    def _features(model, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        return torch.cat([model.features(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])

    def _start_refresh(self, ctx: MixContext, py: torch.Tensor) -> None:
        if self.task != ctx.task:
            self.S = self.helpful = None  # a new task: new old classes, so no average with the last task's S
        self.present = torch.zeros(self.num_classes, dtype=torch.bool)
        self.present[py.cpu()] = True
        self.class_new = np.isin(np.arange(self.num_classes), np.asarray(ctx.current_classes, dtype=np.int64))
        self.task, self.since_refresh = ctx.task, 0
        self.stats.refreshes += 1

    def _refresh_buffer_grad(self, ctx: MixContext) -> None:
        """gradient_sample's reference: the buffer gradient from k probes per old class."""
        t0 = time.perf_counter()
        p = ctx.probe(self.cfg.probes_per_class, self.cfg.buffer_probes)
        self._start_refresh(ctx, p.y)
        with eval_mode(ctx.model) as model, torch.no_grad():
            self.g_buf = self._head(model).mean_grad(self._features(model, p.bx),
                                                     F.one_hot(p.by, self.num_classes).float())
        self.stats.refresh_time_s += time.perf_counter() - t0

    def _sample_scores(self, model, xm, ym) -> torch.Tensor:
        with eval_mode(model), torch.no_grad():
            h, hg = self._features(model, xm), self._head(model)
            s = hg.inner(h, ym, self.g_buf)
            if self.cfg.criterion == "cosine":
                s = s / (hg.sq_norms(h, ym, len(h), 1).sqrt() * self.g_buf.norm()).clamp_min(1e-12)
        return s

    def refresh(self, ctx: MixContext) -> torch.Tensor:
        """Recompute S[a, b] for every pair of seen classes from k probe mixes per pair; blend it
        into the running S (`score_momentum`) within a task; update the helpful pairs.

        Probes: k mix parents per seen class; the buffer gradient comes from a separate sample
        of the old classes' buffer samples (`buffer_probes` a class, 0 = every one that is not a
        parent), so its noise is independent of the mixes'. last_layer scope: one no-grad
        forward of the probes; a mix's features are taken as the same mix of its parents'
        features, which is exact for mixing in feature space (manifold mixup at the head) and a
        first-order approximation of input mixup through a nonlinear backbone (the README gives
        the measured agreement). Every pair then costs O(k C), not a forward. full scope: real
        input-space mixes and full-model gradients of the trained loss per pair (slow, for checks).

        `pair_scoring` (pair_window.py): every pair now, or (last_layer scope) each pair when a
        batch first draws it, with this refresh's draws and features: the same values, at O(k C)
        a drawn pair instead of O(k C^3) a refresh.
        """
        t0 = time.perf_counter()
        model, k, C = ctx.model, self.cfg.probes_per_class, self.num_classes
        p = ctx.probe(k, self.cfg.buffer_probes)
        px, py = p.x, p.y
        self._start_refresh(ctx, py)
        m = len(py) // k
        groups = py.view(m, k)[:, 0]  # probes arrive grouped, k per class
        ia, ib, pair_id, group_of = pair_layout(groups, C)  # unordered pairs, (a, a) included
        P = len(ia)
        perm = torch.from_numpy(self.rng.permutation(k))
        lam = self.rng.beta(self.cfg.alpha, self.cfg.alpha, P * k)
        op = self.cfg.op if px.dim() == 4 else "mixup"
        oh = F.one_hot(py, C).float()
        every_pair = scores_all(self.cfg.pair_scoring, m)
        with eval_mode(model):
            hg = self._head(model)
            if self.cfg.gradient_scope == "full":
                ja = (ia.view(P, 1) * k + torch.arange(k).view(1, k)).flatten().to(px.device)  # probe i of a
                jb = (ib.view(P, 1) * k + perm.view(1, k)).flatten().to(px.device)  # with probe perm(i) of b
                xm, lam = mix_inputs(px[ja], px[jb], lam, op, self.rng)
                scores = self._full_scores(model, hg, xm, self._pair_targets(oh, ja, jb, lam),
                                           p.bx, F.one_hot(p.by, C).float(), P, k)
                every_pair = True
            else:
                if op == "cutmix":  # the label weight is the pasted box's true area
                    _, lam = cutmix_masks(P * k, px.shape[2], px.shape[3], lam, self.rng)
                with torch.no_grad():
                    h = self._features(model, px).float()
                    self.g_buf = hg.mean_grad(self._features(model, p.bx).float(), F.one_hot(p.by, C).float())
                if not every_pair:  # scored later, after training steps: a frozen copy of today's head
                    hg = G.head_gradients(self.loss, copy.deepcopy(model.head), self.temperature, self.present)
                dev = h.device
                self.window = PairWindow(groups, group_of, pair_id, ia.to(dev), ib.to(dev), perm.to(dev),
                                         torch.from_numpy(lam).to(dev, h.dtype), oh, k,
                                         hg.mix_scorer(h, self.g_buf), self._norm(hg, h, k),
                                         np.zeros(P, dtype=bool))
                if every_pair:
                    scores = self.window.scores(torch.arange(P))
        if every_pair:
            self.window = None
            fresh = torch.full((C, C), NAN)
            ca, cb = groups[ia].cpu(), groups[ib].cpu()
            fresh[ca, cb] = scores.float().cpu()
            fresh[cb, ca] = scores.float().cpu()
            self._update_scores(fresh)
        elif self.S is None:  # a task's first window: nothing scored yet
            self.S, self.helpful = torch.full((C, C), NAN), np.zeros((C, C), dtype=bool)
        self.stats.refresh_time_s += time.perf_counter() - t0  # part of selection_time_s
        return self.S

    def _norm(self, hg, h, k):
        """cosine: each pair's |mean gradient of its k mixes| x |G| (the scores' divisor)."""
        if self.cfg.criterion != "cosine":
            return None
        g_norm = self.g_buf.norm()

        def norm(ja, jb, lt, y_mix, n):
            hm = h[jb] + lt * (h[ja] - h[jb])
            return (hg.sq_norms(hm, y_mix, n, k).sqrt() * g_norm).clamp_min(1e-12)
        return norm

    def _score_drawn(self, labels: np.ndarray) -> None:
        """pair_scoring drawn: score the batch's class pairs not scored since the last refresh, blend
        them into S (`score_momentum`, with the pair's previous score in the task) and decide them."""
        t0 = time.perf_counter()
        w = self.window
        pairs = w.needed(labels)
        if len(pairs):
            fresh = w.scores(pairs).float().cpu()
            ca, cb = (c.numpy() for c in w.class_pairs(pairs))
            prev = self.S[ca, cb]
            known = torch.isfinite(prev)
            mom = self.cfg.score_momentum
            new = torch.where(known, mom * prev + (1 - mom) * fresh, fresh) if mom else fresh
            self.S[ca, cb] = new
            self.S[cb, ca] = new
            was, now = self.helpful[ca, cb], (new >= self.cfg.threshold).numpy()
            self.helpful[ca, cb] = now
            self.helpful[cb, ca] = now
            kn = known.numpy()
            self.stats.flips += int((was != now)[kn].sum())
            self.stats.compared += int(kn.sum())
            self._pairs_dirty = True
        self.stats.refresh_time_s += time.perf_counter() - t0

    def _update_scores(self, fresh: torch.Tensor) -> None:
        """S <- mom S + (1 - mom) fresh where both are known (a new pair starts at its fresh
        score); the helpful pairs; how many decisions flipped since the task's last refresh."""
        mom = self.cfg.score_momentum
        prev_S, prev_helpful = self.S, self.helpful
        if prev_S is None or mom == 0:
            S = fresh
        else:
            both = torch.isfinite(prev_S) & torch.isfinite(fresh)
            S = torch.where(both, mom * prev_S + (1 - mom) * fresh, fresh)
        self.S = S
        seen = torch.isfinite(S).numpy()
        self.helpful = (S >= self.cfg.threshold).numpy()  # NaN (unseen) compares False
        if prev_helpful is not None and prev_S is not None:
            f, c = decision_flips(prev_helpful, torch.isfinite(prev_S).numpy(), self.helpful, seen)
            self.stats.flips += f
            self.stats.compared += c
        self.stats.pairs_helpful = pair_helpful_fractions(self.helpful, seen, self.class_new)

    @staticmethod
    def _pair_targets(oh, ja, jb, lam) -> torch.Tensor:
        lt = torch.from_numpy(np.asarray(lam)).to(oh.device, oh.dtype).view(-1, 1)
        return oh[jb] + lt * (oh[ja] - oh[jb])

    def _full_scores(self, model, hg, xm, ym, bx, by, n_pairs, k) -> torch.Tensor:
        """Full-model gradients of the trained loss per pair (slow; checks the approximation)."""
        params = [p for p in model.parameters() if p.requires_grad]

        def flat_grad(loss):
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])

        g_buf = flat_grad(hg.loss(model, bx, by))
        out = []
        for i in range(n_pairs):
            sl = slice(i * k, (i + 1) * k)
            g = flat_grad(hg.loss(model, xm[sl], ym[sl]))
            s = g @ g_buf
            if self.cfg.criterion == "cosine":
                s = s / (g.norm() * g_buf.norm()).clamp_min(1e-12)
            out.append(s.detach())
        return torch.stack(out)
