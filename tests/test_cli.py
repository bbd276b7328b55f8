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
