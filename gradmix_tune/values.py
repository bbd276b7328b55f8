"""Checking and formatting user-facing values: did-you-mean, numbers, finiteness, mean +- std."""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable


def did_you_mean(word: Any, options: Iterable[str], what: str | None = "keys") -> str:
    """The fix for an unknown name: the closest option, else the list of valid ones
    ('valid <what>: ...', or 'one of: ...' when what is None)."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return (f"valid {what}: " if what else "one of: ") + ", ".join(options)


def closest(word: Any, options: Iterable[str], cutoff: float = 0.6) -> str | None:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return close[0] if close else None


def is_finite(v: Any) -> bool:
    """A real number (not bool, not NaN/inf, not an int too big for a float): what may be
    logged, averaged or compared."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def as_number(v: Any) -> float | int | None:
    """A YAML value as a finite number, or None. YAML 1.1 reads 1e-3 as a string."""
    if isinstance(v, str):
        try:
            v = float(v)
        except (ValueError, OverflowError):
            return None
    return v if is_finite(v) else None


def mean_std(xs: Iterable[Any], digits: int = 4, sep: str = " +- ") -> str:
    """'m +- sd' over the finite values (sample std), 'm' for one value, '-' for none."""
    vals = [float(x) for x in xs if is_finite(x)]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.{digits}f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1))
    return f"{m:.{digits}f}{sep}{sd:.{digits}f}"
