"""Choosing hyperparameters honestly: what a study that selects must optimise, and its evaluation phase (no Ray, no torch).

A study selects when it has `search:` (Optuna or random sampling) or `evaluate:` (the best
configuration is re-run). Such a study

- optimises a validation metric (val_*: the held-out part of each task's training data), never a
  test one, unless the file says `allow_test_metric: true` (the report then flags it in red);
  grid ablations without `evaluate:` compare fixed settings and may report test metrics;
- holds out data.val_fraction = 0.1 of each task's training data when the file leaves it unset;
- with `search.tasks: K`, trains its tuning trials on the first K tasks only (train.max_tasks = K;
  Lee et al. 2024: tune on the first task(s), then fix the values);
- with `evaluate:` (phase 2; Cha & Cho 2024's two-phase protocol): re-runs the best configuration
  by the study's metric (or the `top: N` best) on fresh `seeds:` with optional `set:` overrides
  (the scenario not tuned on: another class order, another dataset), over the whole stream and
  on the full training data (unless the file sets data.val_fraction).

    evaluate:
      seeds: [100, 101, 102]           # or a count: 3 seeds after the largest tuning seed
      top: 1                           # how many of the best configurations
      set: {data.class_order_seed: 1}  # dotted or nested config keys

Evaluation trials are study trials (study.make_trial) with `phase: evaluate`, `tune_rank`,
`tune_arm`, `tune_trial` (the tuning trials' study indices) and `tune_trial_id` (their Ray ids);
tuning trials carry `phase: tune`. tracking/ turns these keys into tags of the MLflow runs
(tracking.store.PHASE_TAGS).
"""
from __future__ import annotations

import copy
import json
from typing import Any

from ..config import ConfigError, DataConfig, deep_merge, flatten, from_dict, set_dotted
from ..results import METRICS, VAL_METRICS, is_test_metric
from ..values import did_you_mean, is_finite

EVALUATE_KEYS = ("seeds", "top", "set")
DEFAULT_VAL_FRACTION = 0.1
EVALUATE_ARM = "evaluate #{rank}"  # the evaluation runs' arm label, per chosen configuration
CHOICE_FILE = "gradmix_choice.json"  # phase 1's outcome in the study's storage folder (phase 2 resumes from it)
EVALUATE_DIR = "evaluate"  # phase 2's Ray experiment folder, inside the study's
ALL_METRICS = {**METRICS, **VAL_METRICS}  # what a study's `metric` may be -> its better direction


def test_twin(metric: str) -> str:
    """final_avg_acc for val_final_avg_acc (a test metric is its own twin)."""
    return metric[4:] if metric.startswith("val_") and metric[4:] in METRICS else metric


def selection_base(base: dict, where: str, *, selects: bool, metric: str, sched_metric: Any,
                   tune_tasks: int | None) -> tuple[dict, bool]:
    """The study's base config with what selecting adds: train.max_tasks = search.tasks, and
    data.val_fraction = 0.1 where the file leaves it unset and the study selects or names a val_
    metric. Returns (base, whether the fraction is that default)."""
    flat = flatten(base)
    if tune_tasks:
        if flat.get("train.max_tasks"):
            raise ConfigError(where, "search.tasks", "base sets train.max_tasks too",
                              "keep one: search.tasks (evaluation then runs the whole stream)")
        n = flat.get("data.tasks", DataConfig().tasks)
        if isinstance(n, int) and tune_tasks > n:
            raise ConfigError(where, "search.tasks", f"{tune_tasks} tasks, but the stream has {n} (data.tasks)",
                              f"search.tasks: 1 to {n} (the tuning trials train that many of the first tasks)")
        base = deep_merge(base, {"train": {"max_tasks": tune_tasks}})
    if (selects or metric.startswith("val_") or str(sched_metric).startswith("val_")) and \
            flat.get("data.val_fraction") is None:
        return deep_merge(base, {"data": {"val_fraction": DEFAULT_VAL_FRACTION}}), True
    return base, False


