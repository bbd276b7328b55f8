"""YAML -> typed config, and every way it can go wrong: each error is a ConfigError whose message
names the file, the key and a fix, raised before anything expensive starts."""
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmix_tune.config import (CHOICES, METHODS, ConfigError, ExperimentConfig, load_config,
                                 parse_overrides)

EXAMPLE = """\
# a README-style experiment
seed: 3
method: er
data: {name: digits, tasks: 5, class_order_seed: 1}
model: {name: mlp, hidden: [64, 32]}
train: {epochs: 2, batch_size: 10, lr: 0.05, optimizer: sgd}
memory: {size: 200, policy: class_balanced, replay_batch_size: 10}
"""


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def config_error(path=None, sets=None, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(path, sets, **kw)
    return e.value


def assert_message(err: ConfigError, where: str, key: str | None, *fix: str):
    msg = str(err)
    assert msg.startswith(str(where)), msg  # the file (or --set) comes first
    if key:
        assert f"'{key}'" in msg, msg
    assert "Fix: " in msg, msg
    for f in fix:
        assert f in msg, msg
    assert "\n" not in msg  # one line


# ---------------------------------------------------------------- the happy path

def test_yaml_file_builds_the_typed_config(tmp_path):
    cfg = load_config(write(tmp_path, "exp.yaml", EXAMPLE))
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.seed == 3 and cfg.data.class_order_seed == 1
    assert cfg.model.hidden == [64, 32] and cfg.train.epochs == 2 and cfg.train.lr == 0.05
    assert cfg.memory.policy == "class_balanced"
    assert cfg.mixing.selection == "none"  # from the `er` preset
    assert cfg.train.momentum == 0.0  # untouched keys keep their defaults
    flat = cfg.flat()
    assert flat["memory.size"] == 200 and flat["model.hidden"] == [64, 32]
    assert set(flat) == set(ExperimentConfig().flat())


def test_no_file_means_the_documented_defaults():
    cfg = load_config()
    assert (cfg.data.name, cfg.model.name, cfg.memory.size, cfg.mixing.selection) == ("digits", "mlp", 500, "none")


def test_empty_file_means_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "e.yaml", "# nothing yet\n")) == load_config()


def test_whole_numbers_written_as_floats_are_accepted_and_1e_notation_reads_as_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "x.yaml", "memory: {size: 200.0}\ntrain: {lr: 1e-3}\n"))
    assert cfg.memory.size == 200 and isinstance(cfg.memory.size, int)
    assert cfg.train.lr == 0.001  # PyYAML reads 1e-3 as a string; the float field takes it


# ---------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("yaml_text,key,suggestion", [
    ("memory: {szie: 200}", "memory.szie", "memory.size"),
    ("memory:\n  replay_batch: 5\n", "memory.replay_batch", "memory.replay_batch_size"),
    ("seeed: 1", "seeed", "seed"),
    ("memroy: {size: 3}", "memroy", "memory"),
    ("mixing: {treshold: 0.1}", "mixing.treshold", "mixing.threshold"),
    ("train: {lr: 0.1, epoch: 3}", "train.epoch", "train.epochs"),
])
def test_unknown_key_names_file_key_and_a_did_you_mean(tmp_path, yaml_text, key, suggestion):
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key, f"did you mean '{suggestion}'?")


def test_unknown_key_with_nothing_close_lists_the_valid_keys(tmp_path):
    p = write(tmp_path, "exp.yaml", "memory: {qqqqqqqqqqqqqqq: 1}")
    assert_message(config_error(p), p, "memory.qqqqqqqqqqqqqqq", "valid keys:", "memory.size", "memory.policy")


# ---------------------------------------------------------------- wrong types

