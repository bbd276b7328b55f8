"""A study with `evaluate:` (protocol.py) on Ray: phase 1 tunes, phase 2 re-runs the chosen configuration on fresh seeds.

Phase 1 is the study's own Ray run (storage/<name>/). When it has ended (not interrupted), the
choice is made and saved (evaluation.py). Phase 2 is a second Ray run in storage/<name>/evaluate/
whose trials are logged as children of the same MLflow parent run, tagged phase=evaluate and with
the tuning trial they came from (tuning runs: phase=tune). One Ray serves both.

`--resume`: with the choice file there, phase 1 is not run again (its outcomes come from the file)
and phase 2 resumes from its saved state, or starts over when it had none; without it, phase 1
resumes as any study does, then phase 2 runs.

Importing this module imports no ray: ray is loaded when fit_phases runs.
"""
from __future__ import annotations

from .evaluation import Evaluation, evaluation_study, evaluation_trials, has_saved_state, read_choice, write_choice
from .protocol import choose
from .storage import delete, exists
from .study import Study
from .summary import TrialOutcome


# ------------------------------------------------------------------------------- both phases
def fit_phases(study: Study, *, resume: bool, address: str | None, num_cpus: int | None, num_gpus: int | None,
               dashboard: bool, **fit) -> tuple[list[TrialOutcome], str | None, Evaluation | None]:
    """Phase 1 (unless a resumed study had finished it), the choice, phase 2. Returns the tuning
    trials' outcomes, the parent run and phase 2 (None when phase 1 did not end: interrupted, or
    no trial finished). `fit`: fit_study's other keyword arguments. One Ray for both phases."""
    import ray

    from .cluster import init_ray
    from .tuner import fit_study

    record = read_choice(study) if resume else None  # a choice made another way: exit 2 before Ray starts
    started = init_ray(address, num_cpus, num_gpus, dashboard)
    try:
        if record is not None:
            tune = [TrialOutcome(o["config"], o["metrics"], o["status"], o.get("error", ""), o.get("trial_id", ""))
                    for o in record["tune_outcomes"]]
            parent, chosen = record.get("parent_run_id"), record["chosen"]
            print(f"study {study.name}: tuning (phase 1) ended before; resuming its evaluation", flush=True)
        else:
            tune, parent = fit_study(study, resume=resume, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                                     dashboard=dashboard, **fit)
            if any(t.status == "unfinished" for t in tune) or len(tune) < study.num_trials:
                return tune, parent, None  # interrupted: phase 2 waits for the whole tuning phase
            chosen = choose(tune, study.metric, study.mode, study.evaluate["top"], by_arm=not study.search)
            for c in chosen:
                c["metric"] = study.metric
            if not chosen:
                print(f"no tuning trial of {study.name} finished with {study.metric}: nothing to evaluate", flush=True)
                return tune, parent, None
            write_choice(study, chosen, tune, parent)
        ev = evaluation_study(study, evaluation_trials(study, chosen))
        again = resume and has_saved_state(ev.experiment_path)
        if not again and exists(ev.experiment_path):
            delete(ev.experiment_path)  # stopped before Ray saved its state: start it over
        print(f"\nevaluating (phase 2): {len(chosen)} configuration(s) x {len(ev.seeds)} fresh seeds = "
              f"{ev.num_trials} runs -> {ev.experiment_path}", flush=True)
        ev_trials, _ = fit_study(ev, resume=again, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                                 dashboard=dashboard, parent_run_id=parent, phase="evaluate", **fit)
        return tune, parent, Evaluation(ev, ev_trials, chosen)
    finally:
        if started:
            ray.shutdown()
