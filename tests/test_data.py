"""Datasets -> class-incremental tasks. The torchvision-format loaders read fixtures written in
the real on-disk formats (tests/fixtures.py), offline."""
import numpy as np
import pytest
import torch

from fixtures import (class_colour, write_cifar10, write_cifar100, write_fashion_mnist, write_image_folder,
                      write_mnist, write_npz, write_tiny_imagenet)
from gradmix_tune.config import ConfigError, load_config
from gradmix_tune.augment import augment_batch
from gradmix_tune.data import STATS, class_order, load_benchmark, split_classes


def bench(*sets):
    return load_benchmark(load_config(None, list(sets)))


def assert_split_is_class_incremental(b, num_classes):
    flat = [c for t in b.task_classes for c in t]
    assert sorted(flat) == list(range(num_classes))  # every class, each exactly once
    assert len(set(flat)) == len(flat)
    for t, classes in enumerate(b.task_classes):
        for split in ("train", "test"):
            s = b.train if split == "train" else b.test
            idx = b.task_indices(split, t)
            assert len(idx) > 0
            assert set(s.y[idx].tolist()) == set(classes)
            # and nothing of this task's classes is left outside its indices
            assert int(torch.isin(s.y, torch.tensor(classes)).sum()) == len(idx)


# ---------------------------------------------------------------- task split

def test_digits_tasks_have_disjoint_classes_covering_all_classes():
    b = bench("data.tasks=5")
    assert b.num_tasks == 5 and b.num_classes == 10
    assert all(len(t) == 2 for t in b.task_classes)
    assert_split_is_class_incremental(b, 10)
    assert b.input_shape == (1, 8, 8)
    assert b.train.y.dtype == torch.int64 and b.train.x.dtype == torch.float32


def test_uneven_split_sizes_differ_by_at_most_one():
    b = bench("data.tasks=3")
    assert [len(t) for t in b.task_classes] == [4, 3, 3]
    assert_split_is_class_incremental(b, 10)
    assert split_classes(list(range(7)), 7) == [[c] for c in range(7)]


def test_class_order_follows_the_seed():
    a = bench("data.class_order_seed=1").task_classes
    assert a == bench("data.class_order_seed=1").task_classes  # same seed, same order
    orders = {tuple(c for t in bench(f"data.class_order_seed={s}").task_classes for c in t) for s in range(4)}
    assert len(orders) == 4  # different seeds, different orders
    assert [c for t in a for c in t] == class_order(10, 1)


def test_explicit_class_order_is_used_as_given():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    b = bench(f"data.class_order={order}", "data.class_order_seed=3")  # the explicit list wins
    assert b.task_classes == [[9, 8], [7, 6], [5, 4], [3, 2], [1, 0]]


def test_explicit_class_order_may_use_a_subset_of_the_classes():
    b = bench("data.class_order=[3, 1, 4, 0]", "data.tasks=2")
    assert b.task_classes == [[3, 1], [4, 0]]
    assert set(b.train.y[b.task_indices("train", 1)].tolist()) == {4, 0}


def test_class_order_with_a_class_the_dataset_lacks_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        bench("data.class_order=[0, 1, 12]", "data.tasks=2")
    assert "data.class_order" in str(e.value) and "12" in str(e.value) and "0..9" in str(e.value)


def test_per_class_subsets_keep_the_first_n_of_each_class():
    full = bench()
    b = bench("data.train_per_class=7", "data.test_per_class=3")
    assert torch.bincount(b.train.y).tolist() == [7] * 10
    assert torch.bincount(b.test.y).tolist() == [3] * 10
    first7 = full.train.x[torch.nonzero(full.train.y == 4).flatten()[:7]]
    assert torch.equal(b.train.x[b.train.y == 4], first7)


def test_digits_split_is_fixed_and_normalised():
    raw = bench("data.normalize=false")
    assert raw.train.x.min() >= 0 and raw.train.x.max() <= 1
    assert len(raw.train.y) + len(raw.test.y) == 1797  # sklearn's digits
    norm = bench()
    assert abs(float(norm.train.x.mean())) < 1e-4 and abs(float(norm.train.x.std()) - 1) < 1e-3
    assert torch.equal(raw.test.y, norm.test.y)


# ---------------------------------------------------------------- torchvision formats, offline

@pytest.mark.parametrize("name,writer,folder", [("mnist", write_mnist, "MNIST"),
                                                ("fashion_mnist", write_fashion_mnist, "FashionMNIST")])