@pytest.mark.parametrize("yaml_text,key,fix", [
    ("memory: {size: '200'}", "memory.size", "whole number"),  # string for int
    ("memory: {size: two hundred}", "memory.size", "whole number"),
    ("memory: {size: true}", "memory.size", "whole number"),  # bool for int
    ("memory: {size: 2.5}", "memory.size", "whole number"),
    ("data: {tasks: [5]}", "data.tasks", "whole number"),
    ("model: {name: [mlp]}", "model.name", "quote"),  # list for str
    ("data: {root: 5}", "data.root", "quote"),
    ("train: {lr: fast}", "train.lr", "number"),
    ("train: {lr: true}", "train.lr", "number"),
    ("data: {augment: 1}", "data.augment", "true"),  # int for bool
    ("data: {normalize: 'no way'}", "data.normalize", "true"),
    ("model: {hidden: 100}", "model.hidden", "[1, 2]"),
    ("model: {hidden: [100, big]}", "model.hidden[1]", "whole number"),
    ("data: {class_order: 3}", "data.class_order", "data.class_order"),
    ("mixing: {refresh_every: 1.5}", "mixing.refresh_every", "mixing.refresh_every"),
    ("mixing: {mix_rate: [0.5]}", "mixing.mix_rate", "mixing.mix_rate"),
    ("memory: 500", "memory", "memory: {...}"),  # a value where a section belongs
    ("seed: null", "seed", "whole number"),
])
def test_wrong_type_names_file_key_and_fix(tmp_path, yaml_text, key, fix):
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key, fix)


# ---------------------------------------------------------------- impossible values

@pytest.mark.parametrize("yaml_text,key,fix", [
    ("memory: {size: -1}", "memory.size", "memory.size >= 0"),
    ("memory: {replay_batch_size: -5}", "memory.replay_batch_size", ">= 0"),
    ("memory: {size: 5, replay_batch_size: 10}", "memory.size", "raise memory.size"),
    ("data: {tasks: 11}", "data.tasks", "at most 10 tasks"),
    ("data: {name: cifar100, tasks: 101}", "data.tasks", "at most 100 tasks"),
    ("data: {class_order: [2, 0, 1], tasks: 4}", "data.tasks", "at most 3 tasks"),
    ("data: {class_order: [1, 2, 1]}", "data.class_order", "each class once"),
    ("data: {tasks: 0}", "data.tasks", ">= 1"),
    ("train: {epochs: 0}", "train.epochs", ">= 1"),
    ("train: {batch_size: -10}", "train.batch_size", ">= 1"),
    ("train: {lr: 0}", "train.lr", "0.1"),
    ("train: {lr: -0.1}", "train.lr", "0.1"),
    ("train: {momentum: -0.9}", "train.momentum", ">= 0"),
    ("train: {threads: -2}", "train.threads", ">= 0"),
    ("mixing: {alpha: 0}", "mixing.alpha", "mixing.alpha: 1.0"),
    ("mixing: {probes_per_class: 0}", "mixing.probes_per_class", ">= 1"),
    ("mixing: {mix_rate: 1.5}", "mixing.mix_rate", "[0, 1]"),
    ("mixing: {mix_rate: sometimes}", "mixing.mix_rate", "'matched'"),
    ("mixing: {refresh_every: 0}", "mixing.refresh_every", "'epoch'"),
    ("mixing: {refresh_every: often}", "mixing.refresh_every", "'epoch'"),
    ("data: {name: npz}", "data.path", "data.path"),
    ("data: {name: image_folder}", "data.path", "folder"),
])
def test_impossible_value_names_file_key_and_fix(tmp_path, yaml_text, key, fix):
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key, fix)


@pytest.mark.parametrize("yaml_text,key,suggestion", [
    ("mixing: {selection: gradmixx}", "mixing.selection", "gradient"),
    ("model: {name: resnet-18}", "model.name", "resnet18"),
    ("data: {name: cifar-10}", "data.name", "cifar10"),
    ("memory: {policy: resevoir}", "memory.policy", "reservoir"),
    ("train: {optimizer: adamw}", "train.optimizer", "adam"),
    ("augment: {policy: rand_augment}", "augment.policy", "randaugment"),
    ("method: gradmx", "method", "gradmix"),
    ("method: er_mix_up", "method", "er_mixup"),
])
def test_bad_choice_gets_a_did_you_mean(tmp_path, yaml_text, key, suggestion):
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key, f"did you mean '{suggestion}'?")


def test_bad_choice_with_nothing_close_lists_the_options(tmp_path):
    p = write(tmp_path, "exp.yaml", "mixing: {op: zzz}")
    assert_message(config_error(p), p, "mixing.op", "one of: mixup, cutmix")
    p = write(tmp_path, "m.yaml", "method: zzzzzz")
    assert_message(config_error(p), p, "method", "one of:", "gradmix", "er_mixup")


