"""Does GradMix's last-layer approximation decide pairs as full-model gradients would?

    python benchmarks/approximation_agreement.py [--models mlp cnn reduced_resnet18] [--seeds 0 1 2]

For each model: train ER on Split-MNIST tasks 0 and 1 (ablations/configs/split_mnist.yaml, 1 epoch;
the CNNs on --train-per-class samples a class to stay quick on a CPU), hold the model fixed at
the start of task 2 (4 old classes, 2 new: 21 class pairs) and score every pair --draws times,
each time from the same probes and the same mixing coefficients under three computations:
  feature   the default (`gradient_scope: last_layer`): the head's gradient, the mix's features
            taken as the mix of its parents' features (no forward of the mixes)
  input     the head's gradient of the real input-space mixes (one forward of the mixes)
  full      `gradient_scope: full`: full-model gradients of the real mixes (a backward per pair)
Reported: the share of pairs given the same helpful/harmful decision (sign of S against the
threshold 0) by two computations, and Spearman's rank correlation of their scores, over all
draws and seeds. feature vs input isolates the feature-space mixing; input vs full the
restriction to the head; feature vs full is the approximation as used. reduced_resnet18 has
BatchNorm (scored in eval mode, as in training); cnn has none.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from gradmix_tune import gradients as G
from gradmix_tune.config import MixingConfig, load_config
from gradmix_tune.learner import Hooks, Learner
from gradmix_tune.memory import draw_probes
from gradmix_tune.mixing import MixContext, Mixer, mix_inputs
from gradmix_tune.models import eval_mode

ROOT = Path(__file__).resolve().parent.parent


def trained(model: str, seed: int, root: str, per_class: int) -> Learner:
    extra = [] if model == "mlp" else [f"data.train_per_class={per_class}", "data.test_per_class=200"]
    cfg = load_config(ROOT / "ablations/configs/split_mnist.yaml",
                      [f"model.name={model}", f"seed={seed}", "train.threads=1", "method=er", *extra],
                      data_root=root)
    learner = Learner(cfg)
    for t in (0, 1):
        learner.train_task(t, Hooks())
    return learner


def scores(learner: Learner, seed: int, k: int, draws: int) -> dict[str, list[np.ndarray]]:
    bench, task = learner.bench, 2
    classes = bench.task_classes[task]
    y = bench.train.y.cpu().numpy()
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    probe_rng = np.random.default_rng(seed + 7)
    out: dict[str, list[np.ndarray]] = {"feature": [], "input": [], "full": []}
    for d in range(draws):
        probes = draw_probes(learner.buffer, bench.train.x, by_class, classes, k, probe_rng)
        ctx = MixContext(learner.model, lambda k_, b_=0, p=probes: p, buffer_empty=False, class_counts=None,
                         new_epoch=False, task=task, current_classes=tuple(classes))
        res = {}
        for scope in ("last_layer", "full"):
            mixer = Mixer(MixingConfig(selection="gradient", probes_per_class=k, gradient_scope=scope),
                          bench.num_classes, seed * 1000 + d)
            S = mixer.refresh(ctx)
            res[scope] = S
        out["feature"].append(_pairs(res["last_layer"]))
        out["full"].append(_pairs(res["full"]))
        out["input"].append(_input_mix_scores(learner.model, probes, k, seed * 1000 + d, bench.num_classes,
                                              res["last_layer"]))
    return out


def _pairs(S: torch.Tensor) -> np.ndarray:
    iu = np.triu_indices(S.shape[0])
    s = S.numpy()[iu]
    return s[np.isfinite(s)]


def _input_mix_scores(model, p, k: int, mixer_seed: int, C: int, S_feature: torch.Tensor) -> np.ndarray:
    """The head's gradient of the real mixes: the same pairs, permutation and lam as Mixer.refresh
    (drawn from a generator in the same state, in the same order; checked against its S)."""
    rng = np.random.default_rng(mixer_seed)
    m = len(p.y) // k
    groups = p.y.view(m, k)[:, 0]
    ia, ib = torch.triu_indices(m, m)
    P = len(ia)
    perm = torch.from_numpy(rng.permutation(k))
    ja = (ia.view(P, 1) * k + torch.arange(k).view(1, k)).flatten()
    jb = (ib.view(P, 1) * k + perm.view(1, k)).flatten()
    lam = rng.beta(1.0, 1.0, P * k)
    present = torch.zeros(C, dtype=torch.bool)
    present[groups] = True
    oh = F.one_hot(p.y, C).float()
    lt = torch.from_numpy(lam).float().view(-1, 1)
    y_mix = oh[jb] + lt * (oh[ja] - oh[jb])
    with eval_mode(model), torch.no_grad():
        hg = G.head_gradients("ce", model.head)
        g_buf = hg.mean_grad(model.features(p.bx), F.one_hot(p.by, C).float())
        h = model.features(p.x)
        check = hg.mix_inner(h, ja, jb, lt, y_mix, g_buf).view(P, k).mean(dim=1)
        assert torch.allclose(check, S_feature[groups[ia], groups[ib]].float(), rtol=1e-4, atol=1e-6), \
            "the replicated draws differ from Mixer.refresh's"
        xm, _ = mix_inputs(p.x[ja], p.x[jb], lam, "mixup", rng)
        s = hg.inner(model.features(xm), y_mix, g_buf).view(P, k).mean(dim=1)
    S = torch.full((C, C), float("nan"))
    S[groups[ia], groups[ib]] = s
    S[groups[ib], groups[ia]] = s
    return _pairs(S)


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    x, y = np.concatenate(a), np.concatenate(b)
    return float(((x >= 0) == (y >= 0)).mean()), float(stats.spearmanr(x, y).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "reduced_resnet18"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--data-root", default=os.environ.get("GRADMIX_DATA_ROOT", str(ROOT.parent / "shared/data")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"Split-MNIST, fixed model at the start of task 2, k = {args.k}, {args.draws} draws x seeds {args.seeds}\n")
    print("| model | pairs | feature vs full: same decision / rank corr | input vs full | feature vs input |")
    print("|---|---|---|---|---|")
    for model in args.models:
        acc: dict[str, list[np.ndarray]] = {"feature": [], "input": [], "full": []}
        for seed in args.seeds:
            learner = trained(model, seed, args.data_root, args.train_per_class)
            for key, v in scores(learner, seed, args.k, args.draws).items():
                acc[key] += v
        n = sum(len(v) for v in acc["full"])
        cells = [agreement(acc[a], acc[b]) for a, b in (("feature", "full"), ("input", "full"), ("feature", "input"))]
        print(f"| {model} | {n} | " + " | ".join(f"{s:.2f} / {r:.2f}" for s, r in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
