"""Writers for small datasets in the real on-disk formats, so loaders are tested offline.

Each writer returns the arrays it wrote (uint8 pixels, int labels) so a test can compare what
the loader read with what is on disk. Pixel values are chosen so every sample differs and its
label can be read back from its pixels where that helps (solid colours per class for images).

    root = write_mnist(tmp_path / "data")            # root/MNIST/raw/train-images-idx3-ubyte ...
    root = write_cifar10(tmp_path / "data")          # root/cifar-10-batches-py/data_batch_1..5, test_batch
    root = write_cifar100(tmp_path / "data")         # root/cifar-100-python/train, test, meta
    folder = write_image_folder(tmp_path / "imgs")   # folder/train/<class>/*.png, folder/test/<class>/*.png
    folder = write_tiny_imagenet(tmp_path / "data")  # folder/train/<wnid>/images, val/images + val_annotations.txt
    path = write_npz(tmp_path / "d.npz")              # x_train, y_train, x_test, y_test
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def _rng(seed: int) -> np.random.RandomState:
    return np.random.RandomState(seed)


def labels_per_class(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Every class `per_class` times, shuffled (like a real dataset, not sorted by class)."""
    y = np.repeat(np.arange(num_classes), per_class)
    return y[_rng(seed).permutation(len(y))]


# ---------------------------------------------------------------- MNIST / FashionMNIST (idx)

