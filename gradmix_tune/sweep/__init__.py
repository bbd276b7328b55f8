"""Ablation studies on Ray Tune: the only Ray code of gradmix-tune (importing the package imports no ray).

    study.py        ablation YAML -> validated Study, its trials expanded (no ray, no torch)
    storage.py      the study's storage folder: file I/O, the checks before Ray, recorded results
    summary.py      TrialOutcome, SweepOutcome and the per-arm summary table
    protocol.py     what a study that selects must do: val_ metrics, the split, search.tasks, evaluate:
    evaluation.py   phase 2 as data: the chosen configuration's trials and Study, the choice file
    phases.py       fit_phases: tuning, the choice, evaluation (ray imported when it runs)
    preflight.py    what `run` checks before training, for every arm's data, before Ray (torch lazily)
    signals.py      SIGTERM stops a study as Ctrl-C does (exit 143, runs KILLED, resumable)
    unsent.py       MLflow entries the store did not take: kept in the results folder, sent on --resume
    runner.py       run_study: checks, the Ray run (or both phases), summary, report
    --- importing ray:
    tuner.py        one Ray Tune run of a study: new or restored Tuner, fit, outcomes
    cluster.py      start or join Ray; does a trial fit, does every node see the storage
    search.py       grid searcher, Optuna wrapper, ASHA
    trial.py        the trainable (train_trial, Trainable with a checkpoint-checking restore)
    checkpoints.py  which checkpoint a restored trial may trust; pruning after a run
    callbacks.py    the driver's callbacks: progress lines, MLflow writer
    ray_compat.py   every use of Ray's private APIs
"""
from .runner import run_study
from .study import DEFAULT_STORAGE, Study, arm_label, load_study, make_trial, trial_table
from .summary import SweepOutcome, TrialOutcome, summary_rows, summary_table

__all__ = ["DEFAULT_STORAGE", "Study", "SweepOutcome", "TrialOutcome", "arm_label", "load_study", "make_trial",
           "run_study", "summary_rows", "summary_table", "trial_table"]
