"""Store conventions: the tracking URI, artifact root, HTTP limits, value limits, method names,
error kinds; and what importing tracking/ and report/ costs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

from gradmix_tune.tracking import store
from gradmix_tune.tracking.store import (PARAM_MAX, TAG_MAX, artifact_root, dataset_input, http_limits, method_of,
                                         param_value, question_of, resolve_tracking_uri, study_info, tag_value)


def test_resolve_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert resolve_tracking_uri() == "http://h:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_packages_import_neither_ray_nor_mlflow_nor_matplotlib():
    code = ("import sys, gradmix_tune.tracking, gradmix_tune.report, gradmix_tune.figures, gradmix_tune.cli as c; "
            "c.build_parser(); print(sorted(m for m in ('ray', 'mlflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sqlite_artifacts_go_beside_the_database(tmp_path):
    assert artifact_root(f"sqlite:///{tmp_path}/m.db") == (tmp_path / "mlruns").as_uri()
    assert artifact_root("sqlite:///m.db") == (Path.cwd() / "mlruns").as_uri()
    assert artifact_root("http://h:5000") is None


def test_http_limits_set_defaults_only_for_the_block_and_keep_the_users(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    with http_limits():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"


def test_method_of_a_trial():
    from gradmix_tune.config import from_dict

    def cfg(**sections):
        return from_dict(sections).to_dict()

    assert method_of({"method": "gradmix"}, {"method": "er"}) == "gradmix", "the swept method names the arm"
    assert method_of({}, cfg()) == "er", "a default run is ER, not 'none'"
    assert method_of({}, cfg(memory={"size": 0})) == "finetune"
    assert method_of({}, cfg(mixing={"selection": "random"})) == "er_mixup"
    assert method_of({}, cfg(mixing={"selection": "gradient"})) == "gradmix"
    assert method_of({}, cfg(mixing={"selection": "gradient", "op": "cutmix"})) == "gradmix_cutmix"
    assert method_of({}, cfg(method="er_randaugment")) == "er_randaugment"
    assert method_of({}, cfg(mixing={"selection": "gradient_sample"})) == "gradient_sample", "no preset: selection"
    assert method_of({}, {"method": "er_mixup"}) == "er_mixup"  # a partial config: its method
    assert method_of({}, {}) == "unknown"


def test_the_question_and_the_dataset_of_a_run():
    assert question_of("# Question: does it help?\n# 3 x 2 = 6 runs\nname: x\n") == "does it help?"
    info = {"name": "digits", "source": "sklearn.datasets.load_digits", "train_size": 1440, "test_size": 357,
            "input_shape": [1, 8, 8], "num_classes": 10, "tasks": 5, "class_order": [2, 8, 4, 9, 1, 6, 7, 3, 0, 5],
            "task_classes": [[2, 8], [4, 9], [1, 6], [7, 3], [0, 5]]}
    d = dataset_input(info)
    assert d["name"] == "digits" and d["source_type"] == "code" and len(d["digest"]) == 12
    assert json.loads(d["profile"])["class_order"] == info["class_order"]
    assert json.loads(d["profile"])["train_size"] == 1440
    assert json.loads(json.loads(d["schema"])["mlflow_tensorspec"]["features"])[0]["tensor-spec"]["shape"] == \
        [-1, 1, 8, 8]
    assert dataset_input(dict(info, class_order=[0]))["digest"] != d["digest"], "another class order: another digest"


def test_values_are_cut_to_mlflows_limits():
    assert param_value([1, 2]) == "[1, 2]" and param_value({"a": 1}) == '{"a": 1}' and param_value(0.5) == "0.5"
    long = param_value("x" * (PARAM_MAX + 10))
    assert len(long) == PARAM_MAX and long.endswith("...")
    assert len(tag_value("y" * (TAG_MAX + 1))) == TAG_MAX


def test_study_info_from_an_object_or_a_dict():
    obj = types.SimpleNamespace(name="s", grid={"a": [1]}, seeds=[0, 1])
    info = study_info(obj)
    assert info == study_info({"name": "s", "grid": {"a": [1]}, "seeds": [0, 1]})
    assert (info["experiment"], info["metric"], info["mode"], info["raw_text"]) == ("s", "final_avg_acc", "max", "")


def test_transient_and_permanent_errors():
    class Refused(Exception):
        error_code = "INVALID_PARAMETER_VALUE"

    assert store.is_network_error(ConnectionError("x")) and not store.is_permanent(ConnectionError("x"))
    assert store.is_network_error(RuntimeError("sqlite3: database is locked"))
    assert store.is_permanent(Refused("bad value")) and not store.is_network_error(Refused("bad value"))
    assert len(store.short(RuntimeError("z" * 1000))) == 300
