"""The synthetic studies of report_store.py, written once per session into a real sqlite MLflow store."""
from __future__ import annotations

import types

import pytest
from report_store import DIGITS, DIGITS_YAML, MNIST, MNIST_YAML, write_study


@pytest.fixture(scope="session")
def syn_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    digits = write_study(uri, "syn_digits", DIGITS, DIGITS_YAML, [0, 1, 2], failed=("gradmix", 100, 7),
                         artifact_root=root / "artifacts")
    mnist = write_study(uri, "syn_mnist", MNIST, MNIST_YAML, [0, 1, 2, 3, 4], epochs=2,
                        artifact_root=root / "artifacts")
    return types.SimpleNamespace(uri=uri, root=root, digits_parent=digits, mnist_parent=mnist)
