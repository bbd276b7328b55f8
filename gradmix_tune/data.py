"""Datasets -> class-incremental tasks: float tensors in memory, seeded class order.

Everything lives as tensors on the training device; batches are index slices and
augmentations are tensor ops, so no DataLoader worker processes are needed.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, ExperimentConfig, data_root

# Per-dataset channel statistics (the usual published values).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


@dataclass
class Split:
    x: torch.Tensor  # float, N x C x H x W (or N x D for vectors)
    y: torch.Tensor  # int64, N


@dataclass
class Benchmark:
    """A dataset cut into tasks of disjoint classes (class-IL: one shared head)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    task_classes: list[list[int]]
    augment: bool = False  # random crop + flip on image batches
    mean: tuple[float, ...] = (0.0,)  # normalisation applied, so policies can undo it
    std: tuple[float, ...] = (1.0,)

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def task_indices(self, split: str, task: int) -> torch.Tensor:
        s = self.train if split == "train" else self.test
        classes = torch.tensor(self.task_classes[task], device=s.y.device)
        return torch.nonzero(torch.isin(s.y, classes)).flatten()

    def to(self, device: torch.device | str) -> "Benchmark":
        self.train = Split(self.train.x.to(device), self.train.y.to(device))
        self.test = Split(self.test.x.to(device), self.test.y.to(device))
        return self


def class_order(num_classes: int, seed: int, explicit: list[int] | None = None) -> list[int]:
    if explicit is not None:
        return list(explicit)
    rng = np.random.RandomState(seed)
    return [int(c) for c in rng.permutation(num_classes)]


