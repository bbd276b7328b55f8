"""A searched study's report must not pick its "best" arm on the test split: the study's own
(validation) metric chooses, respecting its mode, and the chosen arm's test score is stated beside it.
Checked on synthetic searched studies in a real sqlite MLflow store (report_store.write_search)
where the best arm by the test score is another than the best by validation."""
from __future__ import annotations

import json

import pytest
from report_store import write_search

from gradmix_tune.cli import main
from gradmix_tune.report import build_report


def val(v: float, test: float) -> dict:
    return {"val_final_avg_acc": v, "final_avg_acc": test}


# lr 0.05 is the best by validation (0.80); lr 0.1 has the best tuning test score (0.85), and the
# evaluation of the configuration ranked 2nd (evaluate #2, 0.79) beats that of the 1st (0.72)
SEARCH = {0.01: val(0.70, 0.72), 0.05: val(0.80, 0.83), 0.1: val(0.75, 0.85), 0.2: None}
EVALUATE = {1: (0.05, {10: 0.70, 11: 0.74, 12: 0.72}), 2: (0.1, {10: 0.78, 11: 0.80, 12: 0.79})}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("searched")
    uri = f"sqlite:///{root / 'm.db'}"
    write_search(uri, "syn_search", SEARCH, failed=(0.3,), evaluate=EVALUATE)
    # shares lr 0.05 and 0.1 with syn_search, ranked the other way by validation; and its evaluate #2
    # again beats its evaluate #1 on test
    write_search(uri, "syn_search_b", {0.05: val(0.70, 0.90), 0.1: val(0.78, 0.74), 0.02: val(0.60, 0.95)},
                 evaluate={1: (0.1, {10: 0.71, 11: 0.73, 12: 0.75}), 2: (0.05, {10: 0.80, 11: 0.82, 12: 0.81})})
    # shares only the evaluation arms with syn_search
    write_search(uri, "syn_search_c", {0.03: val(0.81, 0.70), 0.07: val(0.79, 0.88)},
                 evaluate={1: (0.03, {10: 0.69, 11: 0.71, 12: 0.70}), 2: (0.07, {10: 0.85, 11: 0.86, 12: 0.87})})
    return {"uri": uri, "root": root}


def findings_of(uri, study, out) -> list[str]:
    folder = build_report(study, uri, out)
    return json.loads((folder / "summary.json").read_text())["findings"]["sentences"]


def test_the_best_arm_of_a_searched_study_is_chosen_by_its_validation_metric(store, tmp_path):
    first = findings_of(store["uri"], "syn_search", tmp_path)[0]
    assert first == (
        "Best of 3 arms by val_final_avg_acc, the study's metric (higher is better; the test split does not "
        "choose): train.lr=0.05 with val_final_avg_acc 0.800 (1 seed); its test final average accuracy 0.830 "
        "(1 seed). Not ranked: 2 evaluation arms (evaluate #1, evaluate #2; their test scores are the ones to "
        "report, see Tuning vs evaluation) and 1 arm without a value of val_final_avg_acc (stopped early, or "
        "ended without it).")
    assert "train.lr=0.1 with" not in first and "0.850" not in first, "the best test score does not choose"


def test_a_minimised_validation_metric_chooses_the_lowest(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tune = {0.01: {"val_forgetting": 0.10, "forgetting": 0.12}, 0.05: {"val_forgetting": 0.05, "forgetting": 0.20},
            0.1: {"val_forgetting": 0.08, "forgetting": 0.04}}
    write_search(uri, "syn_search_min", tune, metric="val_forgetting", mode="min", scheduler="fifo")
    first = findings_of(uri, "syn_search_min", tmp_path)[0]
    assert first == ("Best of 3 arms by val_forgetting, the study's metric (lower is better; the test split does "
                     "not choose): train.lr=0.05 with val_forgetting 0.050 (1 seed); its test forgetting 0.200 "
                     "(1 seed).")


def test_comparing_searched_studies_bolds_the_arm_their_validation_metric_chooses(store, tmp_path):
    assert main(["report", "syn_search", "syn_search_b", "--compare", "--tracking-uri", store["uri"],
                 "--out", str(tmp_path)]) == 0
    folder = tmp_path / "compare_syn_search_syn_search_b"
    cmp = json.loads((folder / "summary.json").read_text())["comparison"]
    assert set(cmp["shared_arms"]) == {"train.lr=0.05", "train.lr=0.1", "evaluate #1", "evaluate #2"}
    assert [b["arm"] for b in cmp["best"]] == ["train.lr=0.05", "train.lr=0.1"]
    assert ("syn_search: best shared arm by val_final_avg_acc, the study's metric (the test split does not choose): "
            "train.lr=0.05 with val_final_avg_acc 0.800; its test final average accuracy 0.830 (1 seed).") \
        in cmp["findings"]
    assert any(s.startswith("syn_search_b: best shared arm by val_final_avg_acc") and "train.lr=0.1 with "
               "val_final_avg_acc 0.780; its test final average accuracy 0.740" in s for s in cmp["findings"])
    md = (folder / "report.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| train.lr=") or
            ln.startswith("| evaluate #")}
    assert "**0.830**" in rows["train.lr=0.05"] and "**0.740**" in rows["train.lr=0.1"]
    assert "**" not in rows["evaluate #2"], "not the best test score: 0.790 and 0.810 are not bold"
    tex = (folder / "table.tex").read_text()
    assert r"\textbf{0.830}" in tex and r"\textbf{0.740}" in tex and r"\textbf{0.810" not in tex


def test_shared_evaluation_arms_are_ordered_by_their_tuning_rank_not_their_test_scores(store, tmp_path):
    assert main(["report", "syn_search", "syn_search_c", "--compare", "--tracking-uri", store["uri"],
                 "--out", str(tmp_path)]) == 0
    cmp = json.loads((tmp_path / "compare_syn_search_syn_search_c" / "summary.json").read_text())["comparison"]
    assert cmp["shared_arms"] == ["evaluate #1", "evaluate #2"]
    assert [(b["arm"], b["rule"]) for b in cmp["best"]] == [("evaluate #1", "tune_rank")] * 2
    assert ("syn_search_c: of the shared arms, evaluate #1 re-runs the configuration val_final_avg_acc ranked "
            "highest in tuning (rank 1): its test final average accuracy 0.700 (95% CI 0.675 to 0.725, 3 seeds).") \
        in cmp["findings"]