def check_honest(where: str, metric: str, scheduler_metric: str | None, selects: bool, allow: bool,
                 val_fraction: float | None) -> None:
    """A val_ metric needs held-out data; a study that selects must not select on the test split
    (unless `allow_test_metric: true`)."""
    for key, m in (("metric", metric), ("scheduler.metric", scheduler_metric)):
        if m and m.startswith("val_") and val_fraction == 0:
            raise ConfigError(where, key, f"{m} is measured on held-out training data, but data.val_fraction is 0",
                              "set data.val_fraction: 0.1 (or leave it unset)")
    if not selects or allow:
        return
    if is_test_metric(metric):
        raise ConfigError(where, "metric", f"{metric} is measured on the test split: a search or an "
                          "evaluation that picks the best configuration by it reports a score chosen on the "
                          "data it is reported on",
                          f"tune on val_{metric} (held-out training data, data.val_fraction; 0.1 unless set), "
                          "or add `allow_test_metric: true` to do it anyway (the report flags it in red)")
    if scheduler_metric and is_test_metric(scheduler_metric):
        raise ConfigError(where, "scheduler.metric", f"ASHA would stop trials on {scheduler_metric}, a test-split "
                          "accuracy: that selects on test data too",
                          f"scheduler: {{metric: val_{scheduler_metric}}} (or leave it out: the default), or "
                          "`allow_test_metric: true`")


def parse_evaluate(raw: Any, where: str, tune_seeds: list[int]) -> dict:
    """`evaluate:` -> {seeds, top, set (nested dict)}; every problem a ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(where, "evaluate", "expected a mapping",
                          "evaluate: {seeds: [100, 101, 102], top: 1, set: {data.class_order_seed: 1}}")
    for k in raw:
        if k not in EVALUATE_KEYS:
            raise ConfigError(where, f"evaluate.{k}", "unknown key", did_you_mean(k, EVALUATE_KEYS))
    seeds = raw.get("seeds")
    if seeds is None:
        raise ConfigError(where, "evaluate.seeds", "missing: the fresh seeds of the evaluation runs",
                          f"evaluate: {{seeds: {[max(tune_seeds) + 1 + i for i in range(3)]}}} (or a count: 3)")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(where, "evaluate.seeds", f"expected at least one seed, got {seeds}", "evaluate: {seeds: 3}")
        seeds = [max(tune_seeds) + 1 + i for i in range(seeds)]
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(where, "evaluate.seeds", f"expected a list of non-negative integers, got {seeds!r}",
                          "evaluate: {seeds: [100, 101, 102]}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(where, "evaluate.seeds", "a seed repeats", "list each seed once")
    reused = sorted(set(seeds) & set(tune_seeds))
    if reused:
        raise ConfigError(where, "evaluate.seeds", f"seed(s) {reused} were tuned on: the evaluation needs fresh "
                          "ones", f"e.g. evaluate: {{seeds: {[max(tune_seeds) + 1 + i for i in range(len(seeds))]}}}")
    top = raw.get("top", 1)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ConfigError(where, "evaluate.top", f"expected a whole number >= 1, got {top!r}", "evaluate: {top: 1}")
    over = raw.get("set") or {}
    if not isinstance(over, dict):
        raise ConfigError(where, "evaluate.set", "expected a mapping of config keys",
                          "evaluate: {set: {data.class_order_seed: 1}}")
    nested: dict = {}
    for k, v in flatten(over).items():
        if k == "seed":
            raise ConfigError(where, "evaluate.set.seed", "the seeds come from evaluate.seeds", "remove it")
        if k == "method":
            raise ConfigError(where, "evaluate.set.method", "the evaluation re-runs the tuned method",
                              "evaluate another method in a study of its own")
        set_dotted(nested, k, copy.deepcopy(v))
    return {"seeds": seeds, "top": top, "set": nested}


def evaluation_config(config: dict, evaluate: dict, *, val_default: bool, tune_tasks: int | None) -> dict:
    """The config an evaluation run starts from: the tuned trial's, over the whole stream (when the
    tuning trials trained only `tune_tasks`), on the full training data (when the held-out fraction
    was only the searched study's default), with evaluate.set on top (seed not set: the caller's)."""
    cfg = copy.deepcopy(config)
    cfg.pop("seed", None)
    if val_default:
        set_dotted(cfg, "data.val_fraction", None)  # None: 0 unless train.early_stop_on is val
    if tune_tasks:
        set_dotted(cfg, "train.max_tasks", 0)
    return deep_merge(cfg, evaluate["set"])


def check_evaluation(config: dict, evaluate: dict, where: str, *, val_default: bool, tune_tasks: int | None) -> None:
    """Before Ray: the evaluation config built from a tuning config (e.g. the base) is valid."""
    cfg = evaluation_config(config, evaluate, val_default=val_default, tune_tasks=tune_tasks)
    from_dict(cfg, f"{where}: evaluate.set")


# ------------------------------------------------------------------------------------- phase 2
def _score(metrics: dict, metric: str) -> float | None:
    v = metrics.get(metric)
    return float(v) if is_finite(v) else None


def choose(outcomes: list, metric: str, mode: str, top: int, by_arm: bool) -> list[dict]:
    """The `top` best finished tuning trials (search) or arms (grid: mean over their seeds) by the
    study's metric. `outcomes`: TrialOutcome-like (config, metrics, status, trial_id)."""
    groups: dict[str, list] = {}
    for o in outcomes:
        if o.status != "ok" or _score(o.metrics, metric) is None:
            continue
        key = o.config.get("arm", "?") if by_arm else str(o.config.get("index"))
        groups.setdefault(key, []).append(o)
    test = test_twin(metric)
    cands = []
    for members in groups.values():
        members = sorted(members, key=lambda o: o.config.get("index", 0))
        scores = [_score(o.metrics, metric) for o in members]
        tests = [_score(o.metrics, test) for o in members]
        tests = [t for t in tests if t is not None]
        first = members[0]
        cands.append({"arm": first.config.get("arm", ""), "factors": first.config.get("factors", {}),
                      "config": first.config.get("config", {}), "score": sum(scores) / len(scores),
                      "test_score": sum(tests) / len(tests) if tests else None, "n": len(members),
                      "tune_trials": [o.config.get("index") for o in members],
                      "tune_trial_ids": [o.trial_id for o in members]})
    sign = -1.0 if mode == "max" else 1.0
    cands.sort(key=lambda c: (sign * c["score"], min(c["tune_trials"])))
    return [dict(c, rank=i + 1) for i, c in enumerate(cands[:top])]