@pytest.mark.parametrize("yaml_text,key", [
    ("train: {lr: .nan}", "train.lr"),
    ("train: {lr: .inf}", "train.lr"),
    ("train: {lr: inf}", "train.lr"),  # a string, converted to a float
    ("mixing: {alpha: .inf}", "mixing.alpha"),
    ("train: {momentum: .nan}", "train.momentum"),
    ("mixing: {threshold: .nan}", "mixing.threshold"),
    pytest.param("train: {lr: 1" + "0" * 400 + "}", "train.lr", id="lr: 10**400"),  # OverflowError in float()
    pytest.param("mixing: {mix_rate: 1" + "0" * 400 + "}", "mixing.mix_rate", id="mix_rate: 10**400"),
])
def test_non_finite_numbers_are_rejected(tmp_path, yaml_text, key):
    # nan passes every `<= 0` check and trains on garbage (or dies as a diverged run, exit 1)
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key)


@pytest.mark.parametrize("yaml_text,key", [
    ("model: {dropout: 1.5}", "model.dropout"),  # torch: ValueError at model build
    ("model: {dropout: -0.1}", "model.dropout"),
    ("model: {hidden: [100, -3]}", "model.hidden"),  # torch: RuntimeError, negative dimension
    ("model: {nf: 0}", "model.nf"),
    ("data: {class_order_seed: -1}", "data.class_order_seed"),  # numpy: ValueError at data load
    ("train: {device: gpu}", "train.device"),  # torch: RuntimeError at Learner start
])
def test_values_that_would_crash_the_run_later_are_rejected_up_front(tmp_path, yaml_text, key):
    p = write(tmp_path, "exp.yaml", yaml_text)
    assert_message(config_error(p), p, key)


# ---------------------------------------------------------------- YAML itself

def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "bad.yaml", "data:\n  name: digits\n  tasks: [1, 2\nmodel: {name: mlp}\n")
    err = config_error(p)
    assert_message(err, p, None, "fix the YAML syntax")
    assert "invalid YAML at line" in str(err)


def test_tab_indentation_is_a_yaml_error(tmp_path):
    p = write(tmp_path, "tab.yaml", "data:\n\tname: digits\n")
    assert "line 2" in str(config_error(p))


def test_duplicate_key_names_file_key_and_line(tmp_path):
    p = write(tmp_path, "dup.yaml", "memory:\n  size: 200\n  policy: reservoir\n  size: 500\n")
    err = config_error(p)
    assert_message(err, p, "size", "keep one")
    assert "duplicate key (line 4)" in str(err)


def test_duplicate_top_level_section(tmp_path):
    p = write(tmp_path, "dup.yaml", "train: {lr: 0.1}\nmemory: {size: 3}\ntrain: {epochs: 2}\n")
    assert_message(config_error(p), p, "train", "duplicate key (line 3)")


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    assert_message(config_error(p), p, None, "file not found", "check the path")


def test_top_level_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "list.yaml", "- memory.size: 3\n")
    assert_message(config_error(p), p, None, "mapping")


def test_unhashable_key_is_a_config_error(tmp_path):
    # `? [a, b]` is a valid YAML complex key; the duplicate-key check must not crash on it
    p = write(tmp_path, "k.yaml", "? [memory, size]\n: 3\n")
    assert str(p) in str(config_error(p))


def test_file_that_is_not_utf8_text_is_a_config_error(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"data: {name: digits}\n\xff\xfe\x00junk\n")
    assert str(p) in str(config_error(p))


# ---------------------------------------------------------------- extends

def test_extends_chain_child_wins_and_sections_merge(tmp_path):
    write(tmp_path, "base.yaml", "data: {name: digits, tasks: 5}\nmemory: {size: 100, policy: reservoir}\nseed: 1\n")
    write(tmp_path, "mid.yaml", "extends: base.yaml\nmemory: {size: 300}\ntrain: {epochs: 3}\n")
    child = write(tmp_path, "exp.yaml", "extends: mid.yaml\nmemory: {size: 400}\nseed: 7\n")
    cfg = load_config(child)
    assert cfg.memory.size == 400 and cfg.seed == 7  # the child wins
    assert cfg.memory.policy == "reservoir" and cfg.data.tasks == 5  # the rest of base's sections stay
    assert cfg.train.epochs == 3  # the middle file's keys arrive


