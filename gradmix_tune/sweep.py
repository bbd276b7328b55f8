"""Ablation YAML -> validated Study -> Ray Tune Tuner; the trainable; resume; cluster options.

An ablation file (ablations/*.yaml) names a base experiment and what varies:

    name: buffer_size                     # also the storage folder and the MLflow experiment
    experiment: gradmix-buffer            # optional MLflow experiment name (default: name)
    base: {extends: configs/split_mnist.yaml, train: {epochs: 1}}   # extends: relative to this file
    grid: {memory.size: [200, 500], method: [er, er_mixup, gradmix]}
    seeds: [0, 1, 2]                      # or a count: `seeds: 3` is [0, 1, 2]
    search: {space: search_spaces/sgd.yaml, algorithm: optuna, num_samples: 20}   # instead of grid
    scheduler: fifo                       # or {type: asha, time_attr: tasks_done, grace_period: 1}
    resources: {cpu: 1, gpu: 0}           # per trial; gpu: 0.25 packs four trials on a GPU
    metric: final_avg_acc                 # mode: max
    max_failures: 0                       # retries of a failed trial (from its last checkpoint)

Everything is checked (every trial's config included) before Ray starts; every problem is a
ConfigError naming the file, the key and a fix.

Every Ray trial's config is a dict with: study, arm (readable grid factors, no seed), seed,
index (position in the study), factors (grid or sampled key -> value) and config (the full
validated ExperimentConfig as a nested dict, seed included). The trainable reports
`results.epoch_result` after every epoch and `results.task_result` with a checkpoint after
every task; on restore (a retried trial, `--resume`) it continues at the last finished task.
A checkpoint that is missing, half-written or corrupt is never loaded (Trainable.restore,
_usable_checkpoint): the trial continues from an older recorded one, or starts over, and says so.

Results and checkpoints go to <storage>/<name>/ (one folder per trial, t<index>_<trial id>);
`--resume` restores the study from there without re-running finished trials. The storage folder
is checked before Ray starts (writable, 1 MiB free). A local Ray is started per study unless
`--address`/RAY_ADDRESS names a cluster; on a multi-node cluster a local storage path must be
visible from every node that can run a trial (checked with one tiny task per node). Exit codes:
0 every trial ran to the end (or was stopped early by ASHA), 1 some trial failed, 2 bad input
(including unusable storage), 130 interrupted (resumable).

This module imports neither ray nor torch at the top level: `gradmix-tune run` stays fast.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    ExperimentConfig,
    METHODS,
    deep_merge,
    flatten,
    from_dict,
    parse_overrides,
    read_yaml,
    resolve_extends,
    set_dotted,
)

ABLATION_KEYS = ("name", "experiment", "description", "base", "grid", "seeds", "search", "scheduler",
                 "resources", "metric", "mode", "max_failures")
SEARCH_KEYS = ("space", "algorithm", "num_samples", "seed")
SCHEDULER_KEYS = ("type", "time_attr", "grace_period", "reduction_factor", "max_t", "metric")
RESOURCE_KEYS = ("cpu", "gpu")
# Study metrics: present in the last result of every finished trial (results.SUMMARY_KEYS).
METRICS = {"final_avg_acc": "max", "avg_incremental_acc": "max", "bwt": "max", "forgetting": "min",
           "wall_time_s": "min"}
# Scheduler metrics: present in intermediate results (every dict has avg_acc).
SCHEDULER_METRICS = ("avg_acc", "seen_acc")
TIME_ATTRS = ("tasks_done", "global_epoch")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
CHECKPOINT_FILE = "learner.pt"
STUDY_FILE = "gradmix_study.json"
DEFAULT_STORAGE = "ray_results"
_CONFIG_KEYS = tuple(flatten(ExperimentConfig().to_dict()))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ====================================================================== the study
@dataclass
class Study:
    """One ablation file, validated and expanded. `trials` is empty for a searched study (the
    search algorithm proposes them while the study runs; `num_trials` is its budget)."""

    name: str
    experiment: str
    path: str  # the ablation file
    raw_text: str  # its YAML text, as read
    grid: dict[str, list]
    seeds: list[int]
    metric: str
    mode: str
    trials: list[dict]
    storage_path: str  # Ray's storage root (absolute path or URI); results in storage_path/name
    tracking_uri: str
    description: str = ""
    base: dict = field(default_factory=dict)  # resolved base config (extends, --set, data root)
    search: dict | None = None  # {space: {key: {type, args}}, algorithm, num_samples, seed, files}
    scheduler: dict = field(default_factory=lambda: {"type": "fifo"})
    resources: dict = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_failures: int = 0

    @property
    def num_trials(self) -> int:
        return self.search["num_samples"] if self.search else len(self.trials)

    @property
    def experiment_path(self) -> str:
        return _join(self.storage_path, self.name)

    @property
    def arms(self) -> list[str]:
        """Arm labels in grid order (searched studies: none up front)."""
        seen: dict[str, None] = {}
        for t in self.trials:
            seen.setdefault(t["arm"], None)
        return list(seen)


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name if "://" in root else str(Path(root) / name)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def arm_label(factors: dict) -> str:
    """"method=gradmix memory.size=200" (grid order); "base" when nothing varies."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in factors.items()) or "base"


def make_trial(study_name: str, base: dict, factors: dict, seed: int, index: int,
               where: str | None = None, validate: bool = True) -> dict:
    """The config dict one Ray trial receives (see the module docstring)."""
    data = copy.deepcopy(base)
    for k, v in factors.items():
        if k == "method":
            data["method"] = v
        else:
            set_dotted(data, k, copy.deepcopy(v))
    data["seed"] = seed
    factors = copy.deepcopy(factors)
    label = arm_label(factors)
    try:
        cfg = from_dict(data, where or f"arm '{label}'").to_dict()
    except ConfigError as e:
        if validate:
            raise
        cfg, invalid = data, str(e)  # a sampled config that fails: the trial fails with the message
    else:
        invalid = None
        flat = flatten(cfg)  # factors as the config reads them (YAML's "1.0e6" is the number 1e6)
        factors = {k: (v if k == "method" else flat.get(k, v)) for k, v in factors.items()}
    trial = {"study": study_name, "arm": arm_label(factors), "seed": seed, "index": index,
             "factors": factors, "config": cfg}
    if invalid:
        trial["invalid"] = invalid
    return trial


def _close(word: str, options, what: str = "keys") -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"valid {what}: " + ", ".join(options)


def _check_keys(d: dict, allowed, where: str, prefix: str = "") -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(where, f"{prefix}{k}", "unknown key", _close(k, allowed))


def _number(v: Any, where: str, key: str, *, integer: bool = False, low: float | None = None,
            low_inclusive: bool = True) -> float | int:
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(where, key, f"expected a number, got {v!r}", f"write a number for {key}")
    if integer:
        if isinstance(v, float) and not v.is_integer():
            raise ConfigError(where, key, f"expected a whole number, got {v!r}", f"e.g. {key}: 1")
        v = int(v)
    if low is not None and (v < low or (v == low and not low_inclusive)):
        rel = ">=" if low_inclusive else ">"
        raise ConfigError(where, key, f"must be {rel} {low:g}, got {v!r}", f"set {key} {rel} {low:g}")
    return v


def _valid_config_key(k: str, where: str, section: str) -> None:
    if k == "seed":
        raise ConfigError(where, f"{section}.seed", "the seed is not a factor",
                          "list the seeds under `seeds:` (e.g. seeds: [0, 1, 2])")
    if k != "method" and k not in _CONFIG_KEYS:
        raise ConfigError(where, f"{section}.{k}", "unknown config key",
                          _close(k, ("method",) + _CONFIG_KEYS, "keys"))


def _absolute_paths(data: dict, data_root: str | None) -> None:
    """Workers run in their trial folder: give them absolute data paths (resolved here)."""
    d = data.get("data", {})
    if not isinstance(d, dict):
        return  # from_dict reports it
    d = dict(d)
    if data_root:
        d["root"] = str(Path(data_root).expanduser().resolve())
    elif isinstance(d.get("root"), str) and d["root"]:
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    elif d.get("name", "digits") not in ("digits", "npz", "image_folder"):
        d["root"] = str(Path(os.environ.get("GRADMIX_DATA_ROOT") or "data").expanduser().resolve())
    if isinstance(d.get("path"), str) and d["path"]:
        d["path"] = str(Path(d["path"]).expanduser().resolve())
    if d:
        data["data"] = d


