"""Phase 2 of a study with `evaluate:` (protocol.py) as data, before and after Ray: its trials, its Study, the choice file (no Ray, no torch).

When phase 1 has ended (not interrupted), the best configuration by the study's metric (or the
`top: N` best) is chosen from its finished trials (protocol.choose) and written, with the tuning
outcomes and the MLflow parent run, to storage/<name>/gradmix_choice.json: a resumed study reads
it and goes straight to phase 2. Phase 2's trials (the tuned config over the whole stream and the
full training data, evaluate.set, each fresh seed) form a Study of their own in
storage/<name>/evaluate/ (phases.py runs it). preflight.py checks phase 2's data and learner
before Ray with evaluation_probe.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, flatten, from_dict
from ..results import METRICS
from .protocol import CHOICE_FILE, EVALUATE_ARM, EVALUATE_DIR, evaluation_config, same_choice_inputs, test_twin
from .storage import exists, read_text, write_text
from .study import Study, is_uri, join, make_trial
from .summary import TrialOutcome, summary_table


@dataclass
class Evaluation:
    """Phase 2 as it ended: its Study (trials, folder), their outcomes, the chosen configurations."""
    study: Study
    trials: list[TrialOutcome] = field(default_factory=list)
    chosen: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.status == "failed"]

    @property
    def interrupted(self) -> bool:
        return any(t.status == "unfinished" for t in self.trials) or len(self.trials) < self.study.num_trials

    def summary(self) -> str:
        """The chosen configurations and the evaluation runs' per-arm table."""
        lines = [f"evaluation of {self.study.name} (phase 2): the best {len(self.chosen)} configuration(s) by "
                 f"{self.chosen[0]['metric'] if self.chosen else '?'} re-run on seeds {self.study.seeds}"]
        for c in self.chosen:
            vals = ", ".join(f"{k}={_short(v)}" for k, v in c["factors"].items()) or "(the base)"
            lines.append(f"  {EVALUATE_ARM.format(rank=c['rank'])}: {vals}  (tuning trial(s) "
                         f"{', '.join(str(i) for i in c['tune_trials'])}: {c['metric']} {c['score']:.4f})")
        return "\n".join(lines + ["", summary_table(self.study, self.trials)])


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def evaluation_trials(study: Study, chosen: list[dict]) -> list[dict]:
    """Phase 2's trials, seed-major (every chosen configuration gets a first result early)."""
    ev = study.evaluate
    over = flatten(ev["set"])
    trials, index = [], 0
    for seed in ev["seeds"]:
        for c in chosen:
            cfg = evaluation_config(c["config"], ev, val_default=study.val_default, tune_tasks=study.tune_tasks)
            arm = EVALUATE_ARM.format(rank=c["rank"])
            t = make_trial(study.name, cfg, {}, seed, index, f"{study.path}: evaluate {arm}, seed {seed}")
            t["factors"] = {k: v for k, v in c["factors"].items() if k not in over}  # the tuned values it runs
            t.update({"arm": arm, "phase": "evaluate", "tune_rank": c["rank"], "tune_arm": c["arm"],
                      "tune_trial": ",".join(str(i) for i in c["tune_trials"]),
                      "tune_trial_id": ",".join(c["tune_trial_ids"])})
            trials.append(t)
            index += 1
    return trials


def evaluation_study(study: Study, trials: list[dict]) -> Study:
    """Phase 2 as a Study of its own: the evaluation trials (FIFO, every run to its end) in
    storage/<name>/evaluate/, summarised on the test twin of the study's metric."""
    metric = test_twin(study.metric)
    mode = study.mode if metric == study.metric else METRICS[metric]
    return dataclasses.replace(study, trials=trials, search=None, grid={}, seeds=list(study.evaluate["seeds"]),
                               metric=metric, mode=mode, scheduler={"type": "fifo"}, evaluate=None,
                               val_default=False, tune_tasks=None, phase_dir=EVALUATE_DIR)


def evaluation_probe(study: Study) -> Study:
    """Before Ray (sweep/preflight.py): phase 2's data and learner checked on the study's first
    configuration, as if it were chosen (another dataset in evaluate.set must be there too)."""
    cfg = study.trials[0]["config"] if study.trials else from_dict(copy.deepcopy(study.base)).to_dict()
    chosen = [{"rank": 1, "arm": "probe", "factors": {}, "config": cfg, "tune_trials": [], "tune_trial_ids": []}]
    first = dataclasses.replace(study, evaluate=dict(study.evaluate, seeds=study.evaluate["seeds"][:1]))
    return dataclasses.replace(evaluation_study(study, evaluation_trials(first, chosen)),
                               path=f"{study.path}: evaluate")  # errors name the phase


# ------------------------------------------------------------------------------- the choice file
def choice_path(study: Study) -> str:
    return join(study.experiment_path, CHOICE_FILE)


def _numbers(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
            and (not isinstance(v, float) or math.isfinite(v)) and k != "config"}


def write_choice(study: Study, chosen: list[dict], tune: list[TrialOutcome], parent_run_id: str | None) -> None:
    """Phase 1's outcome: the choice, the parent run and the tuning trials' outcomes (numbers only)."""
    record = {"study": study.name, "metric": study.metric, "mode": study.mode, "evaluate": study.evaluate,
              "parent_run_id": parent_run_id, "chosen": chosen,
              "tune_outcomes": [{"config": o.config, "metrics": _numbers(o.metrics), "status": o.status,
                                 "error": o.error, "trial_id": o.trial_id} for o in tune]}
    write_text(choice_path(study), json.dumps(record, indent=1, default=str))


def read_choice(study: Study) -> dict | None:
    """The saved choice of an earlier run of this study (None: phase 1 has not ended). One made
    with another metric or evaluate section is refused (it would evaluate the wrong thing)."""
    text = read_text(choice_path(study))
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None  # cut short while written: phase 1's saved state decides again
    if not same_choice_inputs(record, study):
        raise ConfigError(study.path, "evaluate", f"the interrupted run chose its configuration by "
                          f"{record.get('metric')} with evaluate {json.dumps(record.get('evaluate'))} "
                          f"({choice_path(study)})", "resume with the ablation file it ran with, or start "
                          "over with --overwrite")
    return record


def has_saved_state(path: str) -> bool:
    if is_uri(path):
        return exists(path)
    return any(Path(path).glob("experiment_state-*.json"))
