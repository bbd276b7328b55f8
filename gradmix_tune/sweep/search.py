"""Where a study's trials come from (its grid in order, or Optuna's samples) and the scheduler that may stop them early.

Grid: StudySearchGenerator(ConcurrencyLimiter(GridSearcher)) hands out the pre-expanded trials.
Search: ConcurrencyLimiter(StudySearcher(OptunaSearch)) turns each sample into a full trial.
On --resume, `known` (the trial indices in Ray's saved state) makes the grid searcher hand out
again every trial the state lacks. These classes are pickled with the study's Tuner state.
"""
from __future__ import annotations

import copy
import pickle

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from ..config import flatten
from . import ray_compat
from .study import Study, arm_label, make_trial


class GridSearcher(Searcher):
    """Hands out the study's pre-expanded trials in order."""

    def __init__(self, trials: list[dict]):
        super().__init__(metric=None, mode=None)
        self.trials = trials
        self.next = 0
        # on --resume: the indices of the trials Ray's saved state lists. The searcher's own
        # saved position can be ahead of that state (a driver killed, or a full disk, between
        # the two files): every index the state lacks is handed out again.
        self.known: set[int] | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id):
        while self.known is not None and self.next < len(self.trials) and self.next in self.known:
            self.next += 1
        if self.next >= len(self.trials):
            return Searcher.FINISHED
        self.next += 1
        return copy.deepcopy(self.trials[self.next - 1])

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass

    def get_state(self):
        return {"next": self.next}

    def set_state(self, state):
        self.next = state["next"]
        if self.known is not None:
            self.next = 0  # suggest() skips the known ones

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class StudySearchGenerator(SearchGenerator):
    """Ray's wrapper of a grid study's searcher. On --resume (`known` set) it counts the
    trials from Ray's saved state, not from its own saved counter, which can be ahead of that
    state (see GridSearcher.known): missing trials are created again."""

    def __init__(self, searcher):
        super().__init__(searcher)
        self.known: set[int] | None = None

    def set_state(self, state):
        super().set_state(state)
        known = getattr(self, "known", None)
        if known is not None:
            ray_compat.set_generator_count(self, len(known))
        # (the last step of Ray's restore_from_dir: the ConcurrencyLimiter below has its saved state now)
        forget_lost_trials(self.searcher, getattr(self, "unfinished", None))


class StudySearcher(Searcher):
    """Wraps Optuna (TPE or random): turns each sampled point into a full study trial."""

    def __init__(self, searcher, study_name: str, base: dict, seeds: list[int], phase: str | None = "tune"):
        super().__init__(metric=None, mode=None)  # Tune's own metric check stays off:
        self.searcher = searcher  # the metric is only in the final result
        self.study_name, self.base, self.seeds = study_name, base, seeds
        self.phase = phase  # a search selects: its trials are the tuning phase (protocol.py)
        self.count = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def set_max_concurrency(self, max_concurrent) -> bool:
        return False

    def suggest(self, trial_id):
        s = self.searcher.suggest(trial_id)
        if s is None or s == Searcher.FINISHED:
            return s
        factors = flatten(s)
        seed = self.seeds[self.count % len(self.seeds)]
        self.count += 1
        return make_trial(self.study_name, self.base, factors, seed, self.count - 1,
                          f"sampled {arm_label(factors)}", validate=False, phase=getattr(self, "phase", None))

    def on_trial_result(self, trial_id, result):
        pass  # intermediate results lack the study metric; no pruning through the searcher

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        self.count = state["count"]

    def save(self, checkpoint_path):
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path):
        self.searcher.restore(checkpoint_path)


def make_search_alg(study: Study, max_concurrent: int):
    """Grid: the pre-expanded trials in order. Search: Optuna (TPE, or its random sampler)."""
    if not study.search:
        return StudySearchGenerator(ConcurrencyLimiter(GridSearcher(study.trials), max_concurrent=max_concurrent))
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    s = study.search
    space = {}
    for k, spec in s["space"].items():
        a = spec["args"]
        if spec["type"] in ("uniform", "loguniform"):
            space[k] = FloatDistribution(float(a[0]), float(a[1]), log=spec["type"] == "loguniform")
        elif spec["type"] == "int":
            space[k] = IntDistribution(a[0], a[1])  # both ends included
        else:
            space[k] = CategoricalDistribution(a)
    sampler = (optuna.samplers.TPESampler(seed=s["seed"]) if s["algorithm"] == "optuna"
               else optuna.samplers.RandomSampler(seed=s["seed"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inner = OptunaSearch(space=space, metric=study.metric, mode=study.mode, sampler=sampler)
    return ConcurrencyLimiter(StudySearcher(inner, study.name, study.base, study.seeds),
                              max_concurrent=max_concurrent)


def make_scheduler(study: Study):
    """None (FIFO: every trial runs to its end) or ASHA over tasks or epochs."""
    s = study.scheduler
    if s["type"] == "fifo":
        return None
    return ASHAScheduler(time_attr=s["time_attr"], metric=s["metric"], mode="max", max_t=s["max_t"],
                         grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])


def set_known_trials(search_alg, known: set[int] | None) -> None:
    """On --resume: tell the grid searcher (and its generator) which trial indices Ray's saved
    state holds (None: unknown, trust their own saved positions)."""
    s = search_alg
    while s is not None:
        if hasattr(s, "known"):
            s.known = known
        s = getattr(s, "searcher", None)


def set_search_concurrency(search_alg, n: int) -> None:
    """On --resume with --max-concurrent: the new limit on every ConcurrencyLimiter in the chain."""
    s = search_alg
    while s is not None:
        if isinstance(s, ConcurrencyLimiter):
            s.max_concurrent = n
        s = getattr(s, "searcher", None)


def set_unfinished_trials(search_alg, unfinished: set[str] | None) -> None:
    """On --resume: the ids of the trials Ray's saved state holds unfinished (None: unknown), for
    StudySearchGenerator.set_state (forget_lost_trials) once Ray has restored the searchers."""
    s = search_alg
    while s is not None:
        if isinstance(s, StudySearchGenerator):
            s.unfinished = unfinished
        s = getattr(s, "searcher", None)


def forget_lost_trials(search_alg, unfinished: set[str] | None) -> None:
    """On --resume: a ConcurrencyLimiter counts the trials it handed out and has not seen end
    (`live_trials`, restored from its saved state). One that Ray's saved state lacks (created in
    the instant before the driver was killed; created again under a new id) never ends there:
    it would hold a slot for good, and with --max-concurrent 1 stall the study. Keep only the
    trials Ray restores unfinished (`unfinished`: their ids; None: unknown, keep all)."""
    s = search_alg
    while unfinished is not None and s is not None:
        if isinstance(s, ConcurrencyLimiter):
            lost = set(s.live_trials) - unfinished
            s.live_trials = set(s.live_trials) - lost
            s.num_unfinished_live_trials = max(0, s.num_unfinished_live_trials - len(lost))
        s = getattr(s, "searcher", None)