def _load_space(files: list[str], ablation: Path, where: str) -> tuple[dict, list[str]]:
    space: dict[str, dict] = {}
    paths = []
    for f in files:
        p = (ablation.parent / f) if not Path(f).is_absolute() else Path(f)
        if not p.is_file():
            raise ConfigError(where, "search.space", f"search space file not found: {p}",
                              "give a path relative to the ablation file, e.g. ../search_spaces/sgd.yaml")
        raw = read_yaml(p)
        sp = os.path.normpath(str(p))
        if not raw:
            raise ConfigError(sp, None, "the search space is empty",
                              "add lines like `train.lr: {loguniform: [0.001, 0.3]}`")
        for key, spec in raw.items():
            _valid_config_key(key, sp, "space")
            if key in space:
                raise ConfigError(sp, key, "searched in two space files", "keep it in one file")
            if not isinstance(spec, dict) or len(spec) != 1:
                raise ConfigError(sp, key, f"expected one distribution, got {spec!r}",
                                  f"e.g. {key}: {{uniform: [0.1, 1.0]}} (one of: {', '.join(DISTRIBUTIONS)})")
            (kind, args), = spec.items()
            if kind not in DISTRIBUTIONS:
                raise ConfigError(sp, f"{key}.{kind}", "unknown distribution", _close(kind, DISTRIBUTIONS, "ones"))
            if not isinstance(args, list) or not args:
                raise ConfigError(sp, f"{key}.{kind}", f"expected a list, got {args!r}",
                                  f"{key}: {{{kind}: [low, high]}}" if kind != "choice"
                                  else f"{key}: {{choice: [a, b, c]}}")
            if kind == "choice":
                if len(args) < 2:
                    raise ConfigError(sp, key, "a choice needs at least two values", "list two or more")
                if any(isinstance(a, (list, dict)) for a in args):
                    raise ConfigError(sp, key, "choices must be single values (numbers, strings, booleans)",
                                      "search a list-valued key with a grid instead")
                if len({json.dumps(a) for a in args}) != len(args):
                    raise ConfigError(sp, key, "a value repeats", "list each value once")
                values = list(args)
            else:
                if len(args) != 2:
                    raise ConfigError(sp, f"{key}.{kind}", f"expected [low, high], got {args!r}",
                                      f"{key}: {{{kind}: [low, high]}}")
                integer = kind == "int"
                lo = _number(args[0], sp, f"{key}.{kind}[0]", integer=integer)
                hi = _number(args[1], sp, f"{key}.{kind}[1]", integer=integer)
                if not lo < hi:
                    raise ConfigError(sp, f"{key}.{kind}", f"low ({lo}) must be below high ({hi})",
                                      "swap or widen the bounds")
                if kind == "loguniform" and lo <= 0:
                    raise ConfigError(sp, f"{key}.{kind}", "a log-uniform range must be positive",
                                      "set low > 0")
                default = flatten(ExperimentConfig().to_dict()).get(key)
                if not integer and isinstance(default, int) and not isinstance(default, bool) \
                        and key != "mixing.mix_rate":
                    raise ConfigError(sp, key, f"{key} takes whole numbers but {kind} samples fractions",
                                      f"use {key}: {{int: [{int(lo)}, {int(hi)}]}}")
                args = [lo, hi]
                values = [lo, hi] + ([(lo + hi) // 2] if integer else [(lo * hi) ** 0.5 if kind == "loguniform"
                                                                       else (lo + hi) / 2])
            space[key] = {"type": kind, "args": args, "probe": values}
        paths.append(sp)
    return space, paths