def split_classes(order: list[int], tasks: int) -> list[list[int]]:
    """Split the class order into `tasks` contiguous groups (sizes differ by at most one)."""
    sizes = [len(order) // tasks + (1 if i < len(order) % tasks else 0) for i in range(tasks)]
    out, start = [], 0
    for s in sizes:
        out.append(order[start:start + s])
        start += s
    return out


def _per_class(split: Split, n: int) -> Split:
    """Keep the first n samples of each class (deterministic subsets for quick runs)."""
    if n <= 0:
        return split
    keep = []
    for c in torch.unique(split.y).tolist():
        keep.append(torch.nonzero(split.y == c).flatten()[:n])
    idx = torch.sort(torch.cat(keep)).values
    return Split(split.x[idx], split.y[idx])


def _missing(name: str, where: Path, files: str, root: Path | None = None) -> ConfigError:
    """`name` is not in `where` (= root/<its folder>): say where the files go and how to name the root."""
    where = where.expanduser().absolute()
    sub = where.relative_to(root.expanduser().absolute()).as_posix() if root is not None else where.name
    return ConfigError(None, "data.root", f"{name} not found under {where} and could not be downloaded",
                       f"put {files} there, or pass --data-root PATH (or set data.root / GRADMIX_DATA_ROOT) "
                       f"for a PATH that has {sub}/ with them")


# ---------------------------------------------------------------- loaders (uint8 / float arrays)

def _load_digits(cfg: ExperimentConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8
    y = torch.tensor(d.target, dtype=torch.int64)
    # A fixed stratified 80/20 split: the dataset ships without one.
    rng = np.random.RandomState(12345)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.nonzero(d.target == c)[0]
        test_mask[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    tm = torch.from_numpy(test_mask)
    return Split(x[~tm], y[~tm]), Split(x[tm], y[tm]), 10


def _load_torchvision_mnist(cfg: ExperimentConfig, name: str):
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    root = Path(data_root(cfg))
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            if not cfg.data.download:
                raise _missing(name, root / cls.__name__ / "raw", "the four idx files", root) from None
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception:
                raise _missing(name, root / cls.__name__ / "raw", "the four idx files", root) from None
        x = ds.data.unsqueeze(1).float() / 255.0
        out.append(Split(x, ds.targets.long()))
    return out[0], out[1], 10


def _read_cifar_batches(folder: Path, names: list[str], label_key: str):
    xs, ys = [], []
    for n in names:
        with open(folder / n, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the published format is a pickle
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(entry[label_key])
    x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
    return Split(x, torch.tensor(ys, dtype=torch.int64))


def _load_cifar(cfg: ExperimentConfig, name: str):
    root = Path(data_root(cfg))
    if name == "cifar10":
        folder, train_files, test_files, key, n = (
            root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
            "labels", 10)
    else:
        folder, train_files, test_files, key, n = (
            root / "cifar-100-python", ["train"], ["test"], "fine_labels", 100)
    if not all((folder / f).is_file() for f in train_files + test_files):
        if cfg.data.download:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            try:
                cls(str(root), train=True, download=True)
            except Exception:
                pass
        if not all((folder / f).is_file() for f in train_files + test_files):
            raise _missing(name, folder, ", ".join(train_files + test_files), root)
    # Read the python batches directly: torchvision's md5 check rejects small test fixtures.
    return _read_cifar_batches(folder, train_files, key), _read_cifar_batches(folder, test_files, key), n


def _load_image_tensor(paths: list[str], size: int) -> torch.Tensor:
    from PIL import Image

    arr = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            arr[i] = np.asarray(im.convert("RGB").resize((size, size)))
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _load_image_folder(cfg: ExperimentConfig, name: str):
    """`root/train/<class>/...` + `root/test|val/<class>/...`, or Tiny ImageNet's val layout."""
    from torchvision.datasets import ImageFolder

    folder = Path(cfg.data.path) if cfg.data.path else Path(data_root(cfg)) / "tiny-imagenet-200"
    if not (folder / "train").is_dir():
        raise ConfigError(None, "data.path", f"no train/ folder in {folder}",
                          "point data.path at a folder with train/<class>/ and val/ or test/")
    train = ImageFolder(str(folder / "train"))
    classes = train.class_to_idx
    size = cfg.data.image_size
    xtr = _load_image_tensor([p for p, _ in train.samples], size)
    ytr = torch.tensor([t for _, t in train.samples], dtype=torch.int64)
    ann = folder / "val" / "val_annotations.txt"
    if ann.is_file():  # Tiny ImageNet: val/images/*.JPEG + a tab-separated label file
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        paths = [str(folder / "val" / "images" / r[0]) for r in rows]
        yte = torch.tensor([classes[r[1]] for r in rows], dtype=torch.int64)
        xte = _load_image_tensor(paths, size)
    else:
        test_dir = folder / "test" if (folder / "test").is_dir() else folder / "val"
        if not test_dir.is_dir():
            raise ConfigError(None, "data.path", f"no test/ or val/ folder in {folder}",
                              "add test/<class>/ images with the same class names as train/")
        test = ImageFolder(str(test_dir))
        remap = {test.class_to_idx[c]: classes[c] for c in test.classes}
        xte = _load_image_tensor([p for p, _ in test.samples], size)
        yte = torch.tensor([remap[t] for _, t in test.samples], dtype=torch.int64)
    return Split(xtr, ytr), Split(xte, yte), len(classes)


def _load_npz(cfg: ExperimentConfig, name: str):
    path = Path(cfg.data.path)
    if not path.is_file():
        raise ConfigError(None, "data.path", f"file not found: {path}", "point data.path at an .npz file")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
        if missing:
            raise ConfigError(None, "data.path", f"{path} lacks arrays {missing}",
                              "save x_train, y_train, x_test, y_test with np.savez")
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def prep(x):
        t = torch.from_numpy(np.asarray(x))
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if t.dim() == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return t.contiguous()

    ytr = torch.from_numpy(arrays["y_train"]).long()
    yte = torch.from_numpy(arrays["y_test"]).long()
    n = int(max(ytr.max(), yte.max())) + 1
    return Split(prep(arrays["x_train"]), ytr), Split(prep(arrays["x_test"]), yte), n


LOADERS = {
    "digits": lambda cfg, name: _load_digits(cfg),
    "mnist": _load_torchvision_mnist,
    "fashion_mnist": _load_torchvision_mnist,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tiny_imagenet": _load_image_folder,
    "image_folder": _load_image_folder,
    "npz": _load_npz,
}


def _normalize(train: Split, test: Split, name: str) -> tuple[tuple, tuple]:
    """Standardise with the published statistics, else the training set's own (per channel)."""
    if name in STATS:
        mean, std = STATS[name]
    elif train.x.dim() == 4:
        mean = tuple(train.x.mean(dim=(0, 2, 3)).tolist())
        std = tuple(train.x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    else:  # vectors: one scalar, so the data's geometry is kept
        mean, std = (float(train.x.mean()),), (float(train.x.std().clamp_min(1e-6)),)
    shape = (1, -1, 1, 1) if train.x.dim() == 4 else (1, -1)
    m = torch.tensor(mean).view(shape) if len(mean) > 1 else torch.tensor(mean[0])
    s = torch.tensor(std).view(shape) if len(std) > 1 else torch.tensor(std[0])
    train.x.sub_(m).div_(s)
    test.x.sub_(m).div_(s)
    return tuple(mean), tuple(std)


def load_benchmark(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> Benchmark:
    name = cfg.data.name
    train, test, n_classes = LOADERS[name](cfg, name)
    mean, std = _normalize(train, test, name) if cfg.data.normalize else ((0.0,), (1.0,))
    train = _per_class(train, cfg.data.train_per_class)
    test = _per_class(test, cfg.data.test_per_class)
    order = class_order(n_classes, cfg.data.class_order_seed, cfg.data.class_order)
    if cfg.data.class_order is not None and sorted(order) != list(range(n_classes)):
        bad = [c for c in order if not 0 <= c < n_classes]
        if bad or len(order) > n_classes:
            raise ConfigError(None, "data.class_order", f"classes {bad} do not exist in {name}",
                              f"use class ids 0..{n_classes - 1}")
    if cfg.data.tasks > len(order):
        raise ConfigError(None, "data.tasks", f"{cfg.data.tasks} tasks but {name} has {len(order)} classes",
                          f"use at most {len(order)} tasks")
    tasks = split_classes(order, cfg.data.tasks)
    bench = Benchmark(name, train, test, n_classes, tasks, augment=cfg.data.augment and train.x.dim() == 4,
                      mean=mean, std=std)
    return bench.to(device)


def describe(bench: Benchmark, cfg: ExperimentConfig) -> dict:
    """What a run's tracking records of its data (mlflow.log_input): name, where it was read from,
    sizes, input shape, the class order and each task's classes."""
    if cfg.data.name == "digits":
        source = "sklearn.datasets.load_digits"
    elif cfg.data.path:
        source = str(Path(cfg.data.path).expanduser().absolute())
    else:
        source = str(Path(data_root(cfg)).expanduser().absolute())
    return {"name": bench.name, "source": source, "train_size": int(len(bench.train.y)),
            "test_size": int(len(bench.test.y)), "input_shape": list(bench.input_shape),
            "num_classes": int(bench.num_classes), "tasks": bench.num_tasks,
            "class_order": [c for t in bench.task_classes for c in t],
            "task_classes": [list(t) for t in bench.task_classes]}


def validation_split(bench: Benchmark, fraction: float, seed: int) -> list[torch.Tensor]:
    """Per task, the training indices held out for validation: `fraction` of each class (at
    least one sample), drawn once from `seed` by a generator of its own, so the split is fixed
    per seed and the training draws do not depend on it. Never overlaps what is trained on."""
    gen = torch.Generator().manual_seed(int(seed) + 7_919)
    y = bench.train.y.cpu()
    out = []
    for classes in bench.task_classes:
        held = []
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < 2:
                continue  # a single sample stays in training
            n_val = max(1, int(len(idx) * fraction))
            held.append(idx[torch.randperm(len(idx), generator=gen)[:n_val]])
        val = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
        out.append(val.to(bench.train.y.device))
    return out
