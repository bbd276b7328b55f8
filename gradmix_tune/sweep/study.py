"""Ablation YAML -> validated Study: its trials expanded, every config checked (no Ray, no torch).

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
    evaluate: {seeds: 3, top: 1, set: {data.class_order_seed: 1}}   # phase 2 (sweep/protocol.py)
    allow_test_metric: false              # a study that selects must tune on a val_ metric

A study that selects (search:, evaluate:) follows sweep/protocol.py: a validation metric,
data.val_fraction 0.1 unless set, `search.tasks: K` (tuning trials train the first K tasks).

Everything is checked (every trial's config included) before Ray starts; every problem is a
ConfigError naming the file, the key and a fix.

Every Ray trial's config is a dict with: study, arm (readable grid factors, no seed), seed,
index (position in the study), factors (grid or sampled key -> value) and config (the full
validated ExperimentConfig as a nested dict, seed included); in a study that selects also phase
(tune | evaluate) and, for evaluation trials, where they came from (protocol.py).

This module imports neither ray nor torch: `--dry-run` and bad input stay fast.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    ConfigError,
    ExperimentConfig,
    METHODS,
    absolute_data_paths,
    deep_merge,
    flatten,
    from_dict,
    parse_overrides,
    read_yaml,
    resolve_extends,
    set_dotted,
)
from ..results import SCHEDULER_METRICS
from ..values import as_number, did_you_mean
from .protocol import ALL_METRICS, check_evaluation, check_honest, parse_evaluate, protocol_lines, selection_base

ABLATION_KEYS = ("name", "experiment", "description", "base", "grid", "seeds", "search", "scheduler",
                 "resources", "metric", "mode", "max_failures", "evaluate", "allow_test_metric",
                 "baseline")  # the report's baseline (an arm label or a method); read by report/ only
SEARCH_KEYS = ("space", "algorithm", "num_samples", "seed", "tasks")
SCHEDULER_KEYS = ("type", "time_attr", "grace_period", "reduction_factor", "max_t", "metric")
RESOURCE_KEYS = ("cpu", "gpu")
TIME_ATTRS = ("tasks_done", "global_epoch")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
DEFAULT_STORAGE = "ray_results"
_DEFAULTS = flatten(ExperimentConfig().to_dict())  # dotted key -> default value
_CONFIG_KEYS = tuple(_DEFAULTS)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    evaluate: dict | None = None  # phase 2: {seeds, top, set} (protocol.parse_evaluate)
    allow_test_metric: bool = False
    val_default: bool = False  # data.val_fraction was unset: the study holds out 0.1 (protocol.py)
    tune_tasks: int | None = None  # search.tasks: the tuning trials train the first K tasks
    phase_dir: str = ""  # "" (the study's tuning or only run), or protocol.EVALUATE_DIR for phase 2

    @property
    def num_trials(self) -> int:
        return self.search["num_samples"] if self.search else len(self.trials)

    @property
    def selects(self) -> bool:
        """The study picks a best configuration (a search, or an evaluation phase)."""
        return bool(self.search or self.evaluate)

    @property
    def experiment_path(self) -> str:
        """The Ray experiment folder: storage/name (phase 2: storage/name/evaluate)."""
        return join(self.ray_storage, self.ray_name)

    @property
    def ray_storage(self) -> str:
        """RunConfig's storage_path (with ray_name: the experiment folder); the study's folder itself for phase 2."""
        return join(self.storage_path, self.name) if self.phase_dir else self.storage_path

    @property
    def ray_name(self) -> str:
        return self.phase_dir or self.name

    @property
    def arms(self) -> list[str]:
        """Arm labels in grid order (searched studies: none up front)."""
        seen: dict[str, None] = {}
        for t in self.trials:
            seen.setdefault(t["arm"], None)
        return list(seen)

    def record(self) -> dict:
        """What the storage folder keeps of the study (--resume checks its trials against it)."""
        return {"name": self.name, "experiment": self.experiment, "path": self.path, "raw_text": self.raw_text,
                "grid": self.grid, "seeds": self.seeds, "metric": self.metric, "mode": self.mode,
                "trials": self.trials, "search": self.search, "scheduler": self.scheduler,
                "resources": self.resources, "evaluate": self.evaluate, "allow_test_metric": self.allow_test_metric,
                "tune_tasks": self.tune_tasks}


def is_uri(path_or_uri: str) -> bool:
    """s3://... and the like (Ray's storage on a remote file system), not a local path."""
    return "://" in path_or_uri


