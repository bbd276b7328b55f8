"""MLflow runs -> reports/<study>/: findings, tables, one-factor paired comparisons and figures (reads MLflow only).

Reads the tracking store only (the parent run of the study, its ablation.yaml artifact and its
child runs: tags, params, final metrics and metric histories), so a report can be rebuilt later,
on another machine:

    gradmix-tune report STUDY [--tracking-uri URI] [--out DIR] [--experiment NAME]
    gradmix-tune report STUDY_A STUDY_B --compare     # one table over studies that share arms

    runs.py      the study's runs from MLflow (load_study), run page links
    stats.py     intervals, paired tests, Holm, power, probability of improvement
    analysis.py  every number of a report (analyse): baseline, comparisons, config, curves
    findings.py  the question and the findings sentences
    charts.py    the figures (drawn by gradmix_tune/figures.py)
    document.py  report.md / report.html: the sections
    build.py     build_report, after_sweep, logging to the parent run
    compare.py   build_comparison: several studies side by side

Importing it imports neither mlflow nor matplotlib. The CLI's `report` subcommand is in cli.py.
"""
from .analysis import analyse
from .build import after_sweep, build_report
from .compare import build_comparison
from .runs import ReportError, StudyRuns, TrialRun, load_study
from .stats import describe, holm, paired_test, seeds_for_power

__all__ = ["ReportError", "StudyRuns", "TrialRun", "after_sweep", "analyse", "build_comparison", "build_report",
           "describe", "holm", "load_study", "paired_test", "seeds_for_power"]
