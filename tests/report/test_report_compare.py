"""`gradmix-tune report A B --compare`: one report over the synthetic studies that share arms."""
from __future__ import annotations

import json

import numpy as np
import pytest
from report_store import DIGITS, MNIST
from statsmodels.stats.multitest import multipletests

from gradmix_tune.cli import main


@pytest.fixture(scope="module")
def cmp(syn_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["report", "syn_digits", "syn_mnist", "--compare", "--tracking-uri", syn_store.uri,
                 "--out", str(out)]) == 0
    folder = out / "compare_syn_digits_syn_mnist"
    return {"dir": folder, "summary": json.loads((folder / "summary.json").read_text())["comparison"],
            "md": (folder / "report.md").read_text(), "tex": (folder / "table.tex").read_text()}


def test_the_table_has_the_shared_arms_per_study(cmp):
    s = cmp["summary"]
    assert s["studies"] == ["syn_digits", "syn_mnist"] and s["baseline"] == "er_mixup"  # the first study's
    assert set(s["shared_arms"]) == {f"method={m} memory.size=100" for m in ("er", "er_mixup", "gradmix")}
    assert s["only_in_some"] == [f"method={m} memory.size=200" for m in ("er", "er_mixup", "gradmix")]
    for row in s["table"]:
        m = row["arm"].split()[0].split("=")[1]
        d, n = row["per_study"]
        assert d["mean"] == pytest.approx(np.mean(DIGITS[(m, 100)]))
        assert n["mean"] == pytest.approx(np.mean(MNIST[(m, 100)]))
        assert row["aggregate"] == pytest.approx((d["mean"] + n["mean"]) / 2)
        assert row["agg_low"] < row["aggregate"] < row["agg_high"]
    lines = cmp["md"].splitlines()
    assert lines[0].startswith("# Comparison of studies") and lines[2] == "## Findings"
    assert "**0.750 ± 0.026**" in cmp["md"], "the best of a study in bold"
    assert r"\textbf{" in cmp["tex"] and r"\toprule" in cmp["tex"] and "syn\\_digits" in cmp["tex"]
    assert (cmp["dir"] / "figures" / "seeds.png").is_file()


def test_comparisons_against_the_common_baseline_are_holm_corrected_together(cmp):
    rows = cmp["summary"]["comparisons"]
    assert {(r["study"], r["label"]) for r in rows} == {(s, f"{m} − er_mixup") for s in ("syn_digits", "syn_mnist")
                                                        for m in ("er", "gradmix")}
    assert [r["p_holm"] for r in rows] == pytest.approx(list(multipletests([r["p"] for r in rows], method="holm")[1]))
    pairs = {p["label"]: p for p in cmp["summary"]["pairs"]}
    # gradmix beats er_mixup on every seed of both studies; er on none of syn_digits, all of syn_mnist
    assert pairs["gradmix − er_mixup"]["poi"] == 1.0 and pairs["er − er_mixup"]["poi"] == pytest.approx(0.5)
    assert pairs["gradmix − er_mixup"]["significant_in"] == ["syn_mnist"]
    sentences = json.loads((cmp["dir"] / "summary.json").read_text())["comparison"]["findings"]
    assert ("gradmix − er_mixup at memory.size=100: probability of improvement 1.00 averaged over 2 studies (95% CI "
            "1.00 to 1.00); significant after Holm correction in 1 of them (syn_mnist).") in sentences


def test_several_studies_need_compare(syn_store, capsys, tmp_path):
    assert main(["report", "syn_digits", "syn_mnist", "--tracking-uri", syn_store.uri, "--out", str(tmp_path)]) == 2
    assert "--compare" in capsys.readouterr().err
    assert main(["report", "syn_digits", "--compare", "--tracking-uri", syn_store.uri, "--out", str(tmp_path)]) == 2
    assert "at least two studies" in capsys.readouterr().err