def load_study(path: str | Path, overrides: list[str] | dict | None = None, data_root: str | None = None,
               storage: str | None = None, tracking_uri: str | None = None) -> Study:
    """Read and check an ablation file and expand its trials. Raises ConfigError on any problem."""
    p = Path(path)
    where = str(path)
    raw = read_yaml(p)
    raw_text = p.read_text()
    _check_keys(raw, ABLATION_KEYS, where)

    name = raw.get("name", p.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(where, "name", f"{name!r} is not a usable study name",
                          "letters, digits, '_', '-', '.' (it names the results folder)")
    experiment = raw.get("experiment", name)
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(where, "experiment", f"expected an MLflow experiment name, got {experiment!r}",
                          "experiment: my-study (or leave it out to use `name`)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(where, "description", "expected text", "description: what this study asks")

    # ---- base: inline mapping, may extend a config file (relative to the ablation file)
    base = raw.get("base", {})
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ConfigError(where, "base", "expected a mapping of config keys",
                          "base: {data: {name: digits}, train: {epochs: 1}}")
    base = resolve_extends(base, p)
    base_seed = base.pop("seed", None)  # an experiment file's own seed: the default for `seeds:`
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    if "seed" in over:
        raise ConfigError("--set", "seed", "the seed comes from the ablation's `seeds:`", "edit `seeds:`")
    base = deep_merge(base, over)
    _absolute_paths(base, data_root)
    try:
        from_dict(copy.deepcopy(base), f"{where}: base")  # base alone (the grid may fix it further)
        base_ok = None
    except ConfigError as e:  # e.g. a buffer too small until the grid sets memory.size: check per trial
        base_ok = e

    # ---- grid
    grid = raw.get("grid", {}) or {}
    if not isinstance(grid, dict):
        raise ConfigError(where, "grid", "expected a mapping of dotted keys to lists",
                          "grid: {memory.size: [200, 500]}")
    over_flat = flatten(over)
    for k, values in grid.items():
        _valid_config_key(k, where, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, f"grid.{k}", f"expected a non-empty list of values, got {values!r}",
                              f"grid: {{{k}: [{_fmt(values)}]}}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(where, f"grid.{k}", "a value repeats", "list each value once")
        if k == "method":
            for v in values:
                if v not in METHODS:
                    raise ConfigError(where, "grid.method", f"unknown method {v!r}", _close(v, METHODS, "methods"))
        if k in over_flat or (k == "method" and "method" in over):
            raise ConfigError("--set", k, "this key is varied by the study's grid",
                              f"remove --set {k}, or edit grid.{k} in {where}")

    # ---- seeds
    seeds = raw.get("seeds", [base_seed if isinstance(base_seed, int) and not isinstance(base_seed, bool) else 0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(where, "seeds", f"expected at least one seed, got {seeds}", "seeds: [0, 1, 2]")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(where, "seeds", f"expected a list of integers, got {seeds!r}", "seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(where, "seeds", "a seed repeats", "list each seed once")
    if any(s < 0 for s in seeds):
        raise ConfigError(where, "seeds", "seeds must not be negative", "seeds: [0, 1, 2]")

    # ---- metric / mode
    metric = raw.get("metric", "final_avg_acc")
    if metric not in METRICS:
        raise ConfigError(where, "metric", f"unknown metric {metric!r}", _close(metric, METRICS, "metrics"))
    mode = raw.get("mode", METRICS[metric])
    if mode not in ("max", "min"):
        raise ConfigError(where, "mode", f"expected max or min, got {mode!r}", f"mode: {METRICS[metric]}")

    # ---- resources
    res = raw.get("resources", {}) or {}
    if not isinstance(res, dict):
        raise ConfigError(where, "resources", "expected a mapping", "resources: {cpu: 1, gpu: 0}")
    _check_keys(res, RESOURCE_KEYS, where, "resources.")
    cpu = float(_number(res.get("cpu", 1), where, "resources.cpu", low=0, low_inclusive=False))
    gpu = float(_number(res.get("gpu", 0), where, "resources.gpu", low=0))
    if gpu > 1 and not gpu.is_integer():
        raise ConfigError(where, "resources.gpu", f"{gpu:g} GPUs: above one GPU Ray needs whole GPUs",
                          "use a fraction below 1 (packs trials on a GPU) or a whole number")
    resources = {"cpu": cpu, "gpu": gpu}

    # ---- max_failures
    max_failures = _number(raw.get("max_failures", 0), where, "max_failures", integer=True, low=0)

    # ---- search
    search = None
    if raw.get("search") is not None:
        s = raw["search"]
        if not isinstance(s, dict):
            raise ConfigError(where, "search", "expected a mapping",
                              "search: {space: ../search_spaces/sgd.yaml, algorithm: optuna, num_samples: 20}")
        _check_keys(s, SEARCH_KEYS, where, "search.")
        if grid:
            raise ConfigError(where, "grid", "a study has either a grid or a search, not both",
                              "move the grid factor into the search space as a `choice`, or run two studies")
        files = s.get("space")
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise ConfigError(where, "search.space", "expected a search-space file (or a list of them)",
                              "search: {space: ../search_spaces/sgd.yaml}")
        algorithm = s.get("algorithm", "optuna")
        if algorithm not in ("optuna", "random"):
            raise ConfigError(where, "search.algorithm", f"unknown algorithm {algorithm!r}",
                              "optuna (TPE) or random")
        if "num_samples" not in s:
            raise ConfigError(where, "search.num_samples", "missing: how many trials to sample",
                              "search: {num_samples: 20}")
        num_samples = _number(s["num_samples"], where, "search.num_samples", integer=True, low=1)
        sseed = _number(s.get("seed", 0), where, "search.seed", integer=True, low=0)
        space, space_files = _load_space(files, p, where)
        search = {"space": space, "algorithm": algorithm, "num_samples": num_samples, "seed": sseed,
                  "files": space_files}

    # ---- scheduler
    sched = raw.get("scheduler", "fifo")
    if isinstance(sched, str):
        sched = {"type": sched}
    if not isinstance(sched, dict):
        raise ConfigError(where, "scheduler", f"expected fifo, asha or a mapping, got {sched!r}",
                          "scheduler: {type: asha, time_attr: tasks_done, grace_period: 1}")
    _check_keys(sched, SCHEDULER_KEYS, where, "scheduler.")
    stype = sched.get("type", "fifo")
    if stype not in ("fifo", "asha"):
        raise ConfigError(where, "scheduler.type", f"unknown scheduler {stype!r}", "fifo or asha")
    if stype == "fifo":
        if len(sched) > 1:
            extra = next(k for k in sched if k != "type")
            raise ConfigError(where, f"scheduler.{extra}", "only ASHA takes options", "scheduler: {type: asha, ...}")
        scheduler = {"type": "fifo"}
    else:
        time_attr = sched.get("time_attr", "tasks_done")
        if time_attr not in TIME_ATTRS:
            raise ConfigError(where, "scheduler.time_attr", f"unknown {time_attr!r}",
                              "tasks_done (rungs after tasks) or global_epoch (after epochs)")
        smetric = sched.get("metric", "avg_acc")
        if smetric not in SCHEDULER_METRICS:
            raise ConfigError(where, "scheduler.metric", f"{smetric!r} is not reported during training",
                              "avg_acc (accuracy on the tasks seen so far) or seen_acc")
        if time_attr == "tasks_done" and smetric == "seen_acc":
            raise ConfigError(where, "scheduler.metric", "seen_acc is reported after epochs, not tasks",
                              "use metric: avg_acc, or time_attr: global_epoch")
        grace = _number(sched.get("grace_period", 1), where, "scheduler.grace_period", integer=True, low=1)
        rf = _number(sched.get("reduction_factor", 2), where, "scheduler.reduction_factor", low=1,
                     low_inclusive=False)
        max_t = sched.get("max_t")
        if max_t is not None:
            max_t = _number(max_t, where, "scheduler.max_t", integer=True, low=grace)
        scheduler = {"type": "asha", "time_attr": time_attr, "metric": smetric, "grace_period": grace,
                     "reduction_factor": rf, "max_t": max_t}

    # ---- trials: every config validated now, so a bad grid value never reaches a worker
    trials: list[dict] = []
    if search is None:
        keys = list(grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
        seen_cfg: dict[str, str] = {}
        first = []
        for factors in combos:
            arm = arm_label(factors)
            t = make_trial(name, base, factors, seeds[0], 0, f"{where}: arm '{arm}'")
            first.append(t)
            cfg = dict(t["config"])
            cfg.pop("seed")
            cfg.pop("method")  # a preset name alone is no difference: what it expands to is
            key = json.dumps(cfg, sort_keys=True)
            if key in seen_cfg:
                raise ConfigError(where, "grid",
                                  f"arms '{seen_cfg[key]}' and '{arm}' give the same config "
                                  "(a key set in base overrides what the grid varies, e.g. a `method` "
                                  "preset key)", "remove that key from base, or vary it in the grid")
            seen_cfg[key] = arm
        grid = {k: list({json.dumps(t["factors"][k], sort_keys=True): t["factors"][k] for t in first}.values())
                for k in keys}  # as the configs read them (YAML's 1.0e6 is a string; the config's a float)
        index = 0
        for seed in seeds:  # seed-major: every arm gets a first result early
            for factors in combos:
                trials.append(make_trial(name, base, factors, seed, index,
                                         f"{where}: arm '{arm_label(factors)}', seed {seed}"))
                index += 1
    else:
        if base_ok is not None:
            raise base_ok
        for key, spec in search["space"].items():  # the bounds and choices make valid configs
            for v in spec["probe"]:
                make_trial(name, base, {key: v}, seeds[0], 0, f"{where}: search {key}={_fmt(v)}")

    if scheduler["type"] == "asha" and scheduler["max_t"] is None:
        cfgs = [t["config"] for t in trials] or [from_dict(copy.deepcopy(base)).to_dict()]
        per = [c["data"]["tasks"] * (c["train"]["epochs"] if scheduler["time_attr"] == "global_epoch" else 1)
               for c in cfgs]
        scheduler["max_t"] = max(per)
        if search:  # a searched key may change the length: take the largest the space allows
            for key in ("data.tasks", "train.epochs"):
                if key in search["space"]:
                    scheduler["max_t"] = max(scheduler["max_t"], 10**6)
    if scheduler["type"] == "asha" and scheduler["max_t"] < scheduler["grace_period"]:
        raise ConfigError(where, "scheduler.grace_period",
                          f"grace period {scheduler['grace_period']} is longer than a trial "
                          f"({scheduler['max_t']} {scheduler['time_attr']})", "lower grace_period")

    from .tracking import resolve_tracking_uri

    storage_path = storage or DEFAULT_STORAGE
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    return Study(name=name, experiment=experiment, path=str(p), raw_text=raw_text, grid=grid, seeds=seeds,
                 metric=metric, mode=mode, trials=trials, storage_path=storage_path,
                 tracking_uri=resolve_tracking_uri(tracking_uri), description=description, base=base,
                 search=search, scheduler=scheduler, resources=resources, max_failures=max_failures)


def trial_table(study: Study) -> str:
    """The expanded trials, one line each (what --dry-run prints)."""
    lines = [f"study {study.name}: {study.num_trials} trials "
             f"({'search' if study.search else f'{len(study.arms)} arms x {len(study.seeds)} seeds'})",
             f"  results  {study.experiment_path}",
             f"  tracking {study.tracking_uri} (experiment '{study.experiment}')",
             f"  per trial {study.resources['cpu']:g} CPU, {study.resources['gpu']:g} GPU;"
             f" metric {study.metric} ({study.mode}); scheduler {_sched_str(study.scheduler)}", ""]
    if study.search:
        s = study.search
        lines.append(f"  {s['algorithm']} search, {s['num_samples']} samples, seeds cycle over "
                     f"{study.seeds}; space from {', '.join(s['files'])}:")
        for k, spec in s["space"].items():
            lines.append(f"    {k:<28} {spec['type']} {spec['args']}")
        return "\n".join(lines)
    w = max([len(t["arm"]) for t in study.trials] + [3])
    lines.append(f"  {'#':>4}  {'arm':<{w}}  seed")
    for t in study.trials:
        lines.append(f"  {t['index']:>4}  {t['arm']:<{w}}  {t['seed']}")
    return "\n".join(lines)


def _sched_str(s: dict) -> str:
    if s["type"] == "fifo":
        return "fifo"
    return (f"asha over {s['time_attr']} on {s['metric']} (grace {s['grace_period']}, "
            f"reduction {s['reduction_factor']:g}, max {s['max_t']})")


# ====================================================================== the trainable
def _trial_resources() -> tuple[float, float]:
    from ray import tune

    try:
        req = tune.get_context().get_trial_resources().required_resources
        return float(req.get("CPU", 1)), float(req.get("GPU", 0))
    except Exception:  # noqa: BLE001 - outside a Tune session
        return 1.0, 0.0


def train_trial(config: dict) -> None:
    """Ray Tune function trainable: one ExperimentConfig (config["config"]), one seed.

    Reports results.epoch_result after every epoch and results.task_result with a checkpoint
    (the learner's state_dict) after every task; resumes at the last finished task."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import tempfile

    import torch
    from ray import tune

    from . import results
    from .learner import Hooks, run

    if config.get("invalid"):
        raise ConfigError("search", None, config["invalid"])  # a sampled value the config rejects
    cfg = from_dict(copy.deepcopy(config["config"]), f"trial arm '{config['arm']}' seed {config['seed']}")
    cpus, gpus = _trial_resources()
    torch.set_num_threads(max(1, int(cpus)))
    cfg.train.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"

    state = None
    last_avg = [float("nan")]
    # what Trainable.restore had to do about a missing or unreadable checkpoint (see
    # _usable_checkpoint): said in the first result, which the driver's progress lines print
    note = [_RESTORE_NOTES.pop(tune.get_context().get_trial_id(), None)]
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        try:
            with ckpt.as_directory() as d:
                # weights_only=True works: the state is tensors, numbers, strings, lists, dicts, tuples
                state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - checked in restore; changed on storage since
            raise RuntimeError(f"checkpoint {ckpt.path} cannot be read ({type(e).__name__}: {e})") from e
        if state["next_task"] >= cfg.data.tasks:
            return  # finished before the driver recorded it: its last result is the checkpoint's
        if state["tasks"]:
            last_avg[0] = state["tasks"][-1]["avg_acc"]

    def on_epoch(rec):
        avg = last_avg[0]
        if not math.isfinite(avg):  # during the first task: the accuracy on its classes so far
            avg = rec.seen_acc if math.isfinite(rec.seen_acc) else 0.0
        r = results.epoch_result(rec, avg)
        if note[0]:
            r["restore_note"], note[0] = note[0], None
        tune.report(r)

    def on_task(rec, learner):
        last_avg[0] = rec.avg_acc
        metrics = results.task_result(rec, learner)
        with tempfile.TemporaryDirectory(prefix="gradmix-ckpt-") as d:
            torch.save(learner.state_dict(), os.path.join(d, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run(cfg, Hooks(on_epoch=on_epoch, on_task=on_task), resume=state, bench=_cached_benchmark(cfg))


_BENCH_CACHE: dict = {}


def _cached_benchmark(cfg):
    """The last dataset this worker loaded, reused while the data section is the same: with
    reuse_actors, a study's trials on MNIST load it once per worker, not once per trial.
    (The learner never changes the tensors in place.)"""
    import json as _json

    from .data import load_benchmark
    from .learner import pick_device

    device = pick_device(cfg.train.device)
    key = _json.dumps([dataclasses.asdict(cfg.data), str(device)], sort_keys=True)
    if key not in _BENCH_CACHE:
        _BENCH_CACHE.clear()  # one dataset at a time: bounded memory
        _BENCH_CACHE[key] = load_benchmark(cfg, device)
    return _BENCH_CACHE[key]


def _trial_dirname(trial) -> str:
    return f"t{int(trial.config.get('index', 0)):04d}_{trial.trial_id}"


# ====================================================================== restoring safely
# Trial id -> what restore did about an unusable checkpoint (set in the trial's actor by
# Trainable.restore, read by train_trial in the same process).
_RESTORE_NOTES: dict[str, str] = {}
_CKPT_RE = re.compile(r"^checkpoint_(\d+)$")


def _checkpoint_problem(checkpoint) -> str | None:
    """None when the checkpoint's learner state loads; else why it cannot be used."""
    import torch
    from ray.train._internal.storage import _exists_at_fs_path

    try:
        if not _exists_at_fs_path(checkpoint.filesystem, checkpoint.path):
            return "it is missing"
        with checkpoint.as_directory() as d:
            f = os.path.join(d, CHECKPOINT_FILE)
            if not os.path.isfile(f):
                return f"it has no {CHECKPOINT_FILE} (half-written?)"
            state = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "next_task", "tasks"} <= set(state):
            return f"its {CHECKPOINT_FILE} is not a learner checkpoint"
    except Exception as e:  # noqa: BLE001 - truncated zip, unpickling error, I/O error, ...
        text = str(e).strip().splitlines()
        return f"it cannot be read, half-written or corrupt ({type(e).__name__}: {text[0][:200] if text else ''})"
    return None


def _trial_checkpoints(fs, trial_dir: str) -> tuple[list[tuple[int, str]], dict[str, dict]]:
    """(index, path) of the checkpoint folders in a trial folder, newest first, and the result
    the driver recorded with each (result.json rows carry checkpoint_dir_name)."""
    import posixpath

    import pyarrow.fs as pafs

    found = []
    try:
        for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
            m = _CKPT_RE.match(info.base_name)
            if m and info.type == pafs.FileType.Directory:
                found.append((int(m.group(1)), info.path))
    except OSError:
        pass
    recorded: dict[str, dict] = {}
    try:
        with fs.open_input_stream(posixpath.join(trial_dir, "result.json")) as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by a crash
        if isinstance(row, dict) and row.get("checkpoint_dir_name"):
            recorded[row["checkpoint_dir_name"]] = row
    return sorted(found, reverse=True), recorded


def _usable_checkpoint(checkpoint_result):
    """What a restored trial should continue from: (training result or None, note or None).

    Ray restores a trial from the checkpoint its saved experiment state names. That one can be
    gone: Ray deletes the oldest checkpoint beyond CheckpointConfig(num_to_keep) as soon as it
    registers a new one, but saves its state a moment later, so a driver killed in between leaves
    a state naming a deleted checkpoint (Ray then fails the trial: "Could not recover from
    checkpoint as it does not exist on storage anymore"). It can also be half-written (a crash or
    a full disk while it was copied) or corrupt. Such a checkpoint is never used: the trial
    continues from the newest other checkpoint in its folder that loads and whose result is in
    the trial's result.json on storage (saved together with the state, so results continue
    without a gap), else it starts over from task 0 (its metrics are not logged twice to
    MLflow). The note says which. A newer checkpoint whose result is not in result.json is not
    used: that task's rows would be missing from the trial's results."""
    import posixpath

    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    ckpt = checkpoint_result.checkpoint
    name = posixpath.basename(ckpt.path.rstrip("/"))
    found, recorded = _trial_checkpoints(ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/")))
    # the trial had ended (its final result is recorded) though the saved state names an earlier
    # checkpoint: continue from the final one, so nothing is run, or reported, a second time
    final = next((p for _, p in found if "final_avg_acc" in recorded.get(posixpath.basename(p), {})), None)
    if final is not None and posixpath.basename(final) != name:
        cand = Checkpoint(final, filesystem=ckpt.filesystem)
        if _checkpoint_problem(cand) is None:
            return (_TrainingResult(checkpoint=cand, metrics=recorded[posixpath.basename(final)]),
                    f"the trial had ended: its final result is recorded with {posixpath.basename(final)} "
                    f"(the saved state named {name}); nothing to run again")
    problem = _checkpoint_problem(ckpt)
    if problem is None:
        return checkpoint_result, None
    for _, path in found:
        other = posixpath.basename(path)
        if other == name or other not in recorded:
            continue
        cand = Checkpoint(path, filesystem=ckpt.filesystem)
        if _checkpoint_problem(cand) is None:
            row = recorded[other]
            return (_TrainingResult(checkpoint=cand, metrics=row),
                    f"checkpoint {name} is unusable ({problem}); continued from {other} "
                    f"(after task {row.get('tasks_done', '?')})")
    return None, f"checkpoint {name} is unusable ({problem}) and no other usable one is recorded; " \
                 "started over from task 0"


def _newest_checkpoint_index(fs, trial_dir: str) -> int:
    found, _ = _trial_checkpoints(fs, trial_dir)
    return found[0][0] if found else -1


# ====================================================================== Ray-side classes
_RAY_CLASSES: dict = {}


def _ray_classes() -> dict:
    """Searchers and the progress callback subclass Ray's bases: built on first use, so this
    module imports without ray. (They are pickled into the study's tuner.pkl by value.)"""
    if _RAY_CLASSES:
        return _RAY_CLASSES
    import pickle

    from ray.tune import Callback
    from ray.tune.search import Searcher

    class GridSearcher(Searcher):
        """Hands out the study's pre-expanded trials in order."""

        def __init__(self, trials: list[dict]):
            super().__init__(metric=None, mode=None)
            self.trials = trials
            self.next = 0
            # on --resume: the indices of the trials Ray's saved state lists. The searcher's own
            # saved position can be ahead of that state (a driver killed, or a full disk, between
            # the two files): every index the state lacks is handed out again.
            self.known: set[int] | None = None

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id):
            while self.known is not None and self.next < len(self.trials) and self.next in self.known:
                self.next += 1
            if self.next >= len(self.trials):
                return Searcher.FINISHED
            self.next += 1
            return copy.deepcopy(self.trials[self.next - 1])

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

        def get_state(self):
            return {"next": self.next}

        def set_state(self, state):
            self.next = state["next"]
            if self.known is not None:
                self.next = 0  # suggest() skips the known ones

        def save(self, checkpoint_path):
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.get_state(), f)

        def restore(self, checkpoint_path):
            with open(checkpoint_path, "rb") as f:
                self.set_state(pickle.load(f))

    from ray.tune.search import SearchGenerator

    class StudySearchGenerator(SearchGenerator):
        """Ray's wrapper of a grid study's searcher. On --resume (`known` set) it counts the
        trials from Ray's saved state, not from its own saved counter, which can be ahead of that
        state (see GridSearcher.known): missing trials are created again."""

        def __init__(self, searcher):
            super().__init__(searcher)
            self.known: set[int] | None = None

        def set_state(self, state):
            super().set_state(state)
            known = getattr(self, "known", None)
            if known is not None:
                self._counter = len(known)
                self._finished = False

    class StudySearcher(Searcher):
        """Wraps Optuna (TPE or random): turns each sampled point into a full study trial."""

        def __init__(self, searcher, study_name: str, base: dict, seeds: list[int]):
            super().__init__(metric=None, mode=None)  # Tune's own metric check stays off:
            self.searcher = searcher  # the metric is only in the final result
            self.study_name, self.base, self.seeds = study_name, base, seeds
            self.count = 0

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def set_max_concurrency(self, max_concurrent) -> bool:
            return False

        def suggest(self, trial_id):
            s = self.searcher.suggest(trial_id)
            if s is None or s == Searcher.FINISHED:
                return s
            factors = flatten(s)
            seed = self.seeds[self.count % len(self.seeds)]
            self.count += 1
            return make_trial(self.study_name, self.base, factors, seed, self.count - 1,
                              f"sampled {arm_label(factors)}", validate=False)

        def on_trial_result(self, trial_id, result):
            pass  # intermediate results lack the study metric; no pruning through the searcher

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

        def get_state(self):
            return {"count": self.count}

        def set_state(self, state):
            self.count = state["count"]

        def save(self, checkpoint_path):
            self.searcher.save(checkpoint_path)

        def restore(self, checkpoint_path):
            self.searcher.restore(checkpoint_path)

    class Progress(Callback):
        """One line per finished/failed trial, a heartbeat, the best so far and an ETA."""

        def __init__(self, total: int, metric: str, mode: str, heartbeat_s: float = 30.0,
                     stream=None):
            self.total, self.metric, self.mode, self.heartbeat_s = total, metric, mode, heartbeat_s
            self.stream = stream
            self._reset()

        def _reset(self):
            self.t0 = time.monotonic()
            self.last_print = self.t0
            self.ended_here = 0
            self.reported: set = set()

        def __getstate__(self):
            d = self.__dict__.copy()
            d["stream"] = None
            return d

        def __setstate__(self, d):
            self.__dict__.update(d)
            self._reset()

        def setup(self, **info):
            self._reset()

        def _out(self, line: str) -> None:
            print(line, file=self.stream or sys.stdout, flush=True)
            self.last_print = time.monotonic()

        def _line(self, trials, ended=None, ended_status: str = "TERMINATED") -> str:
            # the trial that just ended may still show RUNNING while the callbacks run
            st = [ended_status if ended is not None and t is ended else t.status for t in trials]
            done, failed = st.count("TERMINATED"), st.count("ERROR")
            running = st.count("RUNNING")
            best, best_t = None, None
            for t in trials:
                v = (t.last_result or {}).get(self.metric)
                if isinstance(v, (int, float)) and math.isfinite(v) and (t.status == "TERMINATED" or t is ended):
                    if best is None or (v > best if self.mode == "max" else v < best):
                        best, best_t = v, t
            el = time.monotonic() - self.t0
            left = max(self.total - done - failed, 0)
            if left == 0:
                eta = "0:00"
            elif self.ended_here:
                eta = _hms(el / self.ended_here * left)
            else:
                eta = "?"
            best_s = (f"best {self.metric} {best:.4f} ({best_t.config.get('arm')}, seed {best_t.config.get('seed')})"
                      if best_t is not None else f"best {self.metric} -")
            return (f"[{_hms(el)}] {done}/{self.total} done, {running} running, {failed} failed | "
                    f"{best_s} | ETA {eta}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            if trial.trial_id in self.reported:
                return
            self.reported.add(trial.trial_id)
            self.ended_here += 1
            r = trial.last_result or {}
            if self.metric not in r:  # ended before the driver's saved state said so (see _outcomes)
                try:
                    r = _recorded_final(trial.path) or r
                except Exception:  # noqa: BLE001 - only the line's wording depends on it
                    pass
            v = r.get(self.metric)
            what = (f"{self.metric} {v:.4f}" if isinstance(v, (int, float)) else
                    f"stopped early after {r.get('tasks_done', r.get('task', -1) + 1)} tasks")
            self._out(f"  trial {trial.config.get('index')} ({trial.config.get('arm')}, seed "
                      f"{trial.config.get('seed')}): {what}")
            self._out(self._line(trials, trial))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.reported.add(trial.trial_id)
            self.ended_here += 1
            self._out(f"  trial {trial.config.get('index')} ({trial.config.get('arm')}, seed "
                      f"{trial.config.get('seed')}) FAILED: {_error_text(trial)}")
            self._out(self._line(trials, trial, "ERROR"))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            note = result.get("restore_note")
            if note:
                self._out(f"  trial {trial.config.get('index')} ({trial.config.get('arm')}, seed "
                          f"{trial.config.get('seed')}): {note}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._out(f"  trial {trial.config.get('index')} ({trial.config.get('arm')}, seed "
                      f"{trial.config.get('seed')}) failed, retrying from its last checkpoint: "
                      f"{_error_text(trial)}")

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last_print >= self.heartbeat_s:
                self._out(self._line(trials))

    from ray.tune.trainable.function_trainable import wrap_function

    class Trainable(wrap_function(train_trial)):
        """train_trial as Ray runs it, with a restore that never trusts a missing or unreadable
        checkpoint (_usable_checkpoint) and never writes over an existing checkpoint folder."""

        def restore(self, checkpoint_path):
            import posixpath

            from ray.train._internal.session import _TrainingResult

            if not isinstance(checkpoint_path, _TrainingResult):
                return super().restore(checkpoint_path)
            from gradmix_tune import sweep as _sweep  # the module's own globals in this process

            ckpt = checkpoint_path.checkpoint
            # the saved state can lag the folder: the next checkpoint goes after the newest there
            # (Ray raises the index, then writes checkpoint_<index>)
            storage = getattr(self, "_storage", None)
            if storage is not None:
                newest = _sweep._newest_checkpoint_index(ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/")))
                storage.current_checkpoint_index = max(storage.current_checkpoint_index, newest)
            chosen, note = _sweep._usable_checkpoint(checkpoint_path)
            if note:
                _sweep._RESTORE_NOTES[self.trial_id] = note
                print(f"gradmix-tune: trial {self.trial_id}: {note}", file=sys.stderr, flush=True)
            if chosen is None:
                self._restored = False  # train_trial sees no checkpoint: task 0
                return None
            return super().restore(chosen)

    _RAY_CLASSES.update(GridSearcher=GridSearcher, StudySearcher=StudySearcher, Progress=Progress,
                        Trainable=Trainable, StudySearchGenerator=StudySearchGenerator)
    return _RAY_CLASSES


def _hms(s: float) -> str:
    s = int(round(s))
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _error_text(trial) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    path = getattr(trial, "error_file", None)
    text = ""
    try:
        if path and os.path.exists(path):
            text = Path(path).read_text()
    except OSError:
        pass
    if not text:
        try:
            text = str(trial.get_error() or "")
        except Exception:  # noqa: BLE001
            text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost exception line, without Ray's wrapper noise
        if re.match(r"^[\w.]+(Error|Exception)\b", ln):
            return ln[:400]
    return (lines[-1] if lines else "unknown error")[:400]


# ====================================================================== running a study
def _fs(path_or_uri: str):
    import pyarrow.fs as pafs

    if "://" in path_or_uri:
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), path_or_uri


def _exists(path_or_uri: str) -> bool:
    if "://" not in path_or_uri:
        return Path(path_or_uri).exists()
    import pyarrow.fs as pafs

    fs, p = _fs(path_or_uri)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def _read_text(path_or_uri: str) -> str | None:
    if "://" not in path_or_uri:
        q = Path(path_or_uri)
        return q.read_text() if q.is_file() else None
    fs, p = _fs(path_or_uri)
    try:
        with fs.open_input_stream(p) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _write_text(path_or_uri: str, text: str) -> None:
    if "://" not in path_or_uri:
        Path(path_or_uri).parent.mkdir(parents=True, exist_ok=True)
        Path(path_or_uri).write_text(text)
        return
    fs, p = _fs(path_or_uri)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _delete(path_or_uri: str) -> None:
    if "://" not in path_or_uri:
        import shutil

        shutil.rmtree(path_or_uri, ignore_errors=True)
        return
    fs, p = _fs(path_or_uri)
    fs.delete_dir(p)


def _study_record(study: Study) -> dict:
    return {"name": study.name, "experiment": study.experiment, "path": study.path, "raw_text": study.raw_text,
            "grid": study.grid, "seeds": study.seeds, "metric": study.metric, "mode": study.mode,
            "trials": study.trials, "search": study.search, "scheduler": study.scheduler,
            "resources": study.resources}


def _check_writable(study: Study) -> None:
    """A local storage folder must be a folder we can create and write (1 MiB, so a full disk
    shows here too), checked before Ray starts. Remote storage (s3://...) is Ray's to check."""
    if "://" in study.storage_path:
        return
    for folder in (Path(study.storage_path), Path(study.experiment_path)):
        probe = folder / f".gradmix-write-test-{os.getpid()}"
        try:
            if folder != Path(study.storage_path) and not folder.is_dir():
                continue  # a new study's folder: Ray creates it; its parent was checked
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            what, where = e.strerror or type(e).__name__, ""
            if isinstance(e, (NotADirectoryError, FileExistsError)):
                f = next((a for a in [folder, *folder.parents] if a.exists() and not a.is_dir()), None)
                what = f"{f} is a file, not a folder" if f is not None else what
            elif e.filename and str(e.filename) != str(probe):
                where = f" ({e.filename})"
            raise ConfigError("--storage", None, f"results and checkpoints cannot be written to {folder}: "
                                                 f"{what}{where}",
                              "pass --storage a writable folder with free space (shared storage for a "
                              "multi-node cluster)") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass


def _raise_if_storage_full(study: Study, error: BaseException) -> None:
    """Ray's own writes (trial errors, results, the study's state) fail in odd ways on a full
    disk (e.g. EOFError reading back an error file it could not write): say what happened."""
    if "://" in study.storage_path:
        return
    import shutil

    try:
        free = shutil.disk_usage(study.storage_path).free
    except OSError:
        return
    if free < (1 << 20) or getattr(error, "errno", None) == 28:
        raise ConfigError("--storage", None,
                          f"the storage folder {study.storage_path} ran out of space during the study "
                          f"({free // 1024} KiB free; Ray stopped with {type(error).__name__}: "
                          f"{str(error).strip().splitlines()[-1][:200] if str(error).strip() else ''})",
                          "free some space, then continue with --resume: finished trials are kept and "
                          "unfinished ones continue from their last complete checkpoint") from error


def _check_saved_state(study: Study) -> None:
    """Ray resumes from its newest experiment_state-*.json: it must be there and whole (Ray
    writes it in place, so a full disk or a crash mid-write can cut it short)."""
    if "://" in study.storage_path:
        return  # Ray reports it
    states = sorted(Path(study.experiment_path).glob("experiment_state-*.json"))
    if not states:
        raise ConfigError(study.experiment_path, None,
                          "the study was stopped before Ray saved its state: there is nothing to resume",
                          "start over with --overwrite")
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(str(states[-1]), None,
                          f"Ray's saved state of the study is cut short or corrupt ({type(e).__name__}: {e}); "
                          "it was probably being written when the disk filled up or the machine went down",
                          "free space and start over with --overwrite (finished trials' results stay in "
                          "MLflow and in their trial folders until then)") from None


def _check_storage(study: Study, resume: bool, overwrite: bool) -> None:
    """Before Ray starts: a new study must not land on an old one; --resume needs one; the
    storage folder must be writable."""
    _check_writable(study)
    exp = study.experiment_path
    state_file = _join(exp, STUDY_FILE)
    exists = _exists(exp)
    if resume:
        if not exists or _read_text(state_file) is None:
            raise ConfigError(exp, None, f"no study '{study.name}' to resume here",
                              "run it without --resume (or point --storage at where it ran)")
        saved = json.loads(_read_text(state_file))
        if not study.search and saved.get("trials") != json.loads(json.dumps(study.trials)):
            raise ConfigError(study.path, None,
                              f"the study's trials differ from the interrupted run's ({state_file})",
                              "resume with the ablation file (and --set / --data-root) it ran with, "
                              "or start over with --overwrite")
        _check_saved_state(study)
        return
    if exists:
        if overwrite:
            _delete(exp)
            return
        raise ConfigError(exp, None, f"study '{study.name}' already has results here",
                          "add --resume to continue it, --overwrite to start over, or --storage elsewhere")


def _init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, dashboard: bool) -> bool:
    """Connect to (or start) Ray. Returns True when this call started it (so we shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    # "token authentication is enabled" on every start: true, and nothing for the user to do
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=dashboard, log_to_driver=False,
                                  logging_level=logging.WARNING, configure_logging=True)
    if address:
        if num_cpus is not None or num_gpus is not None:
            raise ConfigError("--address", None, "--num-cpus / --num-gpus only apply to a local Ray",
                              "size the cluster where it is started, or drop --address")
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return True


def _check_cluster(study: Study, address: str | None, storage_given: bool) -> int:
    """After Ray is up: the trial fits on a node, multi-node runs use shared storage.
    Returns how many trials fit at once."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    cpu, gpu = study.resources["cpu"], study.resources["gpu"]
    fits_node = any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes)
    if not fits_node:
        have = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU"
                         for n in nodes)
        raise ConfigError(study.path, "resources",
                          f"a trial needs {cpu:g} CPU and {gpu:g} GPU but no Ray node has that ({have})",
                          "lower resources.cpu / resources.gpu, or start Ray with more (--num-cpus, --num-gpus)")
    if len(nodes) > 1 and "://" not in study.storage_path:
        # a local path is shared storage only if every node that can run a trial sees it: ask them
        hosts = [n for n in nodes if n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu]
        blind = _nodes_not_seeing(study.storage_path, hosts)
        if blind:
            given = "" if storage_given else " (the default, a folder of this machine)"
            raise ConfigError("--storage", None,
                              f"this Ray cluster has {len(nodes)} nodes but {len(blind)} of them cannot see the "
                              f"results folder {study.storage_path}{given}: {', '.join(blind)}",
                              "pass --storage with shared storage: an NFS path mounted at the same place on "
                              "every node, or s3://bucket/path")
    slots = total.get("CPU", 0) // cpu
    if gpu > 0:
        slots = min(slots, total.get("GPU", 0) // gpu)
    return max(int(slots), 1)


def _nodes_not_seeing(folder: str, nodes: list[dict], timeout_s: float = 60.0) -> list[str]:
    """Nodes (as "ip (node id)") on which a file just written to `folder` here cannot be read:
    one zero-CPU task pinned to each node looks for it. A node that does not answer in time is
    reported as a warning, not an error."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = Path(folder) / f".gradmix-shared-{token}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)

    def sees(path: str, token: str) -> bool:
        try:
            with open(path) as f:
                return f.read() == token
        except OSError:
            return False

    probe = ray.remote(num_cpus=0, max_retries=0)(sees)
    try:
        refs = {f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]})":
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes}
        ready, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        blind, unknown = [], []
        for name, ref in refs.items():
            if ref not in ready:
                unknown.append(name)
                continue
            try:
                if not ray.get(ref):
                    blind.append(name)
            except Exception:  # noqa: BLE001 - the node died meanwhile: Ray handles trials there
                unknown.append(name)
        for ref in late:
            ray.cancel(ref, force=True)
        if unknown:
            print(f"warning: could not check that {', '.join(unknown)} see(s) {folder}; results there "
                  "would be lost if not", file=sys.stderr, flush=True)
        return blind
    finally:
        try:
            marker.unlink()
        except OSError:
            pass


def _make_search_alg(study: Study, max_concurrent: int):
    """Grid: the pre-expanded trials in order. Search: Optuna (TPE, or its random sampler)."""
    from ray.tune.search import ConcurrencyLimiter

    C = _ray_classes()
    if not study.search:
        return C["StudySearchGenerator"](ConcurrencyLimiter(C["GridSearcher"](study.trials),
                                                            max_concurrent=max_concurrent))
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    s = study.search
    space = {}
    for k, spec in s["space"].items():
        a = spec["args"]
        if spec["type"] in ("uniform", "loguniform"):
            space[k] = FloatDistribution(float(a[0]), float(a[1]), log=spec["type"] == "loguniform")
        elif spec["type"] == "int":
            space[k] = IntDistribution(a[0], a[1])  # both ends included
        else:
            space[k] = CategoricalDistribution(a)
    sampler = (optuna.samplers.TPESampler(seed=s["seed"]) if s["algorithm"] == "optuna"
               else optuna.samplers.RandomSampler(seed=s["seed"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inner = OptunaSearch(space=space, metric=study.metric, mode=study.mode, sampler=sampler)
    return ConcurrencyLimiter(C["StudySearcher"](inner, study.name, study.base, study.seeds),
                              max_concurrent=max_concurrent)


def _make_scheduler(study: Study):
    s = study.scheduler
    if s["type"] == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=s["time_attr"], metric=s["metric"], mode="max", max_t=s["max_t"],
                         grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])


def _saved_indices(study: Study) -> set[int] | None:
    """Study indices of the trials in the saved Ray state that --resume restores (None: unreadable)."""
    try:
        from ray.tune import ExperimentAnalysis

        quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return {int(t.config["index"]) for t in ExperimentAnalysis(study.experiment_path).trials}
        finally:
            quiet.setLevel(level)
    except Exception:  # noqa: BLE001 - let Ray's own restore report it
        return None


def _set_known_trials(search_alg, known: set[int] | None) -> None:
    s = search_alg
    while s is not None:
        if hasattr(s, "known"):
            s.known = known
        s = getattr(s, "searcher", None)


def _set_search_concurrency(search_alg, n: int) -> None:
    from ray.tune.search import ConcurrencyLimiter

    s = search_alg
    while s is not None:
        if isinstance(s, ConcurrencyLimiter):
            s.max_concurrent = n
        s = getattr(s, "searcher", None)


@dataclass
class TrialOutcome:
    config: dict
    metrics: dict
    status: str  # ok | failed | stopped (early, by the scheduler) | unfinished
    error: str = ""
    trial_id: str = ""


@dataclass
class SweepOutcome:
    study: Study
    trials: list[TrialOutcome]
    exit_code: int
    report_dir: str | None = None


def _outcomes(result_grid, study: Study) -> list[TrialOutcome]:
    """Each trial's end: ok (ran to the last task), failed, stopped (early, by ASHA) or unfinished
    (Ctrl-C: Ray stops running trials and marks them terminated, without their final result)."""
    try:  # the live Trial objects, in the same order as the results
        trials = list(result_grid._experiment_analysis.trials)
    except Exception:  # noqa: BLE001
        trials = []
    if len(trials) != len(result_grid):
        trials = [None] * len(result_grid)
    saved: dict[str, str] = {}
    if study.scheduler["type"] != "fifo" and any("final_avg_acc" not in (r.metrics or {}) for r in result_grid):
        saved = _saved_statuses(study)  # ASHA stops trials too: ask the saved state which ones Ctrl-C cut
    out = []
    for r, trial in zip(result_grid, trials):
        # (Result.config comes from the last result: a trial that failed before any has none)
        cfg = r.config or dict(getattr(trial, "config", None) or {})
        m = dict(r.metrics or {})
        st = getattr(trial, "status", None)
        tid = getattr(trial, "trial_id", None) or m.get("trial_id", "")
        if r.error is None and st != "ERROR" and "final_avg_acc" not in m and r.path:
            # resumed from a checkpoint newer than the driver's saved state (_usable_checkpoint):
            # the trial had ended, its final result is recorded in its folder, not reported again
            m = _recorded_final(_join(study.experiment_path, os.path.basename(r.path.rstrip("/")))) or m
        if r.error is not None or st == "ERROR":
            err = _error_text(trial) if trial is not None else (str(r.error).strip().splitlines() or ["?"])[-1]
            out.append(TrialOutcome(cfg, m, "failed", err, tid))
        elif "final_avg_acc" in m:  # only the last task's result has it (Ray's `done` is also set
            # on the last result of a trial the scheduler stopped early)
            out.append(TrialOutcome(cfg, m, "ok", trial_id=tid))
        elif st not in (None, "TERMINATED") or study.scheduler["type"] == "fifo" or \
                saved.get(tid, "TERMINATED") != "TERMINATED":
            out.append(TrialOutcome(cfg, m, "unfinished", trial_id=tid))  # FIFO never stops a trial early
        else:
            out.append(TrialOutcome(cfg, m, "stopped", trial_id=tid))
    out.sort(key=lambda o: o.config.get("index", 0))
    return out


def _recorded_final(trial_path: str) -> dict | None:
    """The last-task result (with final_avg_acc) recorded in a trial folder's result.json, if any."""
    try:
        text = _read_text(_join(trial_path, "result.json"))
    except Exception:  # noqa: BLE001 - unreadable: nothing recorded as far as we can tell
        return None
    for line in reversed((text or "").splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "final_avg_acc" in row:
            return row
    return None


def _saved_statuses(study: Study) -> dict[str, str]:
    """Trial id -> status in the study's saved state (what --resume would see; running trials
    read back as PENDING)."""
    try:
        from ray.tune import ExperimentAnalysis

        quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return {t.trial_id: t.status for t in ExperimentAnalysis(study.experiment_path).trials}
        finally:
            quiet.setLevel(level)
    except Exception:  # noqa: BLE001 - no saved state: nothing to add
        return {}


def _remove_orphans(study: Study, trials: list[TrialOutcome]) -> None:
    """A trial the driver created just before it was killed, and never recorded, is created
    again on resume under a new id. Its old folder holds no result: remove it."""
    if "://" in study.storage_path:
        return
    import shutil

    ids = {t.trial_id for t in trials}
    if len(ids) != len(trials) or "" in ids:
        return  # not sure which folders are the study's: leave them
    configs = {json.dumps(t.config, sort_keys=True) for t in trials if t.status != "unfinished"}
    for d in Path(study.experiment_path).glob("t[0-9][0-9][0-9][0-9]_*"):
        if not d.is_dir() or d.name.split("_", 1)[1] in ids:
            continue
        files = {f.name: f for f in d.iterdir()}
        empty = set(files) <= {"params.json", "params.pkl", "result.json"} and \
            ("result.json" not in files or files["result.json"].stat().st_size == 0)
        try:  # it got as far as a result or a checkpoint: the same trial has ended under its new id
            again = json.dumps(json.loads(files["params.json"].read_text()), sort_keys=True) in configs
        except (KeyError, OSError, ValueError):
            again = False
        if empty or again:
            shutil.rmtree(d, ignore_errors=True)


def _prune_checkpoints(study: Study, result_grid) -> None:
    """After a study's run (Ray's state saved and consistent): each trial keeps the newest
    checkpoint whose result is recorded (the final one, for a finished trial) and the one the
    saved state names (the same, unless a killed driver's state lagged). The others are ones a
    killed driver never recorded or Ray no longer tracks (restores never write over an existing
    checkpoint folder, see Trainable.restore). Local storage only."""
    if "://" in study.storage_path:
        return
    import shutil

    import pyarrow.fs as pafs

    for r in result_grid:
        if not r.path:
            continue
        d = Path(study.experiment_path) / os.path.basename(r.path.rstrip("/"))
        found, recorded = _trial_checkpoints(pafs.LocalFileSystem(), str(d))
        keep = {os.path.basename(p) for _, p in found if os.path.basename(p) in recorded}
        keep = set(sorted(keep)[-1:])  # the newest whose result is recorded (the final one, if ended)
        if r.checkpoint is not None:  # and the one the saved state names
            keep.add(os.path.basename(r.checkpoint.path.rstrip("/")))
        if not keep & {os.path.basename(p) for _, p in found}:
            continue  # nothing we are sure of: leave them all
        for _, p in found:
            if os.path.basename(p) not in keep:
                shutil.rmtree(p, ignore_errors=True)


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.4f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.4f} +- {sd:.4f}"


def summary_rows(study: Study, trials: list[TrialOutcome]) -> list[dict]:
    """Per arm: n trials, finished, failed, stopped, mean +- std of the metric and forgetting."""
    arms: dict[str, list[TrialOutcome]] = {a: [] for a in study.arms}
    for t in trials:
        arms.setdefault(t.config.get("arm", "?"), []).append(t)
    rows = []
    for arm, ts in arms.items():
        ok = [t for t in ts if t.status == "ok"]
        rows.append({"arm": arm, "n": len(ts), "ok": len(ok),
                     "failed": sum(t.status == "failed" for t in ts),
                     "stopped": sum(t.status == "stopped" for t in ts),
                     "unfinished": sum(t.status == "unfinished" for t in ts),
                     "final_avg_acc": [t.metrics.get("final_avg_acc") for t in ok],
                     "forgetting": [t.metrics.get("forgetting") for t in ok],
                     "metric": [t.metrics.get(study.metric) for t in ok],
                     "wall_time_s": [t.metrics.get("wall_time_s") for t in ok]})
    return rows


def summary_table(study: Study, trials: list[TrialOutcome]) -> str:
    rows = summary_rows(study, trials)
    if study.search:  # one row per sampled configuration: best first
        sign = -1 if study.mode == "max" else 1
        rows.sort(key=lambda r: (not r["metric"], sign * (sum(r["metric"]) / len(r["metric"]) if r["metric"] else 0)))
    w = max([len(r["arm"]) for r in rows] + [3])
    extra = study.metric not in ("final_avg_acc", "forgetting")
    head = f"  {'arm':<{w}}  {'n':>3} {'ok':>3} {'fail':>4} {'stop':>4}  {'final_avg_acc':<17}  {'forgetting':<17}"
    head += f"  {study.metric:<17}" if extra else ""
    head += "  time/trial"
    lines = [f"summary of {study.name} (mean +- std over seeds)", head]
    best, best_arm = None, None
    for r in rows:
        vals = [v for v in r["metric"] if isinstance(v, (int, float)) and math.isfinite(v)]
        if vals:
            m = sum(vals) / len(vals)
            if best is None or (m > best if study.mode == "max" else m < best):
                best, best_arm = m, r["arm"]
    for r in rows:
        times = [t for t in r["wall_time_s"] if isinstance(t, (int, float))]
        line = (f"  {r['arm']:<{w}}  {r['n']:>3} {r['ok']:>3} {r['failed']:>4} {r['stopped']:>4}  "
                f"{_mean_std(r['final_avg_acc']):<17}  {_mean_std(r['forgetting']):<17}")
        line += f"  {_mean_std(r['metric']):<17}" if extra else ""
        line += f"  {sum(times) / len(times):.1f} s" if times else "  -"
        line += "  *" if r["arm"] == best_arm and len(rows) > 1 else ""
        lines.append(line)
    if best_arm is not None and len(rows) > 1:
        lines.append(f"  * best mean {study.metric} ({study.mode}): {best_arm}")
    return "\n".join(lines)


def run_study(study: Study, *, resume: bool = False, overwrite: bool = False, max_concurrent: int | None = None,
              num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None,
              storage_given: bool = True, dashboard: bool = False, reports_dir: str = "reports",
              heartbeat_s: float = 30.0, callbacks: list | None = None) -> SweepOutcome:
    """Run (or resume) the study on Ray; print progress and the per-arm summary. `callbacks`:
    more Ray Tune callbacks for the driver (e.g. benchmarks/sweep_throughput.py's trial clock)."""
    _check_storage(study, resume, overwrite)  # before Ray starts
    saved_env = {k: os.environ.get(k) for k in _RAY_ENV}
    for k, v in _RAY_ENV.items():
        os.environ.setdefault(k, v)
    try:
        return _run_study(study, resume, max_concurrent, num_cpus, num_gpus, address, storage_given, dashboard,
                          reports_dir, heartbeat_s, list(callbacks or []))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Set for the study's run (a value the user set wins):
_RAY_ENV = {
    "OMP_NUM_THREADS": "1",  # local workers inherit it; each trial sets torch threads to its CPUs
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # we snapshot at every checkpoint
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no TensorBoard / CSV writer per result (JSON is kept)
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: Ray prints no tables; the Progress callback reports
}


def _run_study(study: Study, resume: bool, max_concurrent: int | None, num_cpus: int | None,
               num_gpus: int | None, address: str | None, storage_given: bool, dashboard: bool,
               reports_dir: str, heartbeat_s: float, extra_callbacks: list) -> SweepOutcome:
    import ray

    from . import report, tracking

    started = _init_ray(address, num_cpus, num_gpus, dashboard)
    try:
        slots = _check_cluster(study, address or os.environ.get("RAY_ADDRESS"), storage_given)
        concurrency = max_concurrent or slots
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        C = _ray_classes()
        callbacks = [C["Progress"](study.num_trials, study.metric, study.mode, heartbeat_s=heartbeat_s),
                     JsonLoggerCallback()]
        callbacks += list(tracking.sweep_callbacks(study, study.tracking_uri, resume) or []) + extra_callbacks
        trainable = tune.with_resources(C["Trainable"], {"cpu": study.resources["cpu"],
                                                         "gpu": study.resources["gpu"]})
        if resume:
            tuner = tune.Tuner.restore(study.experiment_path, trainable, resume_unfinished=True,
                                       resume_errored=True)
            inner = getattr(tuner, "_local_tuner", None)
            if inner is not None:  # fresh callbacks (tracking resumes its runs); new concurrency
                inner._run_config.callbacks = callbacks
                if max_concurrent:
                    _set_search_concurrency(inner._tune_config.search_alg, max_concurrent)
                if not study.search:
                    _set_known_trials(inner._tune_config.search_alg, _saved_indices(study))
            print(f"resuming study {study.name} from {study.experiment_path}", flush=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=_make_search_alg(study, concurrency),
                                            scheduler=_make_scheduler(study), num_samples=study.num_trials,
                                            reuse_actors=True, trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=study.name, storage_path=study.storage_path, callbacks=callbacks, verbose=0,
                    failure_config=tune.FailureConfig(max_failures=study.max_failures),
                    # one per trial: Ray then saves the study's state after every checkpoint
                    # (it forces a snapshot every num_to_keep checkpoints), so a killed driver
                    # loses the least. Ray deletes the previous checkpoint a moment before that
                    # snapshot: a restore never trusts the state blindly (_usable_checkpoint).
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            _write_text(_join(study.experiment_path, STUDY_FILE), json.dumps(_study_record(study), indent=1))
            print(f"study {study.name}: {study.num_trials} trials, up to {concurrency} at a time "
                  f"-> {study.experiment_path}", flush=True)
        quiet = logging.getLogger("ray.tune")  # trial tracebacks: the progress lines say it shorter
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            grid = tuner.fit()
            trials = _outcomes(grid, study)
        except Exception as e:
            _raise_if_storage_full(study, e)
            raise
        finally:
            quiet.setLevel(level)
        if resume:
            _remove_orphans(study, trials)
        _prune_checkpoints(study, grid)
    finally:
        if started:
            ray.shutdown()

    print()
    print(summary_table(study, trials))
    failed = [t for t in trials if t.status == "failed"]
    for t in failed:
        print(f"  failed: trial {t.config.get('index')} ({t.config.get('arm')}, seed {t.config.get('seed')}): "
              f"{t.error}")
    unfinished = [t for t in trials if t.status == "unfinished"]
    interrupted = bool(unfinished) or len(trials) < study.num_trials
    print(f"\nresults  {study.experiment_path}\ntracking {study.tracking_uri}", flush=True)
    if interrupted:  # Ctrl-C: Ray saved the state; the report waits for the whole study
        left = study.num_trials - sum(t.status in ("ok", "failed", "stopped") for t in trials)
        print(f"interrupted with {left} of {study.num_trials} trials to go: continue with\n"
              f"  gradmix-tune sweep {study.path} --resume" +
              (f" --storage {study.storage_path}" if storage_given else ""), flush=True)
        return SweepOutcome(study, trials, 130)
    try:
        report_dir = report.after_sweep(study, study.tracking_uri, out_dir=reports_dir)
    except Exception as e:  # noqa: BLE001 - the trials' results stand; the report can be rebuilt later
        print(f"warning: the report failed ({type(e).__name__}: {e}); rebuild it with "
              f"`gradmix-tune report {study.name}`", file=sys.stderr)
        report_dir = None
    return SweepOutcome(study, trials, 1 if failed else 0, str(report_dir) if report_dir else None)


# ====================================================================== CLI
def cmd_sweep(args) -> int:
    study = load_study(args.ablation, args.set, data_root=args.data_root, storage=args.storage,
                       tracking_uri=args.tracking_uri)
    if args.resume and args.overwrite:
        raise ConfigError("--resume", None, "--resume and --overwrite contradict each other", "pick one")
    for flag in ("max_concurrent", "num_cpus", "num_gpus"):
        v = getattr(args, flag)
        if v is not None and v < (1 if flag == "max_concurrent" else 0):
            raise ConfigError(f"--{flag.replace('_', '-')}", None, f"got {v}", "a positive number")
    if args.dry_run:
        print(trial_table(study))
        return 0
    outcome = run_study(study, resume=args.resume, overwrite=args.overwrite, max_concurrent=args.max_concurrent,
                        num_cpus=args.num_cpus, num_gpus=args.num_gpus, address=args.address,
                        storage_given=args.storage is not None, dashboard=args.dashboard,
                        reports_dir=args.reports)
    return outcome.exit_code


def register(sub) -> None:
    """Add the `sweep` subcommand. Heavy imports (ray, torch) happen inside the command."""
    p = sub.add_parser(
        "sweep", help="run an ablation study with Ray Tune",
        description="Run an ablation study (ablations/*.yaml) with Ray Tune: every arm x seed (or the "
                    "search's samples) as a trial, live progress, a per-arm summary, then the report. "
                    "Exit code 0: all trials ok; 1: some failed (the others still finish); 2: bad input.")
    p.add_argument("ablation", help="ablation YAML file")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trial table and exit (no Ray)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. train.epochs=2 (repeatable)")
    p.add_argument("--data-root", help="dataset folder for the trials (else $GRADMIX_DATA_ROOT, else ./data)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="run at most N trials at a time")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs for the local Ray (default: all)")
    p.add_argument("--num-gpus", type=int, metavar="N", help="GPUs for the local Ray (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted study in --storage: finished trials are kept, unfinished "
                        "and failed ones continue from their last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results of this study and start over")
    p.add_argument("--address", help="join an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", metavar="PATH_OR_URI",
                   help=f"where results and checkpoints go (default ./{DEFAULT_STORAGE}); a multi-node cluster "
                        "needs shared storage: an NFS path on every node or s3://...")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--reports", default="reports", metavar="DIR", help="where the report goes (default ./reports)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local Ray")
    p.set_defaults(func=cmd_sweep)
