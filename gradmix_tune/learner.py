"""The class-incremental loop: tasks -> epochs -> steps, evaluation -> accuracy matrix.

Knows nothing about Ray or MLflow: results go to the `Hooks` callbacks, and a checkpoint is a
plain dict (`Learner.state_dict`) that `run(..., resume=...)` continues from.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .augment import PolicyAugment, augment_batch
from .config import ExperimentConfig, tasks_trained, val_fraction
from .data import Benchmark, load_benchmark, validation_split
from .losses import proxy_contrastive_loss, proxy_drift, proxy_logits
from .memory import Buffer, draw_probes, retrieve
from .mixing import MixContext, Mixer
from .models import build_model


CHUNK_BYTES = 16 << 20  # plain ER gathers its batches a chunk of steps at a time (Learner._batches)


class DivergedError(RuntimeError):
    """The loss became NaN or inf: training on garbage is stopped, not continued."""


@dataclass
class EpochRecord:
    task: int
    epoch: int
    global_epoch: int  # 1-based count of epochs trained so far, over all tasks
    seen_acc: float  # test accuracy on all classes seen so far
    loss: float
    time_s: float
    diagnostics: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskRecord:
    task: int
    accuracies: list[float]  # A[task][j] for j <= task
    avg_acc: float
    time_s: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    val_accuracies: list[float] = field(default_factory=list)  # the same on held-out training data


@dataclass
class Hooks:
    """Callbacks. on_task also gets the Learner: `learner.state_dict()` is the checkpoint,
    `learner.acc` the accuracy matrix so far, `learner.s_matrix()` GradMix's last S."""

    on_epoch: Callable[[EpochRecord], None] | None = None
    on_task: Callable[[TaskRecord, "Learner"], None] | None = None


