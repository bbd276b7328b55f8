"""Typed configuration for one experiment: YAML -> dataclasses, with clear errors.

Dotted keys (``memory.size``) are the public names; every error names the file, the key
and a fix, and is raised as ConfigError before anything expensive starts.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .values import as_number, closest, did_you_mean


class ConfigError(ValueError):
    """Bad user input. The CLI prints it (no traceback) and exits with code 2."""

    def __init__(self, where: str | None, key: str | None, problem: str, fix: str = ""):
        self.where, self.key, self.problem, self.fix = where, key, problem, fix
        parts = [f"{where or '<config>'}"]
        if key:
            parts.append(f"key '{key}'")
        msg = ": ".join(parts) + f": {problem}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)

    def __reduce__(self):  # copy.copy and pickle (Ray's process boundary) rebuild it with its message
        return (type(self), (self.where, self.key, self.problem, self.fix))


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = ""  # "" -> $GRADMIX_DATA_ROOT or ./data
    path: str = ""  # npz file or image-folder directory
    tasks: int = 5
    class_order_seed: int = 0
    class_order: list[int] | None = None  # explicit order overrides the seed
    train_per_class: int = 0  # 0 = all; >0 keeps the first N per class (fast subsets)
    test_per_class: int = 0
    image_size: int = 64  # image folders are resized to this
    augment: bool = False  # random crop + flip for image datasets (CIFAR-like)
    normalize: bool = True
    download: bool = True
    # held out of each task's training data for val_* metrics and early stopping; None = 0.1
    # when a study searches or train.early_stop_on is val, else 0 (nothing held out)
    val_fraction: float | None = None


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    nf: int = 20  # reduced resnet18 width
    dropout: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads. Part of the config because float sums differ with the thread count:
    # the same seed gives identical metrics only at the same count. 0 = the trial's CPUs / torch's default.
    threads: int = 1
    eval_batch_size: int = 1000
    eval_every_epoch: bool = True
    loss: str = "ce"
    temperature: float = 0.09  # proxy_contrastive
    early_stop_on: str = "none"  # none | val: stop a task's epochs when held-out accuracy stops rising
    patience: int = 3  # epochs without improvement before stopping
    # train only the first N tasks of the stream (0 = all of them); the tasks, their classes and the
    # split stay those of data.tasks. A study's `search.tasks` sets it for its tuning trials.
    max_tasks: int = 0


@dataclass
class MemoryConfig:
    size: int = 500
    policy: str = "reservoir"
    replay_batch_size: int = 10
    retrieval: str = "random"
    retrieval_candidates: int = 50
    retrieval_virtual_update: bool = False  # true loss change after a virtual SGD step (original MIR)


@dataclass
class MixingConfig:
    selection: str = "none"
    op: str = "mixup"
    alpha: float = 1.0
    threshold: float = 0.0
    criterion: str = "inner"
    gradient_scope: str = "last_layer"
    refresh_every: Union[int, str] = 10  # steps, or "epoch"; and always at a task's first step
    probes_per_class: int = 10  # k mix parents per seen class
    buffer_probes: int = 0  # buffer samples per old class for the buffer gradient, besides the parents; 0 = all
    score_momentum: float = 0.0  # S <- m S + (1 - m) S_fresh across a task's refreshes; 0 = no average
    pair_scoring: str = "auto"  # all | drawn (only pairs batches draw; same values) | auto (all up to 50 classes)
    mix_rate: Union[float, str] = "matched"  # random_matched: a fraction, or GradMix's own rate
    keep_clean: bool = False  # train on the clean batch and, besides it, the mixed samples
    start_task: int = 0  # no mixing before this task (0: mix from the first task, as ER+Mixup)
    balanced_alpha: float = 0.2  # balanced_mixup: lam ~ Beta(balanced_alpha, 1) (the paper: 0.1-0.3)
    remix_kappa: float = 3.0
    remix_tau: float = 0.5


@dataclass
class AugmentConfig:
    policy: str = "none"


@dataclass
class ExperimentConfig:
    method: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


# Choices checked at load time so a typo never reaches a Ray worker.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet",
                  "image_folder", "npz"),
    "model.name": ("mlp", "cnn", "reduced_resnet18", "resnet18", "vit"),
    "train.optimizer": ("sgd", "adam"),
    "train.loss": ("ce", "proxy_contrastive"),
    "train.early_stop_on": ("none", "val"),
    "memory.policy": ("reservoir", "class_balanced"),
    "memory.retrieval": ("random", "mir", "aligned", "balanced"),
    "mixing.selection": ("none", "random", "random_matched", "random_composed", "gradient", "gradient_sample",
                         "remix", "balanced_mixup"),
    "mixing.op": ("mixup", "cutmix"),
    "mixing.criterion": ("inner", "cosine"),
    "mixing.gradient_scope": ("last_layer", "full"),
    "mixing.pair_scoring": ("auto", "all", "drawn"),
    "augment.policy": ("none", "autoaugment", "randaugment", "trivialaugment"),
}

# `method:` presets: named bundles of dotted keys. Explicit keys in the file win.
METHODS: dict[str, dict[str, Any]] = {
    "er": {"mixing.selection": "none", "augment.policy": "none"},
    "finetune": {"memory.size": 0, "mixing.selection": "none"},
    "er_mixup": {"mixing.selection": "random", "mixing.op": "mixup"},
    "er_cutmix": {"mixing.selection": "random", "mixing.op": "cutmix"},
    "er_remix": {"mixing.selection": "remix", "mixing.op": "mixup"},
    "er_balanced_mixup": {"mixing.selection": "balanced_mixup", "mixing.op": "mixup"},
    "er_autoaugment": {"mixing.selection": "none", "augment.policy": "autoaugment"},
    "er_randaugment": {"mixing.selection": "none", "augment.policy": "randaugment"},
    "er_trivialaugment": {"mixing.selection": "none", "augment.policy": "trivialaugment"},
    "gradmix": {"mixing.selection": "gradient", "mixing.op": "mixup"},
    "gradmix_cutmix": {"mixing.selection": "gradient", "mixing.op": "cutmix"},
    # GradMix's controls: random pairs mixed as often as GradMix mixes (random_matched), and
    # moreover with GradMix's make-up of old-old / old-new / new-new pairs (random_composed)
    "random_matched": {"mixing.selection": "random_matched", "mixing.op": "mixup", "mixing.mix_rate": "matched"},
    "random_composed": {"mixing.selection": "random_composed", "mixing.op": "mixup"},
}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(None, key, f"'{p}' is a value, not a section", f"remove '{key}'")
        d = nxt
    d[parts[-1]] = value


def has_dotted(d: dict, key: str) -> bool:
    for p in key.split("."):
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return True


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, typing.Hashable):
            raise ConfigError(None, str(key), f"a key must be a plain name (line {key_node.start_mark.line + 1})",
                              "write 'name: value'")
        if key in seen:
            raise ConfigError(None, str(key), f"duplicate key (line {key_node.start_mark.line + 1})",
                              "keep one of the two entries")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping safely; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), None, "file not found", "check the path")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - safe subclass
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), None, f"not UTF-8 text (byte {e.start})", "save the file as UTF-8 text") from None
    except ConfigError as e:
        raise ConfigError(str(path), e.key, e.problem, e.fix) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), None, f"invalid YAML{line}: {getattr(e, 'problem', e)}",
                          "fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a mapping of keys at the top level",
                          "write 'key: value' lines")
    return data


def resolve_extends(data: dict, path: str | Path, _seen: tuple = ()) -> dict:
    """Follow `extends:` (relative to the including file); the including file wins."""
    _build(ExperimentConfig, {k: v for k, v in data.items() if k != "extends"}, str(path), "")  # keys, types
    if "extends" not in data:
        return data
    parent = data["extends"]
    if not isinstance(parent, str):
        raise ConfigError(str(path), "extends", "must be a file path", "extends: base.yaml")
    ppath = (Path(path).parent / parent).resolve()
    if ppath in _seen:
        raise ConfigError(str(path), "extends", "circular extends", "remove the cycle")
    if not ppath.is_file():
        raise ConfigError(str(path), "extends", f"file not found: {ppath}", "check the path")
    base = resolve_extends(read_yaml(ppath), ppath, _seen + (ppath,))
    rest = {k: v for k, v in data.items() if k != "extends"}
    return deep_merge(base, rest)


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 0.1, true, [1, 2], gradmix."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | None, where: str = "--set") -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(where, item, "expected KEY=VALUE", "e.g. --set memory.size=200")
        k, v = item.split("=", 1)
        try:
            set_dotted(out, k.strip(), parse_value(v))
        except ConfigError as e:
            raise ConfigError(where, e.key, e.problem, e.fix) from None
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str | None, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, key)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(where, key, f"expected {names}, got {value!r}",
                          f"set {key} to a {names}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(where, key, f"expected a list, got {value!r}", f"e.g. {key}: [1, 2]")
        return [_coerce(v, inner, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, key, f"expected true or false, got {value!r}", f"{key}: true")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(where, key, f"expected an integer, got {value!r}",
                          f"write a whole number for {key}")
    if tp is float:
        out = as_number(value)  # YAML 1.1 reads 1e-3 as a string
        if out is not None:
            return float(out)
        raise ConfigError(where, key, f"expected a finite number, got {value!r}", f"write a number for {key}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(where, key, f"expected a string, got {value!r}", f"quote the value of {key}")
    raise TypeError(f"unsupported config type {tp}")


def _build(cls: type, data: dict, where: str | None, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            options = [f"{prefix}{n}" for n in names]
            # the same section first (by leaf name), then a key misplaced in another section
            near = closest(k, names)
            close = (f"{prefix}{near}" if near else closest(key, _ALL_KEYS, cutoff=0.8)
                     or next((a for a in _ALL_KEYS if a.endswith("." + k)), None))
            fix = f"did you mean '{close}'?" if close else did_you_mean(key, options)
            raise ConfigError(where, key, "unknown key", fix)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(where, key, "expected a section (mapping)", f"{key}: {{...}}")
            kwargs[k] = _build(tp, v, where, key + ".")
        else:
            kwargs[k] = _coerce(v, tp, where, key)
    return cls(**kwargs)


_ALL_KEYS = tuple(flatten(dataclasses.asdict(ExperimentConfig())).keys())


def apply_method(data: dict, where: str | None) -> dict:
    """Expand the `method:` preset under the explicit keys (explicit keys win)."""
    method = data.get("method") or ""
    if not method:
        return data
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(where, "method", f"unknown method {method!r}", did_you_mean(method, METHODS, None))
    out = deep_merge({}, data)
    for k, v in METHODS[method].items():
        if not has_dotted(data, k):
            set_dotted(out, k, v)
    return out


def validate(cfg: ExperimentConfig, where: str | None = None) -> ExperimentConfig:
    """Check choices and impossible settings; return cfg unchanged."""
    flat = cfg.flat()
    for key, options in CHOICES.items():
        if flat[key] not in options:
            raise ConfigError(where, key, f"unknown value {flat[key]!r}", did_you_mean(flat[key], options, None))
    positive = ["data.tasks", "train.epochs", "train.batch_size", "train.eval_batch_size",
                "mixing.probes_per_class", "memory.retrieval_candidates", "data.image_size", "model.nf"]
    for key in positive:
        if flat[key] <= 0:
            raise ConfigError(where, key, f"must be positive, got {flat[key]}", f"set {key} >= 1")
    for key in ["memory.size", "memory.replay_batch_size", "train.threads", "data.train_per_class",
                "data.test_per_class", "train.momentum", "train.weight_decay", "data.class_order_seed"]:
        if flat[key] < 0:
            raise ConfigError(where, key, f"must not be negative, got {flat[key]}", f"set {key} >= 0")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(where, "model.dropout", f"must be in [0, 1), got {cfg.model.dropout}", "e.g. 0.1")
    if any(h <= 0 for h in cfg.model.hidden):
        raise ConfigError(where, "model.hidden", f"layer sizes must be positive, got {cfg.model.hidden}",
                          "e.g. model.hidden: [100, 100]")
    dev = cfg.train.device
    if dev not in ("auto", "cpu", "cuda", "mps") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ConfigError(where, "train.device", f"unknown device {dev!r}", "auto, cpu, cuda or cuda:N")
    if cfg.train.lr <= 0:
        raise ConfigError(where, "train.lr", f"must be positive, got {cfg.train.lr}", "e.g. 0.1")
    if cfg.train.temperature <= 0:
        raise ConfigError(where, "train.temperature", "must be positive", "e.g. 0.09")
    vf = cfg.data.val_fraction
    if vf is not None and not 0 <= vf < 1:
        raise ConfigError(where, "data.val_fraction", f"must be in [0, 1), got {vf}", "e.g. data.val_fraction: 0.1")
    if cfg.train.early_stop_on == "val" and vf == 0:
        raise ConfigError(where, "train.early_stop_on", "early stopping on val needs held-out data, "
                          "but data.val_fraction is 0", "set data.val_fraction: 0.1 (or leave it unset)")
    if not 0 <= cfg.train.max_tasks <= cfg.data.tasks:
        raise ConfigError(where, "train.max_tasks", f"must be in [0, data.tasks = {cfg.data.tasks}], got "
                          f"{cfg.train.max_tasks}", "0 trains every task; N the first N")
    if cfg.train.patience < 1:
        raise ConfigError(where, "train.patience", "must be at least 1", "e.g. 3")
    if cfg.memory.retrieval != "random" and cfg.memory.retrieval_candidates < cfg.memory.replay_batch_size:
        raise ConfigError(where, "memory.retrieval_candidates",
                          f"{cfg.memory.retrieval_candidates} candidates cannot give a replay batch of "
                          f"{cfg.memory.replay_batch_size}", "raise memory.retrieval_candidates")
    if cfg.mixing.alpha <= 0:
        raise ConfigError(where, "mixing.alpha", "must be positive", "e.g. mixing.alpha: 1.0")
    mx = cfg.mixing
    if not 0 <= mx.score_momentum < 1:
        raise ConfigError(where, "mixing.score_momentum", f"must be in [0, 1), got {mx.score_momentum}",
                          "e.g. mixing.score_momentum: 0.5 (0 keeps only the latest refresh)")
    if mx.buffer_probes < 0:
        raise ConfigError(where, "mixing.buffer_probes", f"must not be negative, got {mx.buffer_probes}",
                          "0 takes every buffer sample of an old class that is not a mix parent")
    if mx.start_task < 0:
        raise ConfigError(where, "mixing.start_task", f"must not be negative, got {mx.start_task}",
                          "0 mixes from the first task; 1 from the second")
    if mx.balanced_alpha <= 0:
        raise ConfigError(where, "mixing.balanced_alpha", f"must be positive, got {mx.balanced_alpha}",
                          "e.g. mixing.balanced_alpha: 0.2 (Balanced-MixUp used 0.1-0.3)")
    mr = cfg.mixing.mix_rate
    if isinstance(mr, str) and mr != "matched" or not isinstance(mr, str) and not 0 <= mr <= 1:
        raise ConfigError(where, "mixing.mix_rate", f"got {mr!r}", "a fraction in [0, 1], or 'matched'")
    if cfg.memory.size > 0 and cfg.memory.size < cfg.memory.replay_batch_size:
        raise ConfigError(where, "memory.size",
                          f"buffer of {cfg.memory.size} is smaller than the replay batch "
                          f"({cfg.memory.replay_batch_size})",
                          "raise memory.size or lower memory.replay_batch_size")
    re = cfg.mixing.refresh_every
    if isinstance(re, str) and re != "epoch" or isinstance(re, int) and re <= 0:
        raise ConfigError(where, "mixing.refresh_every", f"got {re!r}",
                          "a positive number of steps, or 'epoch'")
    if cfg.data.name in ("npz", "image_folder") and not cfg.data.path:
        raise ConfigError(where, "data.path", f"{cfg.data.name} needs a path",
                          f"set data.path to the {'.npz file' if cfg.data.name == 'npz' else 'folder'}")
    if cfg.data.class_order is not None and len(set(cfg.data.class_order)) != len(cfg.data.class_order):
        raise ConfigError(where, "data.class_order", "classes repeat", "list each class once")
    known = KNOWN_CLASSES.get(cfg.data.name)
    if known is not None:
        n = len(cfg.data.class_order) if cfg.data.class_order is not None else known
        if cfg.data.tasks > n:
            raise ConfigError(where, "data.tasks", f"{cfg.data.tasks} tasks but only {n} classes",
                              f"use at most {n} tasks")
    return cfg


KNOWN_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
                 "tiny_imagenet": 200}


def from_dict(data: dict, where: str | None = None) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(where, None, "expected a mapping", "write 'key: value' lines")
    data = apply_method(data, where)
    cfg = _build(ExperimentConfig, data, where, "")
    return validate(cfg, where)


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                data_root: str | None = None) -> ExperimentConfig:
    """YAML file (+ extends) + `--set` overrides -> validated ExperimentConfig."""
    where = str(path) if path else "--set"
    data = resolve_extends(read_yaml(path), path) if path else {}
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _build(ExperimentConfig, over, "--set", "")  # keys and types of the overrides, named as such
    data = deep_merge(data, over)
    if data_root:
        set_dotted(data, "data.root", data_root)
    return from_dict(data, where)


DATA_ROOT_ENV = "GRADMIX_DATA_ROOT"
OFFLINE_DATASETS = ("digits", "npz", "image_folder")  # need no data root


def default_data_root() -> str:
    """`$GRADMIX_DATA_ROOT`, else ./data: where a config without `data.root` looks."""
    return os.environ.get(DATA_ROOT_ENV) or "data"


def tasks_trained(cfg: ExperimentConfig) -> int:
    """How many tasks a run trains: train.max_tasks when set, else data.tasks."""
    return cfg.train.max_tasks or cfg.data.tasks


def val_fraction(cfg: ExperimentConfig) -> float:
    """The effective held-out fraction (data.val_fraction; unset: 0.1 if early stopping on val)."""
    if cfg.data.val_fraction is not None:
        return cfg.data.val_fraction
    return 0.1 if cfg.train.early_stop_on == "val" else 0.0


def data_root(cfg: ExperimentConfig) -> str:
    """`data.root`, else the default (the one rule, for single runs and studies alike)."""
    return cfg.data.root or default_data_root()


def absolute_data_paths(data: dict, root: str | None = None) -> None:
    """Make a raw config dict's data paths absolute, in place (Ray workers run in their trial
    folder): `root` (e.g. --data-root) wins, else data.root, else the default root; data.path too."""
    d = data.get("data", {})
    if not isinstance(d, dict):
        return  # from_dict reports it
    d = dict(d)
    if root:
        d["root"] = str(Path(root).expanduser().resolve())
    elif isinstance(d.get("root"), str) and d["root"]:
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    elif d.get("name", "digits") not in OFFLINE_DATASETS:
        d["root"] = str(Path(default_data_root()).expanduser().resolve())
    if isinstance(d.get("path"), str) and d["path"]:
        d["path"] = str(Path(d["path"]).expanduser().resolve())
    if d:
        data["data"] = d