def test_extends_is_relative_to_the_including_file(tmp_path):
    write(tmp_path, "configs/base/common.yaml", "memory: {size: 123}\n")
    write(tmp_path, "configs/base/mnist.yaml", "extends: common.yaml\ndata: {name: mnist}\n")
    p = write(tmp_path, "configs/exp/run.yaml", "extends: ../base/mnist.yaml\n")
    cfg = load_config(p)  # the working directory is not configs/
    assert cfg.memory.size == 123 and cfg.data.name == "mnist"


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nseed: 1\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nseed: 2\n")
    err = config_error(tmp_path / "a.yaml")
    assert "circular extends" in str(err) and "'extends'" in str(err) and "remove the cycle" in str(err)
    self_loop = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert "circular extends" in str(config_error(self_loop))


def test_extends_missing_parent_names_both_files(tmp_path):
    p = write(tmp_path, "exp.yaml", "extends: nothere.yaml\n")
    err = config_error(p)
    assert_message(err, p, "extends", "check the path")
    assert str(tmp_path / "nothere.yaml") in str(err)


def test_extends_must_be_a_path(tmp_path):
    p = write(tmp_path, "exp.yaml", "extends: [a.yaml, b.yaml]\n")
    assert_message(config_error(p), p, "extends", "extends: base.yaml")


def test_extends_parent_syntax_error_names_the_parent(tmp_path):
    base = write(tmp_path, "base.yaml", "memory: {size: 3\n")
    p = write(tmp_path, "exp.yaml", "extends: base.yaml\n")
    assert str(config_error(p)).startswith(str(base))


def test_unknown_key_in_an_extended_file_names_that_file(tmp_path):
    base = write(tmp_path, "base.yaml", "memory: {szie: 200}\n")
    p = write(tmp_path, "exp.yaml", "extends: base.yaml\nseed: 1\n")
    assert_message(config_error(p), base, "memory.szie", "did you mean 'memory.size'?")


# ---------------------------------------------------------------- --set overrides

def test_set_overrides_parse_yaml_values():
    over = parse_overrides(["memory.size=200", "train.lr=1e-2", "data.augment=true", "model.hidden=[8, 4]",
                            "mixing.selection=gradient", "data.root=/tmp/a=b", "mixing.refresh_every=epoch"])
    assert over == {"memory": {"size": 200}, "train": {"lr": "1e-2"}, "data": {"augment": True, "root": "/tmp/a=b"},
                    "model": {"hidden": [8, 4]}, "mixing": {"selection": "gradient", "refresh_every": "epoch"}}
    cfg = load_config(None, ["memory.size=200", "train.lr=1e-2", "model.hidden=[8, 4]", "data.root=/tmp/a=b"])
    assert cfg.memory.size == 200 and cfg.train.lr == 0.01 and cfg.model.hidden == [8, 4]
    assert cfg.data.root == "/tmp/a=b"  # only the first '=' splits


def test_set_overrides_win_over_the_file_and_later_ones_win(tmp_path):
    p = write(tmp_path, "exp.yaml", EXAMPLE)
    cfg = load_config(p, ["memory.size=50", "train.epochs=4", "train.epochs=5", "data={name: digits, tasks: 2}"])
    assert cfg.memory.size == 50 and cfg.train.epochs == 5
    assert cfg.data.tasks == 2 and cfg.data.class_order_seed == 1  # a section merges into the file's
    assert cfg.memory.policy == "class_balanced"


def test_set_without_equals_sign():
    assert_message(config_error(None, ["memory.size"]), "--set", "memory.size", "KEY=VALUE", "memory.size=200")


def test_set_errors_name_set():
    assert_message(config_error(None, ["memory.szie=3"]), "--set", "memory.szie", "did you mean 'memory.size'?")
    assert_message(config_error(None, ["memory.size=lots"]), "--set", "memory.size", "whole number")
    assert_message(config_error(None, ["data.class_order=[1, 2"]), "--set", "data.class_order")