@dataclass
class RunResult:
    accuracy_matrix: list[list[float]]
    final_avg_acc: float
    avg_incremental_acc: float
    forgetting: float
    bwt: float
    wall_time_s: float
    epochs: list[dict]
    tasks: list[dict]
    s_matrix: list[list[float]] | None
    config: dict
    u_shape: dict[str, float] = field(default_factory=dict)  # over the last task's epochs
    val_matrix: list[list[float]] = field(default_factory=list)  # held-out twin of accuracy_matrix
    val_metrics: dict[str, float] = field(default_factory=dict)  # val_final_avg_acc, ...

    def summary(self) -> dict:
        out = {k: getattr(self, k) for k in ("final_avg_acc", "avg_incremental_acc", "forgetting", "bwt",
                                              "accuracy_matrix", "wall_time_s", "config")}
        if self.val_matrix:
            out.update(self.val_metrics, val_accuracy_matrix=self.val_matrix)
        return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Learner:
    def __init__(self, cfg: ExperimentConfig, bench: Benchmark | None = None):
        self.cfg = cfg
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.device = pick_device(cfg.train.device)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.bench = bench if bench is not None else load_benchmark(cfg, self.device)
        self.bench.to(self.device)
        self.model = build_model(cfg, self.bench.input_shape, self.bench.num_classes).to(self.device)
        t = cfg.train
        if t.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                       weight_decay=t.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # every sampling decision draws from it
        # the buffer stores rows of the training tensors: a replay batch is gathered straight from them
        self.buffer = Buffer(cfg.memory.size, cfg.memory.policy, seed=cfg.seed,
                             source=(self.bench.train.x, self.bench.train.y))
        self.mixer = Mixer(cfg.mixing, self.bench.num_classes, cfg.seed, cfg.train.loss, cfg.train.temperature)
        self.policy = (PolicyAugment(cfg.augment.policy, self.bench.mean, self.bench.std, cfg.seed)
                       if cfg.augment.policy != "none" else None)
        self.acc: list[list[float]] = []
        self.epochs: list[dict] = []
        self.tasks: list[dict] = []
        self.next_task = 0
        self.num_tasks = tasks_trained(cfg)  # the first train.max_tasks tasks, else all
        self.elapsed = 0.0
        frac = val_fraction(cfg)  # held-out training indices per task: val_* metrics, early stopping
        self.val_idx = validation_split(self.bench, frac, cfg.seed) if frac > 0 else None
        self.val_acc: list[list[float]] = []

    # ------------------------------------------------------------------ model outputs
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.loss == "proxy_contrastive":  # predict by the nearest proxy (cosine)
            return proxy_logits(self.model.features(x), self.model.head.weight, self.cfg.train.temperature)
        return self.model(x)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """target: class indices, or soft targets (mixed samples)."""
        if self.cfg.train.loss == "proxy_contrastive":
            return proxy_contrastive_loss(self.model.features(x), self.model.head.weight, target,
                                          self.cfg.train.temperature)
        return F.cross_entropy(self.model(x), target)  # soft targets: soft-label cross-entropy

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def accuracy(self, classes: list[int], split: str = "test", idx: torch.Tensor | None = None) -> float:
        data = self.bench.test if split == "test" else self.bench.train
        if split == "val":  # the held-out part of the training data of these classes
            held = torch.cat(self.val_idx) if self.val_idx else torch.empty(0, dtype=torch.int64)
            idx = held[torch.isin(data.y[held], torch.tensor(classes, device=data.y.device))]
        if idx is None:
            idx = torch.nonzero(torch.isin(data.y, torch.tensor(classes, device=data.y.device))).flatten()
        if len(idx) == 0:
            return float("nan")
        was = self.model.training
        self.model.eval()
        correct = 0
        bs = self.cfg.train.eval_batch_size
        for i in range(0, len(idx), bs):
            j = idx[i:i + bs]
            correct += int((self.logits(data.x[j]).argmax(1) == data.y[j]).sum())
        self.model.train(was)
        return correct / len(idx)

    # ------------------------------------------------------------------ one task
    def _class_counts(self, task: int) -> torch.Tensor:
        counts = torch.zeros(self.bench.num_classes)
        for c, n in self.buffer.class_counts().items():
            counts[c] += n
        ytr = self.bench.train.y[self._task_idx].cpu()
        counts += torch.bincount(ytr, minlength=self.bench.num_classes).float()
        return counts

    def _probe(self, k: int, buffer_k: int = 0):
        """GradMix's probes (memory.draw_probes): the buffer for old classes, the task's data for
        the current ones, drawn with the mixer's RNG."""
        return draw_probes(self.buffer, self.bench.train.x, self._by_class, self.bench.task_classes[self.next_task],
                           k, self.mixer.rng, buffer_k)

    def _batch(self, rows: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch: the current samples (`rows` of the training tensors) and the replayed
        ones. The buffer stores rows too, so both are gathered in one index op per tensor."""
        data, m = self.bench.train, self.cfg.memory
        if not self._replays():
            return data.x.index_select(0, rows), data.y.index_select(0, rows)
        x = y = None
        if m.retrieval != "random":  # the scored rules look at the current batch
            x, y = data.x.index_select(0, rows), data.y.index_select(0, rows)
        bi = retrieve(self.model, self.buffer, x, y, m.replay_batch_size, m.retrieval, m.retrieval_candidates,
                      task, self.gen, self.cfg.train.lr, m.retrieval_virtual_update, self.cfg.train.loss,
                      self.cfg.train.temperature)
        rows = torch.cat([rows, self.buffer.rows.index_select(0, bi).to(rows.device)])
        return data.x.index_select(0, rows), data.y.index_select(0, rows)

    def _replays(self) -> bool:
        m = self.cfg.memory
        return m.size > 0 and len(self.buffer) > 0 and m.replay_batch_size > 0

    def _plannable(self) -> bool:
        """Plain ER: in a step only the replay sampling draws from self.gen (no augmentation draws
        after it) and nothing reads the buffer or the model before the update (random replay; no
        mixer, whose probes read the buffer), so an epoch's batches can be made ahead of its steps."""
        c = self.cfg
        return (c.memory.retrieval == "random" and c.mixing.selection == "none" and not self.bench.augment
                and self.policy is None)

    def _batches(self, perm: torch.Tensor, task: int, offer: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's training batches in order: `train.batch_size` current samples a step (rows of
        the training tensors, from `perm`) and the replayed ones. offer: each step's current samples
        are offered to the buffer once the step is trained."""
        bs, data, host = self.cfg.train.batch_size, self.bench.train, perm.cpu()
        if offer:  # host-side once an epoch: the buffer's bookkeeping needs no per-step device sync
            rows, labels = host.tolist(), data.y[perm].tolist()
        if not self._plannable():
            for i in range(0, len(perm), bs):
                yield self._batch(perm[i:i + bs], task)
                if offer:
                    self.buffer.add_rows(rows[i:i + bs], labels[i:i + bs], task)
            return
        # Plain ER: for a chunk of steps, draw the replay slots and make the buffer's insertions
        # ahead of training, in the order the steps would (the same draws from the same RNGs:
        # self.gen for replay, the buffer's own for insertion), then gather the chunk's batches
        # in one index op and train on views of it. Per step that leaves a few Python-level
        # operations on host arrays instead of several tensor ops. A chunk gathers at most about
        # CHUNK_BYTES (fewer, longer chunks switch less between planning and training).
        host, r = host.numpy(), self.cfg.memory.replay_batch_size
        chunk = bs * max(1, CHUNK_BYTES // ((bs + r) * data.x[0].numel() * data.x.element_size()))
        for start in range(0, len(perm), chunk):
            parts, sizes = [], []  # host-side numpy: cheaper than tensor ops at this size
            table = self.buffer.rows.numpy()  # each slot's row (a view: insertions show)
            for i in range(start, min(start + chunk, len(perm)), bs):
                parts.append(host[i:i + bs])
                if self._replays():  # what `retrieve` does for random replay
                    parts.append(table[self.buffer.sample(r, self.gen).numpy()])
                    sizes.append(len(parts[-2]) + len(parts[-1]))
                else:
                    sizes.append(len(parts[-1]))
                if offer:
                    self.buffer.add_rows(rows[i:i + bs], labels[i:i + bs], task)
            idx = torch.from_numpy(np.concatenate(parts)).to(self.device)
            yield from zip(data.x.index_select(0, idx).split(sizes), data.y.index_select(0, idx).split(sizes))

    def _step(self, x: torch.Tensor, y: torch.Tensor, task: int, new_epoch: bool) -> torch.Tensor:
        """One update on the batch (x, y) (`_batch`: replay included): augment, mix, descend."""
        cfg = self.cfg
        if self.bench.augment:
            x = augment_batch(x, self.gen)
        if self.policy is not None:
            x = self.policy(x, self.gen)
        if cfg.mixing.selection != "none":
            ctx = MixContext(self.model, self._probe, self._old_buffer_empty(task),
                             self._counts, new_epoch, task, tuple(self.bench.task_classes[task]))
            x, y_soft = self.mixer(x, y, ctx)
            loss = self.loss(x, y_soft)
        else:
            loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _old_buffer_empty(self, task: int) -> bool:
        # "nothing to protect" until the buffer holds classes of an earlier task
        return task == 0 or len(self.buffer) == 0

    def train_task(self, task: int, hooks: Hooks) -> None:
        cfg, bench = self.cfg, self.bench
        t_task = time.perf_counter()
        self._task_idx = bench.task_indices("train", task)
        if self.val_idx is not None:  # never train on the held-out part
            self._task_idx = self._task_idx[~torch.isin(self._task_idx, self.val_idx[task])]
        early = cfg.train.early_stop_on == "val"
        if early:
            best, best_state, stale = -1.0, None, 0
        head_before = self.model.head.weight.detach().clone()
        ytr = bench.train.y[self._task_idx]
        self._by_class = {c: self._task_idx[ytr == c].cpu().numpy() for c in bench.task_classes[task]}
        self._counts = self._class_counts(task) if cfg.mixing.selection == "remix" else None
        seen = [c for t in range(task + 1) for c in bench.task_classes[t]]
        self.model.train()
        task_diag: dict[str, float] = {}
        for epoch in range(cfg.train.epochs):
            t0 = time.perf_counter()
            perm = self._task_idx[torch.randperm(len(self._task_idx), generator=self.gen).to(self.device)]
            offer = epoch == 0 and cfg.memory.size > 0  # each sample is offered to the buffer once
            losses = []  # summed once at the end: no per-step sync with the device
            for i, (x, y) in enumerate(self._batches(perm, task, offer)):
                losses.append(self._step(x, y, task, new_epoch=(i == 0)))
                if len(losses) % 100 == 0 and not torch.isfinite(losses[-1]):  # a sync every 100 steps
                    raise DivergedError(f"loss became {float(losses[-1])} in task {task}, epoch {epoch}: "
                                        "lower train.lr or check the data")
            loss = float(torch.stack(losses).mean()) if losses else float("nan")
            if not math.isfinite(loss):
                raise DivergedError(f"loss became {loss} in task {task}, epoch {epoch}: lower train.lr "
                                    "or check the data")
            diag = self.mixer.reset_stats().as_dict() if cfg.mixing.selection != "none" else {}
            task_diag = diag
            seen_acc = self.accuracy(seen) if (cfg.train.eval_every_epoch or epoch == cfg.train.epochs - 1) \
                else float("nan")
            if self.val_idx is not None and (early or cfg.train.eval_every_epoch or epoch == cfg.train.epochs - 1):
                diag = {**diag, "val_seen_acc": self.accuracy(seen, "val")}
            rec = EpochRecord(task, epoch, len(self.epochs) + 1, seen_acc, loss, time.perf_counter() - t0, diag)
            self.epochs.append(asdict(rec))
            if hooks.on_epoch:
                hooks.on_epoch(rec)
            if early:
                if diag["val_seen_acc"] > best:
                    best, stale = diag["val_seen_acc"], 0
                    best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= cfg.train.patience:
                        break
        if early and best_state is not None:
            self.model.load_state_dict(best_state)  # the epoch with the best held-out accuracy
        old = [c for t in range(task) for c in bench.task_classes[t]]
        task_diag = {**task_diag, "proxy_drift": proxy_drift(head_before, self.model.head.weight.detach(), old)}
        row = [self.accuracy(bench.task_classes[j]) for j in range(task + 1)]
        self.acc.append(row)
        val_row = [self.accuracy(bench.task_classes[j], "val") for j in range(task + 1)] \
            if self.val_idx is not None else []
        if val_row:
            self.val_acc.append(val_row)
        self.next_task = task + 1
        rec = TaskRecord(task, row, sum(row) / len(row), time.perf_counter() - t_task, task_diag, val_row)
        self.tasks.append(asdict(rec))
        self.elapsed += time.perf_counter() - t_task
        if hooks.on_task:
            hooks.on_task(rec, self)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "buffer": self.buffer.state_dict(), "mixer": self.mixer.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "acc": self.acc, "epochs": self.epochs, "tasks": self.tasks,
                "next_task": self.next_task, "elapsed": self.elapsed, "val_acc": self.val_acc}

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.buffer.load_state_dict(s["buffer"], self.device)
        self.mixer.load_state_dict(s["mixer"], self.device)
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.acc, self.epochs, self.tasks = s["acc"], s["epochs"], s["tasks"]
        self.next_task, self.elapsed, self.val_acc = s["next_task"], s["elapsed"], s.get("val_acc", [])

    def s_matrix(self) -> list[list[float | None]] | None:
        """GradMix's pair scores from the last refresh (None = class not seen then)."""
        S = self.mixer.S
        return None if S is None else [[None if math.isnan(v) else v for v in row] for row in S.tolist()]

    def u_shape(self) -> dict[str, float]:
        """Peak epoch and drop of the seen-class accuracy over the last trained task's epochs
        (all seen classes are then fixed, so the curve is comparable epoch to epoch)."""
        last = self.next_task - 1
        return metrics.u_shape([e["seen_acc"] for e in self.epochs if e["task"] == last])

    def result(self) -> RunResult:
        return RunResult(accuracy_matrix=self.acc, wall_time_s=self.elapsed, epochs=self.epochs,
                         tasks=self.tasks, s_matrix=self.s_matrix(), config=self.cfg.to_dict(),
                         u_shape=self.u_shape(), val_matrix=self.val_acc,
                         val_metrics=metrics.summarize(self.val_acc, prefix="val_") if self.val_acc else {},
                         **metrics.summarize(self.acc))


def run(cfg: ExperimentConfig, hooks: Hooks | None = None, resume: dict | None = None,
        bench: Benchmark | None = None) -> RunResult:
    """Train on every task in order (the first train.max_tasks when set) and return the metrics.
    `resume`: a state_dict checkpoint."""
    hooks = hooks or Hooks()
    learner = Learner(cfg, bench)
    if resume is not None:
        learner.load_state_dict(resume)
    for task in range(learner.next_task, learner.num_tasks):
        learner.train_task(task, hooks)
    return learner.result()