def same_choice_inputs(record: dict, study) -> bool:
    """A saved choice belongs to this study as it is now (same metric, mode, evaluate section)."""
    return (record.get("study") == study.name and record.get("metric") == study.metric
            and record.get("mode") == study.mode
            and json.dumps(record.get("evaluate"), sort_keys=True) == json.dumps(study.evaluate, sort_keys=True))


def protocol_lines(study) -> list[str]:
    """For --dry-run: how a study that selects chooses (held-out data, first-task tuning, phase 2)."""
    if not study.selects:
        return []
    vf = flatten(study.base).get("data.val_fraction")
    out = [f"  selects on {study.metric}: data.val_fraction {vf}"
           + (" (the default of a study that selects)" if study.val_default else "")
           + (f"; tuning trials train the first {study.tune_tasks} tasks (search.tasks)" if study.tune_tasks else "")]
    if study.allow_test_metric:
        out.append("  WARNING: allow_test_metric: true - the choice is made on test data (the report flags it)")
    ev = study.evaluate
    if ev:
        over = ", ".join(f"{k}={json.dumps(v)}" for k, v in flatten(ev["set"]).items())
        out.append(f"  then evaluate (phase 2): the best {ev['top']} configuration(s) x seeds {ev['seeds']} = "
                   f"{ev['top'] * len(ev['seeds'])} runs on the whole stream" + (f", set {over}" if over else ""))
    return out