@pytest.mark.parametrize("sets", [["memory.szie=3"], ["memory.size=lots"]])
def test_set_errors_name_set_even_when_a_file_is_given(tmp_path, sets):
    # the key is not in the file: pointing at the file sends the user to the wrong place
    p = write(tmp_path, "exp.yaml", EXAMPLE)
    assert_message(config_error(p, sets), "--set", sets[0].split("=")[0])


def test_set_a_key_below_a_value_names_set():
    assert_message(config_error(None, ["memory=5", "memory.size=3"]), "--set", "memory.size")


def test_data_root_argument_sets_data_root(tmp_path):
    assert load_config(write(tmp_path, "e.yaml", EXAMPLE), data_root="/data/x").data.root == "/data/x"


# ---------------------------------------------------------------- method presets

def test_method_preset_fills_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, "g.yaml", "method: gradmix_cutmix\n"))
    assert cfg.mixing.selection == "gradient" and cfg.mixing.op == "cutmix"
    assert load_config(None, ["method=finetune"]).memory.size == 0


def test_explicit_keys_override_the_preset(tmp_path):
    cfg = load_config(write(tmp_path, "g.yaml", "method: gradmix\nmixing: {op: cutmix, alpha: 0.4}\n"))
    assert cfg.method == "gradmix" and cfg.mixing.selection == "gradient"
    assert cfg.mixing.op == "cutmix" and cfg.mixing.alpha == 0.4
    cfg = load_config(None, ["method=er_mixup", "mixing.op=cutmix"])
    assert (cfg.mixing.selection, cfg.mixing.op) == ("random", "cutmix")
    assert load_config(None, ["method=finetune", "memory.size=20"]).memory.size == 20


def test_every_preset_builds_a_valid_config():
    for m, keys in METHODS.items():
        flat = load_config(None, [f"method={m}"]).flat()
        assert {k: flat[k] for k in keys} == keys, m


def test_method_must_be_a_name(tmp_path):
    p = write(tmp_path, "m.yaml", "method: [er, gradmix]\n")
    assert_message(config_error(p), p, "method")


# ---------------------------------------------------------------- properties over the schema

FIELDS = {k: v for k, v in ExperimentConfig().flat().items()}


def _field_type(key: str):
    cls, parts = ExperimentConfig, key.split(".")
    for p in parts[:-1]:
        cls = typing.get_type_hints(cls)[p]
    return typing.get_type_hints(cls)[parts[-1]]


TYPES = {k: _field_type(k) for k in FIELDS}
SECTIONS = ("data", "model", "train", "memory", "mixing", "augment")

finite = dict(allow_nan=False, allow_infinity=False)
plain_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
pos = st.integers(1, 10_000)

# Valid values: by type, narrowed where validate() has a rule. Keys that are not listed get a
# strategy from their type (conservative: ints >= 1, floats in (0, 1)), so a new config key is
# covered the day it is added; a new key with a stricter rule needs an entry here.
VALID = {
    "method": st.sampled_from([""] + sorted(METHODS)),
    "seed": st.integers(0, 2**31 - 1),
    "data.name": st.sampled_from(["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet"]),
    "data.tasks": st.integers(1, 10),
    "data.class_order_seed": st.integers(0, 2**31 - 1),
    "data.class_order": st.none() | st.permutations(list(range(10))),
    "data.train_per_class": st.integers(0, 5000),
    "data.test_per_class": st.integers(0, 5000),
    "data.val_fraction": st.none() | st.floats(0.05, 0.5, **finite),
    "model.hidden": st.lists(st.integers(1, 1024), max_size=4),
    "model.dropout": st.floats(0, 0.9, **finite),
    "train.lr": st.floats(1e-6, 10, **finite),
    "train.momentum": st.floats(0, 0.99, **finite),
    "train.weight_decay": st.floats(0, 1, **finite),
    "train.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]),
    "train.threads": st.integers(0, 64),
    "train.max_tasks": st.integers(0, 1),  # at most data.tasks (>= 1 here)
    "memory.size": st.just(0) | st.integers(10, 100_000),
    "memory.replay_batch_size": st.integers(0, 10),
    "memory.retrieval_candidates": st.integers(10, 1000),
    "mixing.alpha": st.floats(1e-3, 10, **finite),
    "mixing.threshold": st.floats(-10, 10, **finite),
    "mixing.refresh_every": st.integers(1, 1000) | st.just("epoch"),
    "mixing.mix_rate": st.floats(0, 1, **finite) | st.just("matched"),
    "mixing.remix_kappa": st.floats(0, 10, **finite),
    "mixing.remix_tau": st.floats(0, 1, **finite),
}
for _k, _options in CHOICES.items():
    VALID.setdefault(_k, st.sampled_from(_options))
