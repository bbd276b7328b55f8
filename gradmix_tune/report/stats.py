"""Few-seed statistics (scipy, statsmodels): intervals, paired comparisons, Holm correction, power, P(improvement).

- describe: n, mean, sample std (ddof=1); the 95% t-interval of the mean, mean ± t(0.975, n−1)·std/√n,
  clipped to the metric's range (accuracies cannot pass 1); and a percentile bootstrap interval
  (scipy.stats.bootstrap, resampling seeds), which never leaves the range of the data.
- paired_test: arm A against arm B over the seeds both have (same seed = same initialisation and
  data stream): mean difference A − B with its t-interval and bootstrap interval, paired t-test
  (scipy.stats.ttest_rel), Wilcoxon signed-rank from 6 pairs, the standardized effect
  d_z = mean/sd of the differences, the seeds a paired t-test needs for 80% power at that effect
  (statsmodels TTestPower.solve_power; analysis.py asks at the Holm family's strictest level
  alpha/m), the smallest difference the study's n detects, and the
  probability of improvement P(A better than B) paired over seeds (rliable's statistic, with ties
  counting half) with its bootstrap interval.
- holm: Holm-Bonferroni adjusted p-values of a family (statsmodels.stats.multitest.multipletests).
- stratified_bootstrap: an aggregate over several studies (rliable): seeds resampled within each.
"""
from __future__ import annotations

import math
import warnings

from ..values import is_finite
from .runs import jkey

NAN = float("nan")
ALPHA = 0.05  # two-sided level of every test and interval
POWER = 0.8
N_BOOT = 9999
BOOT_SEED = 0  # the report's bootstrap is reproducible
MAX_SEEDS = 100_000  # "needs more than this many seeds" beyond it
_BOUNDED = {"final_avg_acc": (0.0, 1.0), "avg_incremental_acc": (0.0, 1.0), "forgetting": (-1.0, 1.0),
            "bwt": (-1.0, 1.0), "wall_time_s": (0.0, math.inf), "peak_acc": (0.0, 1.0)}


def metric_range(metric: str | None) -> tuple[float, float]:
    """The values a metric can take (its val_ twin alike); unbounded when unknown."""
    m = (metric or "")[4:] if (metric or "").startswith("val_") else metric
    return _BOUNDED.get(m or "", (-math.inf, math.inf))


def clip(v: float, lo: float, hi: float) -> float:
    return v if not math.isfinite(v) else min(max(v, lo), hi)


def bootstrap_ci(samples: list, statistic=None) -> tuple[float, float]:
    """95% percentile bootstrap interval of `statistic` (default: the mean) over one or more
    samples, each resampled on its own (stratified); NaN when a sample has fewer than 2 values."""
    import numpy as np
    from scipy import stats

    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays or any(a.size < 2 for a in arrays):
        return NAN, NAN
    if all(np.all(a == a[0]) for a in arrays):  # nothing varies: every resample gives the same value
        v = float(statistic(*arrays, axis=-1)) if statistic else float(arrays[0][0])
        return v, v
    stat = statistic or (lambda x, axis=-1: np.mean(x, axis=axis))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.bootstrap(tuple(arrays), stat, n_resamples=N_BOOT, confidence_level=1 - ALPHA,
                            method="percentile", rng=np.random.default_rng(BOOT_SEED))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def stratified_bootstrap(samples: list) -> tuple[float, float]:
    """95% interval of the mean over samples (e.g. studies) of each sample's mean, resampling
    within each sample (rliable's stratified bootstrap)."""
    import numpy as np

    def mean_of_means(*xs, axis=-1):
        return np.mean([np.mean(x, axis=axis) for x in xs], axis=0)

    return bootstrap_ci(samples, mean_of_means)


def _t_half(std: float, n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)) if n > 1 and math.isfinite(std) else NAN


def describe(values: list, metric: str | None = None) -> dict:
    """n, mean, std (ddof=1), the 95% t-interval (half-width ci95; bounds clipped to the metric's
    range, `clipped` says so) and the bootstrap interval (boot_low, boot_high) of the mean."""
    import numpy as np

    vals = [float(v) for v in values if is_finite(v)]
    a = np.asarray(vals, dtype=float)
    n = int(a.size)
    mean = float(a.mean()) if n else NAN
    std = float(a.std(ddof=1)) if n > 1 else NAN
    half = _t_half(std, n)
    lo, hi = metric_range(metric)
    ci_low, ci_high = clip(mean - half, lo, hi), clip(mean + half, lo, hi)
    b_low, b_high = bootstrap_ci([vals])
    return {"n": n, "mean": mean, "std": std, "ci95": half, "ci_low": ci_low, "ci_high": ci_high,
            "clipped": bool(n > 1 and (ci_low != mean - half or ci_high != mean + half)),
            "boot_low": b_low, "boot_high": b_high, "values": vals}