def write_idx_images(path: Path, images: np.ndarray) -> None:
    """idx3-ubyte: magic 0x00000803 (unsigned byte, 3 dims), big-endian N, H, W, then pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """idx1-ubyte: magic 0x00000801 (unsigned byte, 1 dim), big-endian N, then labels."""
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", train_per_class: int = 6, test_per_class: int = 3,
                seed: int = 0) -> dict:
    """torchvision layout: root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, uncompressed.
    `folder` is "MNIST" or "FashionMNIST". Returns {"root", "x_train", "y_train", "x_test", "y_test"}."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out = {"root": Path(root)}
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        y = labels_per_class(10, per_class, seed + (split == "test"))
        x = rng.randint(0, 256, size=(len(y), 28, 28)).astype(np.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def write_fashion_mnist(root: Path, **kw) -> dict:
    return write_mnist(root, folder="FashionMNIST", **kw)


# ---------------------------------------------------------------- CIFAR python batches

def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the published batches are protocol-2 pickles


def write_cifar10(root: Path, per_batch_per_class: int = 2, test_per_class: int = 3, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: dicts with 'data'
    (uint8, N x 3072, channel planes R, G, B of 32 x 32 each), 'labels' (list of int),
    'batch_label', 'filenames'. Returns the concatenated train/test arrays (N x 3 x 32 x 32)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    xs, ys = [], []
    for b in range(1, 6):
        y = labels_per_class(10, per_batch_per_class, seed + b)
        data = rng.randint(0, 256, size=(len(y), 3072)).astype(np.uint8)
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": y.tolist(),
                                            "data": data, "filenames": [f"img_{b}_{i}.png" for i in range(len(y))]})
        xs.append(data)
        ys.append(y)
    yt = labels_per_class(10, test_per_class, seed + 99)
    xt = rng.randint(0, 256, size=(len(yt), 3072)).astype(np.uint8)
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": yt.tolist(), "data": xt,
                                    "filenames": [f"test_{i}.png" for i in range(len(yt))]})
    _pickle(folder / "batches.meta", {"num_cases_per_batch": len(ys[0]), "num_vis": 3072,
                                      "label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                      "dog", "frog", "horse", "ship", "truck"]})
    return {"root": Path(root), "x_train": np.concatenate(xs).reshape(-1, 3, 32, 32),
            "y_train": np.concatenate(ys), "x_test": xt.reshape(-1, 3, 32, 32), "y_test": yt}


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> dict:
    """root/cifar-100-python/{train, test, meta}: dicts with 'data' (uint8 N x 3072),
    'fine_labels' (0..99), 'coarse_labels' (0..19), 'filenames', 'batch_label'."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out = {"root": Path(root)}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        y = labels_per_class(100, per_class, seed + (split == "test"))
        data = rng.randint(0, 256, size=(len(y), 3072)).astype(np.uint8)
        _pickle(folder / split, {"batch_label": f"{split}ing batch 1 of 1", "fine_labels": y.tolist(),
                                 "coarse_labels": (y // 5).tolist(), "data": data,
                                 "filenames": [f"{split}_{i}.png" for i in range(len(y))]})
        out[f"x_{split}"], out[f"y_{split}"] = data.reshape(-1, 3, 32, 32), y
    _pickle(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                              "coarse_label_names": [f"super_{i}" for i in range(20)]})
    return out


# ---------------------------------------------------------------- image folders

def class_colour(c: int) -> tuple[int, int, int]:
    """A distinct solid RGB colour per class (survives resizing and JPEG almost exactly)."""
    return (40 * c + 20) % 256, (255 - 50 * c) % 256, (90 + 70 * c) % 256


def _save(img: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_image_folder(folder: Path, classes=("cat", "dog", "emu"), train_per_class: int = 3,
                       test_per_class: int = 2, size: int = 16, test_dir: str = "test", seed: int = 0) -> dict:
    """folder/train/<class>/<i>.png and folder/<test_dir>/<class>/<i>.png with random RGB pixels.
    Returns per split the pixels (N x 3 x H x W uint8) and labels in ImageFolder's order
    (classes sorted by name, files sorted by name within a class)."""
    folder = Path(folder)
    rng = _rng(seed)
    out = {"folder": folder, "classes": sorted(classes)}
    for split, per_class in (("train", train_per_class), (test_dir, test_per_class)):
        xs, ys = [], []
        for ci, c in enumerate(sorted(classes)):
            for i in range(per_class):
                img = rng.randint(0, 256, size=(size, size, 3)).astype(np.uint8)
                _save(img, folder / split / c / f"{i:03d}.png", "PNG")
                xs.append(img.transpose(2, 0, 1))
                ys.append(ci)
        key = "train" if split == "train" else "test"
        out[f"x_{key}"], out[f"y_{key}"] = np.stack(xs), np.array(ys)
    return out


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), train_per_class: int = 2,
                        val_per_class: int = 2, size: int = 64) -> dict:
    """The Tiny ImageNet layout under root/tiny-imagenet-200: wnids.txt, words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG (+ <wnid>_boxes.txt), val/images/val_<k>.JPEG with the
    labels in val/val_annotations.txt (tab-separated: file, wnid, x0, y0, x1, y1), and an
    unlabelled test/images/. Every image is a solid colour: class_colour(class index)."""
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    order = sorted(wnids)  # ImageFolder's class indices
    solid = {w: np.full((size, size, 3), class_colour(order.index(w)), dtype=np.uint8) for w in wnids}
    for w in wnids:
        boxes = []
        for i in range(train_per_class):
            _save(solid[w], folder / "train" / w / "images" / f"{w}_{i}.JPEG", "JPEG")
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t{size - 1}\t{size - 1}")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    rows, y_val, k = [], [], 0
    for _ in range(val_per_class):
        for w in reversed(wnids):  # annotation order is not class order in the real file
            _save(solid[w], folder / "val" / "images" / f"val_{k}.JPEG", "JPEG")
            rows.append(f"val_{k}.JPEG\t{w}\t0\t0\t{size - 1}\t{size - 1}")
            y_val.append(order.index(w))
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    _save(solid[wnids[0]], folder / "test" / "images" / "test_0.JPEG", "JPEG")
    return {"root": Path(root), "folder": folder, "classes": order, "y_val": np.array(y_val)}


# ---------------------------------------------------------------- npz

def write_npz(path: Path, num_classes: int = 4, train_per_class: int = 5, test_per_class: int = 2,
              shape: tuple[int, ...] = (8, 8, 3), dtype=np.uint8, seed: int = 0) -> dict:
    """np.savez with x_train, y_train, x_test, y_test. uint8 images may be N x H x W x C."""
    rng = _rng(seed)
    out = {"path": Path(path)}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        y = labels_per_class(num_classes, per_class, seed + (split == "test"))
        if dtype == np.uint8:
            x = rng.randint(0, 256, size=(len(y), *shape)).astype(np.uint8)
        else:
            x = rng.randn(len(y), *shape).astype(dtype)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    np.savez(path, x_train=out["x_train"], y_train=out["y_train"], x_test=out["x_test"], y_test=out["y_test"])
    return out
