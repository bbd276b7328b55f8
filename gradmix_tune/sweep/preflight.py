"""What `gradmix-tune run` checks before training, done for a whole study on the driver before Ray starts.

For every distinct data section among the study's trials (base + grid + --set + --data-root) the
dataset is loaded the way a trial loads it (files present and readable, class count against
`data.tasks`, an explicit class order), and every arm's learner is built on it once (model against
the input shape, cutmix / augmentation policies that need images, ...). A failure is the trial's
ConfigError, re-raised naming the ablation file (and the arm when arms differ in their data): one
exit-2 line, in `--dry-run` too, instead of every trial failing on a worker.

Image folders (tiny_imagenet, image_folder) are only checked for their layout and class count:
decoding every image here would take as long as the trials' own loading. No ray; torch and the
data loaders are imported when `check_study` runs, not when this module is imported.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ..config import ConfigError, ExperimentConfig, data_root, from_dict
from ..tracking.store import data_key
from .study import Study

IMAGE_FOLDERS = ("tiny_imagenet", "image_folder")
# data_key(data section) -> data.describe() of what the check loaded: the datasets that the sweep's
# MLflow runs record (mlflow.log_input), without loading the data again on the driver
DESCRIBED: dict[str, dict] = {}


def _configs(study: Study) -> list[tuple[str, dict]]:
    """(arm, config dict) of each distinct arm (seed left out); a searched study's base config."""
    if not study.trials:
        return [("base", from_dict(copy.deepcopy(study.base)).to_dict())]
    out, seen = [], set()
    for t in study.trials:
        cfg = dict(t["config"])
        key = json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append((t["arm"], cfg))
    return out


def check_study(study: Study) -> int:
    """Raise the first problem a trial would meet before training, as a ConfigError naming the
    ablation file; returns how many distinct data sections were checked."""
    arms = _configs(study)
    groups: dict[str, list[tuple[str, dict]]] = {}
    for arm, cfg in arms:
        groups.setdefault(data_key(cfg["data"]), []).append((arm, cfg))
    for key, members in groups.items():
        arm = members[0][0]
        where = study.path if len(groups) == 1 else f"{study.path}: arm '{arm}'"
        try:
            info = _check_group([from_dict(copy.deepcopy(c)) for _, c in members])
        except ConfigError as e:
            raise ConfigError(where, e.key, e.problem, e.fix) from None
        if info:
            DESCRIBED[key] = info
    if study.evaluate:  # a study's phase 2 too (phases.py): evaluate.set may name another dataset
        from .evaluation import evaluation_probe

        return len(groups) + check_study(evaluation_probe(study))
    return len(groups)


def datasets(study: Study) -> dict[str, dict]:
    """The descriptions of the study's datasets that check_study recorded (by data_key)."""
    return {data_key(cfg["data"]): DESCRIBED[data_key(cfg["data"])] for _, cfg in _configs(study)
            if data_key(cfg["data"]) in DESCRIBED}


def _check_group(cfgs: list[ExperimentConfig]) -> dict | None:
    """Load the group's data once and build each config's learner on it (on the CPU); returns
    data.describe() of it (None for an image folder, checked but not loaded)."""
    first = cfgs[0]
    if first.data.name in IMAGE_FOLDERS:
        _check_image_folder(first)
        return None
    from ..data import describe, load_benchmark  # torch: only now
    from ..learner import Learner

    bench = load_benchmark(first, "cpu")
    for cfg in cfgs:
        cfg.train.device = "cpu"
        cfg.train.threads = 0  # 0: leave the driver's torch threads as they are
        Learner(cfg, bench)
    return describe(bench, first)


def _check_image_folder(cfg: ExperimentConfig) -> None:
    """The layout _load_image_folder reads (train/<class>/, and val/ or test/), and the class count."""
    folder = Path(cfg.data.path) if cfg.data.path else Path(data_root(cfg)) / "tiny-imagenet-200"
    key = "data.path" if cfg.data.path else "data.root"
    if not (folder / "train").is_dir():
        raise ConfigError(None, key, f"no train/ folder in {folder.absolute()}",
                          "point data.path at a folder with train/<class>/ and val/ or test/"
                          if cfg.data.path else "pass --data-root PATH (or set data.root / GRADMIX_DATA_ROOT) "
                                                "for a PATH that has tiny-imagenet-200/")
    if not any((folder / d).is_dir() for d in ("test", "val")):
        raise ConfigError(None, key, f"no test/ or val/ folder in {folder.absolute()}",
                          "add test/<class>/ images with the same class names as train/")
    classes = [d for d in (folder / "train").iterdir() if d.is_dir()]
    if cfg.data.tasks > len(classes):
        raise ConfigError(None, "data.tasks", f"{cfg.data.tasks} tasks but {folder} has {len(classes)} classes",
                          f"use at most {len(classes)} tasks")