def join(root: str, name: str) -> str:
    """root/name for a local path or a URI."""
    return root.rstrip("/") + "/" + name if is_uri(root) else str(Path(root) / name)


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
               where: str | None = None, validate: bool = True, phase: str | None = None) -> dict:
    """The config dict one Ray trial receives (see the module docstring). With validate=False a
    config that fails validation is kept as given, with the message under "invalid" (a sampled
    point: the trial then fails with it). `phase`: "tune" in a study that selects."""
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
    if phase:
        trial["phase"] = phase
    return trial


def _check_keys(d: dict, allowed, where: str, prefix: str = "") -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(where, f"{prefix}{k}", "unknown key", did_you_mean(k, allowed))


def _number(v: Any, where: str, key: str, *, integer: bool = False, low: float | None = None,
            low_inclusive: bool = True) -> float | int:
    """A YAML value as a finite number (values.as_number), whole when `integer`, at least `low`."""
    n = as_number(v)
    if n is None:
        raise ConfigError(where, key, f"expected a number, got {v!r}", f"write a number for {key}")
    if integer:
        if isinstance(n, float) and not n.is_integer():
            raise ConfigError(where, key, f"expected a whole number, got {n!r}", f"e.g. {key}: 1")
        n = int(n)
    if low is not None and (n < low or (n == low and not low_inclusive)):
        rel = ">=" if low_inclusive else ">"
        raise ConfigError(where, key, f"must be {rel} {low:g}, got {n!r}", f"set {key} {rel} {low:g}")
    return n


