"""The published studies (reports/<study>/summary.json, README "Results") re-make their numbers.

For each committed summary.json, the first per-seed entry with a number is re-run from its
`reproduce` command (a `gradmix-tune run` line, data from $GRADMIX_DATA_ROOT) and must print the
same final_avg_acc, exactly: same config, seed and CPU thread count -> the same floats on CPU.
Needs real MNIST: $GRADMIX_DATA_ROOT, else ../shared/data next to the repository; skipped without it.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = sorted((ROOT / "reports").glob("*/summary.json"))
MNIST_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


def _data_root() -> Path:
    env = os.environ.get("GRADMIX_DATA_ROOT")
    return Path(env) if env else (ROOT.parent / "shared" / "data").resolve()


def _has_mnist(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES)


def _published() -> list:
    out = []
    for path in SUMMARIES:
        s = json.loads(path.read_text())
        entries = [e for a in s.get("arms", []) for e in a.get("per_seed", [])  # the first with a number
                   if isinstance(e, dict) and e.get("reproduce") and e.get(s["test_metric"]) is not None]
        if entries:
            out.append(pytest.param(s["test_metric"], entries[0], id=path.parent.name))
    return out


def test_every_published_entry_has_a_reproduce_command():
    for path in SUMMARIES:
        s = json.loads(path.read_text())
        for a in s.get("arms", []):
            for e in a.get("per_seed", []):
                if not isinstance(e, dict):  # a report of a study outside the published set
                    continue
                assert e["reproduce"].startswith("gradmix-tune run --no-track"), (path, a["arm"], e)
                assert "train.threads=" in e["reproduce"] and "data.root" not in e["reproduce"], e
                assert s["test_metric"] in e and "seed" in e, e


@pytest.mark.integration
@pytest.mark.parametrize("metric,entry", _published())
def test_published_trial_reproduces_exactly(metric, entry, tmp_path):
    root = _data_root()
    if not _has_mnist(root):
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw: set GRADMIX_DATA_ROOT to re-run published trials")
    argv = shlex.split(entry["reproduce"].replace('"$GRADMIX_DATA_ROOT"', shlex.quote(str(root))))
    assert argv[:2] == ["gradmix-tune", "run"], entry["reproduce"]
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "gradmix_tune", *argv[1:], "--json", str(out)]
    env = {**os.environ, "GRADMIX_DATA_ROOT": str(root)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())[metric]
    assert got == entry[metric], f"{entry['reproduce']}: got {got!r}, published {entry[metric]!r}"
