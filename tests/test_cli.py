"""The CLI's own mistakes: each gets one line with the fix and exit code 2."""
import subprocess
import sys

import pytest

from gradmix_tune.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("gradmix-tune ")


@pytest.mark.parametrize("word, near", [("runn", "run"), ("sweeep", "sweep"), ("reprot", "report")])
def test_mistyped_command_gets_did_you_mean(capsys, word, near):
    assert main([word]) == 2
    err = capsys.readouterr().err
    assert f"did you mean '{near}'?" in err and "file not found" not in err
    assert err.count("\n") == 1


def test_a_yaml_path_is_still_a_study(capsys, tmp_path):
    assert main([str(tmp_path / "missing.yaml"), "--dry-run"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["run", "--set", "memory.size", "200"],
                                  ["sweep", "ablations/quickstart.yaml", "--set", "train.epochs", "2"]])
def test_set_without_equals_gets_the_fix(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    key, value = argv[-2], argv[-1]
    assert f"--set {key}={value}" in err and "file not found" not in err


def test_every_help_shows_defaults():
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices  # argparse keeps no public handle on them
    assert "(default: 5000)" in subs["ui"].format_help()
    assert "(default: 127.0.0.1)" in subs["ui"].format_help()
    assert "(default: reports)" in subs["sweep"].format_help()
    assert "(default: gradmix-runs)" in subs["run"].format_help()


def test_help_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "gradmix_tune", "ui", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--port" in out.stdout and "--host" in out.stdout


def test_tracking_replay_mistakes_get_their_fix(capsys, tmp_path):
    assert main(["trackin"]) == 2
    assert "did you mean 'tracking'?" in capsys.readouterr().err
    assert main(["tracking"]) == 2  # no action: the help, which names `replay`
    assert "replay" in capsys.readouterr().out
    assert main(["tracking", "replay", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "mlflow-unsent" in err
    (tmp_path / "unsent.jsonl").write_text("not json\n")
    assert main(["tracking", "replay", str(tmp_path / "unsent.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an unsent.jsonl file" in err
    assert main(["tracking", "replay", str(tmp_path / "empty_dir_is_not_here")]) == 2
    (tmp_path / "d").mkdir()
    assert main(["tracking", "replay", str(tmp_path / "d")]) == 2
    assert "no unsent.jsonl here" in capsys.readouterr().err


def test_a_dry_run_of_a_study_without_its_data_says_where_it_looked(capsys, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nbase: {data: {name: cifar10, download: false}}\ngrid: {method: [er, gradmix]}\n")
    assert main([str(study), "--data-root", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(study) in err and "key 'data.root'" in err
    assert str(tmp_path / "cifar-10-batches-py") in err and "--data-root PATH" in err