def _valid_config_key(k: str, where: str, section: str) -> None:
    if k == "seed":
        raise ConfigError(where, f"{section}.seed", "the seed is not a factor",
                          "list the seeds under `seeds:` (e.g. seeds: [0, 1, 2])")
    if k != "method" and k not in _CONFIG_KEYS:
        raise ConfigError(where, f"{section}.{k}", "unknown config key",
                          did_you_mean(k, ("method",) + _CONFIG_KEYS, "keys"))


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
                raise ConfigError(sp, f"{key}.{kind}", "unknown distribution",
                                  did_you_mean(kind, DISTRIBUTIONS, "ones"))
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
                default = _DEFAULTS.get(key)
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
    absolute_data_paths(base, data_root)
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
                    raise ConfigError(where, "grid.method", f"unknown method {v!r}",
                                      did_you_mean(v, METHODS, "methods"))
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
    # a study that selects (search, evaluate) tunes on held-out data by default (protocol.py)
    metric = raw.get("metric", "val_final_avg_acc" if raw.get("search") is not None or
                     raw.get("evaluate") is not None else "final_avg_acc")
    if metric not in ALL_METRICS:
        raise ConfigError(where, "metric", f"unknown metric {metric!r}", did_you_mean(metric, ALL_METRICS, "metrics"))
    mode = raw.get("mode", ALL_METRICS[metric])
    if mode not in ("max", "min"):
        raise ConfigError(where, "mode", f"expected max or min, got {mode!r}", f"mode: {ALL_METRICS[metric]}")
    allow_test = raw.get("allow_test_metric", False)
    if not isinstance(allow_test, bool):
        raise ConfigError(where, "allow_test_metric", f"expected true or false, got {allow_test!r}",
                          "leave it out: a search tunes on a val_ metric")

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
        tune_tasks = None if s.get("tasks") is None else \
            _number(s["tasks"], where, "search.tasks", integer=True, low=1)  # first-task tuning
        space, space_files = _load_space(files, p, where)
        search = {"space": space, "algorithm": algorithm, "num_samples": num_samples, "seed": sseed,
                  "files": space_files, "tasks": tune_tasks}

    # ---- selecting honestly (protocol.py): phase 2, the validation split, first-task tuning
    evaluate = parse_evaluate(raw["evaluate"], where, seeds) if raw.get("evaluate") is not None else None
    selects = bool(search or evaluate)
    raw_sched = raw.get("scheduler")
    base, val_default = selection_base(base, where, selects=selects, metric=metric,
                                       sched_metric=raw_sched.get("metric") if isinstance(raw_sched, dict) else None,
                                       tune_tasks=search["tasks"] if search else None)
    if search:
        try:
            from_dict(copy.deepcopy(base), f"{where}: base")
            base_ok = None
        except ConfigError as e:
            base_ok = e

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
        smetric = sched.get("metric", "val_avg_acc" if metric.startswith("val_") else "avg_acc")
        if smetric not in SCHEDULER_METRICS:
            raise ConfigError(where, "scheduler.metric", f"{smetric!r} is not reported during training",
                              "avg_acc (test accuracy on the tasks seen so far), seen_acc, or their held-out "
                              "twins val_avg_acc, val_seen_acc")
        if time_attr == "tasks_done" and smetric.endswith("seen_acc"):
            raise ConfigError(where, "scheduler.metric", f"{smetric} is reported after epochs, not tasks",
                              f"use metric: {smetric.replace('seen', 'avg')}, or time_attr: global_epoch")
        grace = _number(sched.get("grace_period", 1), where, "scheduler.grace_period", integer=True, low=1)
        rf = _number(sched.get("reduction_factor", 2), where, "scheduler.reduction_factor", low=1,
                     low_inclusive=False)
        max_t = sched.get("max_t")
        if max_t is not None:
            max_t = _number(max_t, where, "scheduler.max_t", integer=True, low=grace)
        scheduler = {"type": "asha", "time_attr": time_attr, "metric": smetric, "grace_period": grace,
                     "reduction_factor": rf, "max_t": max_t}

    # ---- the held-out data a val_ metric needs; a study that selects does not select on test data
    check_honest(where, metric, scheduler.get("metric"), selects, allow_test, flatten(base).get("data.val_fraction"))
    phase = "tune" if selects else None

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
                                         f"{where}: arm '{arm_label(factors)}', seed {seed}", phase=phase))
                index += 1
    else:
        if base_ok is not None:
            raise base_ok
        for key, spec in search["space"].items():  # the bounds and choices make valid configs
            for v in spec["probe"]:
                make_trial(name, base, {key: v}, seeds[0], 0, f"{where}: search {key}={_fmt(v)}")

    if evaluate:  # the evaluation runs' config (tuned values, whole stream, evaluate.set) is valid too
        check_evaluation(trials[0]["config"] if trials else from_dict(copy.deepcopy(base)).to_dict(), evaluate,
                         where, val_default=val_default, tune_tasks=search["tasks"] if search else None)

    if scheduler["type"] == "asha" and scheduler["max_t"] is None:
        cfgs = [t["config"] for t in trials] or [from_dict(copy.deepcopy(base)).to_dict()]
        per = [(c["train"].get("max_tasks") or c["data"]["tasks"]) *
               (c["train"]["epochs"] if scheduler["time_attr"] == "global_epoch" else 1) for c in cfgs]
        scheduler["max_t"] = max(per)
        if search:  # a searched key may change the length: take the largest the space allows
            for key in ("data.tasks", "train.epochs"):
                if key in search["space"]:
                    scheduler["max_t"] = max(scheduler["max_t"], 10**6)
    if scheduler["type"] == "asha" and scheduler["max_t"] < scheduler["grace_period"]:
        raise ConfigError(where, "scheduler.grace_period",
                          f"grace period {scheduler['grace_period']} is longer than a trial "
                          f"({scheduler['max_t']} {scheduler['time_attr']})", "lower grace_period")

    from ..tracking import resolve_tracking_uri  # here: --dry-run and bad input read no more of tracking

    storage_path = storage or DEFAULT_STORAGE
    if not is_uri(storage_path):
        storage_path = str(Path(storage_path).expanduser().resolve())
    return Study(name=name, experiment=experiment, path=str(p), raw_text=raw_text, grid=grid, seeds=seeds,
                 metric=metric, mode=mode, trials=trials, storage_path=storage_path,
                 tracking_uri=resolve_tracking_uri(tracking_uri), description=description, base=base,
                 search=search, scheduler=scheduler, resources=resources, max_failures=max_failures,
                 evaluate=evaluate, allow_test_metric=allow_test, val_default=val_default,
                 tune_tasks=search["tasks"] if search else None)


def trial_table(study: Study) -> str:
    """The expanded trials, one line each (what --dry-run prints)."""
    lines = [f"study {study.name}: {study.num_trials} trials "
             f"({'search' if study.search else f'{len(study.arms)} arms x {len(study.seeds)} seeds'})",
             f"  results  {study.experiment_path}",
             f"  tracking {study.tracking_uri} (experiment '{study.experiment}')",
             f"  per trial {study.resources['cpu']:g} CPU, {study.resources['gpu']:g} GPU;"
             f" metric {study.metric} ({study.mode}); scheduler {_sched_str(study.scheduler)}"]
    lines += protocol_lines(study) + [""]
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