def paired_power(effect_size: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test on n pairs at the standardized effect |d_z|
    (statsmodels TTestPower.power). Where scipy's noncentral t gives NaN for the far, opposite
    tail (few seeds, a small alpha, a large effect), the one-sided power at alpha/2: the same
    but for that tail's negligible share."""
    from statsmodels.stats.power import TTestPower

    d, tp = abs(effect_size), TTestPower()
    with warnings.catch_warnings(record=True):  # statsmodels re-enables its own warnings
        warnings.simplefilter("ignore")
        pw = float(tp.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"))
        if not math.isfinite(pw):
            pw = float(tp.power(effect_size=d, nobs=n, alpha=alpha / 2, alternative="larger"))
    return pw


def seeds_for_power(effect_size: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds (pairs) a two-sided paired t-test at level `alpha` needs for `power` at the
    standardized effect |d_z|: statsmodels' TTestPower.solve_power rounded up (at least 2), checked
    against the power itself (the root finder can fail or stop at a spurious root at 2-3 seeds and
    a small alpha; then the smallest n with enough power); inf when there is no effect."""
    from statsmodels.stats.power import TTestPower

    d = abs(effect_size)
    if not math.isfinite(d):
        return 2.0 if d == math.inf else NAN  # differences without spread: any 2 seeds show them
    if d == 0:
        return math.inf

    def enough(k: int) -> bool:
        pw = paired_power(d, k, alpha)
        return math.isfinite(pw) and pw >= power - 1e-9

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        try:
            n = float(TTestPower().solve_power(effect_size=d, nobs=None, alpha=alpha, power=power,
                                               alternative="two-sided"))
        except Exception:  # noqa: BLE001 - searched below
            n = NAN
    if math.isfinite(n):
        k = max(2, math.ceil(n - 1e-9))
        if enough(k) and (k == 2 or not enough(k - 1)):
            return float(k)
        if k >= 1000:
            return float(k)
    for k in range(2, 1000):
        if enough(k):
            return float(k)
    return math.inf


def detectable_effect(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest standardized effect |d_z| a two-sided paired t-test at level `alpha` on n
    seeds detects with `power`: statsmodels' TTestPower.solve_power, checked against the power
    (else the root of paired_power - power, scipy.optimize.brentq)."""
    from scipy.optimize import brentq
    from statsmodels.stats.power import TTestPower

    if n < 2:
        return NAN
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        try:
            d = float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                               alternative="two-sided"))
        except Exception:  # noqa: BLE001
            d = NAN
    if math.isfinite(d) and abs(paired_power(d, n, alpha) - power) < 1e-4:
        return d
    try:
        return float(brentq(lambda e: paired_power(e, n, alpha) - power, 1e-6, 1e4, xtol=1e-10))
    except ValueError:
        return NAN


def power_fields(mean_diff: float, sd: float, n: int, alpha: float = ALPHA) -> dict:
    """effect_size d_z = mean/sd of the per-seed differences, seeds_for_power at it, and
    detectable_diff: the smallest mean difference n seeds detect (at this spread)."""
    if n < 2 or not is_finite(mean_diff):
        return {"effect_size": NAN, "seeds_for_power": NAN, "detectable_diff": NAN}
    d = mean_diff / sd if sd > 0 else (math.inf if mean_diff else 0.0)
    return {"effect_size": d, "seeds_for_power": seeds_for_power(d, alpha),
            "detectable_diff": detectable_effect(n, alpha) * sd if sd > 0 else 0.0}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values; NaN (no test possible) stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if is_finite(p)]
    out = [NAN] * len(pvalues)
    if idx:
        adj = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adj):
            out[i] = float(p)
    return out


def family_alpha(m: int, alpha: float = ALPHA) -> float:
    """The level of the first Holm step in a family of m tests (Bonferroni's alpha/m)."""
    return alpha / max(m, 1)


def mark(p: float) -> str:
    """Significance mark of an adjusted p-value: *** < 0.001, ** < 0.01, * < 0.05."""
    if not is_finite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < ALPHA else ""


def paired_test(a: dict, b: dict, metric: str | None = None, mode: str = "max", alpha: float = ALPHA) -> dict:
    """A vs B over the seeds both have (dicts seed -> value); see the module docstring. `alpha`:
    the level the power figures are for."""
    import numpy as np
    from scipy import stats

    seeds = sorted((s for s in a if s in b and is_finite(a[s]) and is_finite(b[s])), key=jkey)
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    diff = x - y
    n = len(seeds)
    mean_d = float(diff.mean()) if n else NAN
    sd = float(diff.std(ddof=1)) if n > 1 else NAN
    half = _t_half(sd, n)
    lo, hi = metric_range(metric)
    span = hi - lo
    sign = -1.0 if mode == "min" else 1.0
    better = [1.0 if sign * d > 0 else 0.5 if d == 0 else 0.0 for d in diff]
    out = {"n": n, "seeds": seeds, "mean_a": float(x.mean()) if n else NAN, "mean_b": float(y.mean()) if n else NAN,
           "mean_diff": mean_d, "sd_diff": sd, "ci_low": clip(mean_d - half, -span, span),
           "ci_high": clip(mean_d + half, -span, span), "t": NAN, "p": NAN, "p_wilcoxon": NAN,
           "poi": float(np.mean(better)) if n else NAN, **power_fields(mean_d, sd, n, alpha)}
    out["boot_low"], out["boot_high"] = bootstrap_ci([diff.tolist()])
    out["poi_low"], out["poi_high"] = bootstrap_ci([better])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n >= 2 and sd > 0:
            r = stats.ttest_rel(x, y)
            out["t"], out["p"] = float(r.statistic), float(r.pvalue)
        if n >= 6:
            try:
                out["p_wilcoxon"] = float(stats.wilcoxon(x, y).pvalue)
            except ValueError:  # every difference is zero
                pass
    return out