_BY_TYPE = {int: st.integers(1, 1000), float: st.floats(0.01, 0.99, **finite), bool: st.booleans(), str: plain_text,
            list[int]: st.lists(pos, max_size=4)}
for _k, _t in TYPES.items():
    VALID.setdefault(_k, _BY_TYPE.get(_t))
assert all(VALID[k] is not None for k in FIELDS), [k for k in FIELDS if VALID.get(k) is None]


def _not_a_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


scalars_text = plain_text.filter(_not_a_float)
lists = st.lists(st.integers() | plain_text, min_size=1, max_size=3)
dicts = st.dictionaries(plain_text.filter(bool), st.integers() | plain_text, min_size=1, max_size=2)
non_integral = st.floats().filter(lambda f: not f.is_integer())

WRONG = {
    int: st.booleans() | non_integral | plain_text | lists | dicts | st.none(),
    float: st.booleans() | scalars_text | lists | dicts | st.none(),
    bool: st.integers() | st.floats() | plain_text | lists | dicts | st.none(),
    str: st.integers() | st.floats() | st.booleans() | lists | dicts,
    list[int]: st.integers() | plain_text | st.booleans() | dicts | st.lists(st.booleans() | scalars_text, min_size=1, max_size=3),
    typing.Optional[list[int]]: st.integers() | plain_text | st.booleans() | dicts
    | st.lists(st.booleans() | scalars_text, min_size=1, max_size=3),
    typing.Optional[float]: st.booleans() | scalars_text | lists | dicts,
    typing.Union[int, str]: st.booleans() | non_integral | lists | dicts | st.none(),
    typing.Union[float, str]: st.booleans() | lists | dicts | st.none(),
    "section": st.integers() | st.floats() | st.booleans() | plain_text | lists,
}


def _wrong_for(key: str):
    if key in SECTIONS:
        return WRONG["section"]
    t = TYPES[key]
    if key == "method":  # a str, but "" (no preset) is falsy: keep to non-strings that are not ""
        return st.integers() | st.floats() | st.booleans() | lists | dicts
    return WRONG[t]


def as_set(key, value) -> str:
    """`--set KEY=VALUE` with VALUE written as YAML (so strings stay strings)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
    return f"{key}={text.removesuffix(chr(10)).removesuffix('...').strip()}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_valid_overrides_build_configs_that_contain_them(data):
    keys = data.draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=8), label="keys")
    values = {k: data.draw(VALID[k], label=k) for k in sorted(keys)}
    cfg = load_config(None, [as_set(k, v) for k, v in values.items()])
    flat = cfg.flat()
    for k, v in values.items():
        assert flat[k] == v, (k, flat[k], v)
        assert type(flat[k]) is type(v) or (isinstance(v, int) and isinstance(flat[k], float)) or v is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_wrong_typed_values_always_raise_config_error(data):
    key = data.draw(st.sampled_from(sorted(FIELDS) + list(SECTIONS)), label="key")
    value = data.draw(_wrong_for(key), label="value")
    with pytest.raises(ConfigError) as e:
        load_config(None, [as_set(key, value)])
    assert str(e.value).startswith("--set") and f"'{key}" in str(e.value)


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(sorted(FIELDS)), value=st.floats(allow_nan=True) | st.integers() | plain_text
       | st.booleans() | st.none() | lists | dicts)
def test_any_value_for_any_key_is_a_config_or_a_config_error(key, value):
    # never another exception type: no traceback for any input a user can type
    try:
        cfg = load_config(None, [as_set(key, value)])
    except ConfigError:
        return
    assert isinstance(cfg, ExperimentConfig)