def test_mnist_idx_files_round_trip(tmp_path, name, writer, folder):
    d = writer(tmp_path / "data")
    assert (tmp_path / "data" / folder / "raw" / "train-images-idx3-ubyte").is_file()
    common = [f"data.name={name}", f"data.root={tmp_path / 'data'}", "data.download=false"]
    b = bench(*common, "data.normalize=false")
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert b.train.x.shape == (60, 1, 28, 28) and b.test.x.shape == (30, 1, 28, 28)
    assert torch.equal(b.train.y, torch.from_numpy(d["y_train"]).long())
    assert torch.equal(b.test.y, torch.from_numpy(d["y_test"]).long())
    assert torch.equal((b.train.x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(d["x_train"]))
    assert torch.equal((b.test.x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(d["x_test"]))
    assert_split_is_class_incremental(b, 10)
    # with normalisation: the published statistics, undone exactly
    n = bench(*common)
    (mean,), (std,) = STATS[name]
    assert n.mean == (mean,) and n.std == (std,)
    torch.testing.assert_close(n.train.x * std + mean, b.train.x, atol=1e-6, rtol=0)


def test_cifar10_python_batches_round_trip(tmp_path):
    d = write_cifar10(tmp_path / "data")
    common = ["data.name=cifar10", f"data.root={tmp_path / 'data'}", "data.download=false"]
    b = bench(*common, "data.normalize=false")
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert b.train.x.shape == (100, 3, 32, 32) and b.test.x.shape == (30, 3, 32, 32)
    assert torch.equal(b.train.y, torch.from_numpy(d["y_train"]).long())
    assert torch.equal(b.test.y, torch.from_numpy(d["y_test"]).long())
    # 'data' rows are R, G, B planes: pixel (c, i, j) of sample n is data[n, 1024 c + 32 i + j]
    assert torch.equal((b.train.x * 255).round().to(torch.uint8), torch.from_numpy(d["x_train"]))
    assert torch.equal((b.test.x * 255).round().to(torch.uint8), torch.from_numpy(d["x_test"]))
    n = bench(*common)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS["cifar10"])
    torch.testing.assert_close(n.train.x * std + mean, b.train.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(n.test.x * std + mean, b.test.x, atol=1e-6, rtol=0)


def test_cifar100_fine_labels_round_trip(tmp_path):
    d = write_cifar100(tmp_path / "data")
    b = bench("data.name=cifar100", f"data.root={tmp_path / 'data'}", "data.download=false",
              "data.normalize=false", "data.tasks=10")
    assert b.num_classes == 100 and b.num_tasks == 10
    assert all(len(t) == 10 for t in b.task_classes)
    assert torch.equal(b.train.y, torch.from_numpy(d["y_train"]).long())  # fine, not coarse labels
    assert torch.equal((b.test.x * 255).round().to(torch.uint8), torch.from_numpy(d["x_test"]))
    assert_split_is_class_incremental(b, 100)


def test_image_folder_round_trip(tmp_path):
    d = write_image_folder(tmp_path / "imgs", size=16)
    common = ["data.name=image_folder", f"data.path={d['folder']}", "data.tasks=3", "data.image_size=16"]
    b = bench(*common, "data.normalize=false")
    assert b.num_classes == 3 and b.input_shape == (3, 16, 16)
    assert torch.equal(b.train.y, torch.from_numpy(d["y_train"]).long())
    assert torch.equal(b.test.y, torch.from_numpy(d["y_test"]).long())
    assert torch.equal((b.train.x * 255).round().to(torch.uint8), torch.from_numpy(d["x_train"]))
    assert torch.equal((b.test.x * 255).round().to(torch.uint8), torch.from_numpy(d["x_test"]))
    # no published statistics: the training set's own per-channel mean / std
    n = bench(*common)
    torch.testing.assert_close(n.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.train.x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_image_folder_with_val_dir_and_resizing(tmp_path):
    d = write_image_folder(tmp_path / "imgs", size=16, test_dir="val")
    b = bench("data.name=image_folder", f"data.path={d['folder']}", "data.tasks=3", "data.image_size=8",
              "data.normalize=false")
    assert b.train.x.shape == (9, 3, 8, 8) and b.test.x.shape == (6, 3, 8, 8)
    assert torch.equal(b.test.y, torch.from_numpy(d["y_test"]).long())


def test_tiny_imagenet_val_annotations_give_the_labels(tmp_path):
    d = write_tiny_imagenet(tmp_path / "data")
    b = bench("data.name=tiny_imagenet", f"data.root={tmp_path / 'data'}", "data.tasks=3", "data.normalize=false")
    assert b.num_classes == 3 and b.input_shape == (3, 64, 64)
    assert b.train.x.shape[0] == 6 and b.test.x.shape[0] == 6
    assert torch.equal(b.test.y, torch.from_numpy(d["y_val"]).long())
    # every image is its class's solid colour (JPEG: within a few levels)
    for split in (b.train, b.test):
        for x, y in zip(split.x, split.y.tolist()):
            colour = torch.tensor(class_colour(y), dtype=torch.float32).view(3, 1, 1) / 255
            assert float((x - colour).abs().max()) <= 4 / 255


def test_npz_images_nhwc_uint8_round_trip(tmp_path):
    d = write_npz(tmp_path / "d.npz", shape=(8, 8, 3))
    b = bench("data.name=npz", f"data.path={d['path']}", "data.tasks=2", "data.normalize=false")
    assert b.num_classes == 4 and b.input_shape == (3, 8, 8)  # NHWC -> NCHW
    expect = torch.from_numpy(d["x_train"]).permute(0, 3, 1, 2)
    assert torch.equal((b.train.x * 255).round().to(torch.uint8), expect)
    assert torch.equal(b.test.y, torch.from_numpy(d["y_test"]).long())


def test_npz_float_vectors_round_trip(tmp_path):
    d = write_npz(tmp_path / "v.npz", shape=(5,), dtype=np.float32, num_classes=3)
    common = ["data.name=npz", f"data.path={d['path']}", "data.tasks=3"]
    b = bench(*common, "data.normalize=false")
    assert b.input_shape == (5,)
    assert torch.equal(b.train.x, torch.from_numpy(d["x_train"]))  # floats are kept as they are
    n = bench(*common)
    (m,), (s,) = n.mean, n.std
    torch.testing.assert_close(n.test.x * s + m, b.test.x, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- missing data

@pytest.mark.parametrize("name,expected", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                           ("cifar10", "cifar-10-batches-py"),
                                           ("cifar100", "cifar-100-python")])
def test_missing_dataset_without_download_says_where_to_put_the_files(tmp_path, name, expected):
    with pytest.raises(ConfigError) as e:
        bench(f"data.name={name}", f"data.root={tmp_path}", "data.download=false")
    msg = str(e.value)
    assert str(tmp_path / expected) in msg
    assert "data.root" in msg and "put " in msg and "GRADMIX_DATA_ROOT" in msg


def test_missing_image_folder_and_npz_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no train/ folder"):
        bench("data.name=image_folder", f"data.path={tmp_path / 'nope'}", "data.tasks=2")
    with pytest.raises(ConfigError, match="file not found"):
        bench("data.name=npz", f"data.path={tmp_path / 'nope.npz'}", "data.tasks=2")


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "envroot")
    monkeypatch.setenv("GRADMIX_DATA_ROOT", str(tmp_path / "envroot"))
    b = bench("data.name=mnist", "data.download=false")
    assert b.train.x.shape == (60, 1, 28, 28)


# ---------------------------------------------------------------- augmentation

def test_augment_keeps_shape_and_only_moves_pixels():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((64, 3, 8, 8), 0.7)
    out = augment_batch(x, gen, pad=4)
    assert out.shape == x.shape
    # a constant image stays constant except for the zero-padded border the crop brought in
    assert bool(((out == 0) | (out == x)).all())
    inside = out[:, 0] != 0
    for m in inside:  # the kept part is one rectangle whose size matches a shift of <= pad
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        assert int(m.sum()) == len(rows) * len(cols)
        assert len(rows) >= 4 and len(cols) >= 4
        assert torch.equal(rows, torch.arange(int(rows[0]), int(rows[-1]) + 1))
    assert int((~inside).any(2).any(1).sum()) > 48  # almost every crop is shifted (unshifted: p = 1/81)
    assert torch.equal(out[:, 0], out[:, 1])  # channels move together


def test_augment_without_padding_is_identity_or_horizontal_flip():
    gen = torch.Generator().manual_seed(1)
    x = torch.arange(32 * 2 * 5 * 6, dtype=torch.float32).view(32, 2, 5, 6)
    out = augment_batch(x, gen, pad=0)
    flipped = 0
    for a, b in zip(x, out):
        assert torch.equal(b, a) or torch.equal(b, a.flip(2))
        flipped += torch.equal(b, a.flip(2))
    assert 4 < flipped < 28  # flips happen about half the time


def test_augment_values_come_from_the_input_and_repeat_with_the_seed():
    x = torch.randn(16, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(5))
    for a, b in zip(x, out):
        vals = set(a.flatten().tolist()) | {0.0}
        assert set(b.flatten().tolist()) <= vals
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(6)))
