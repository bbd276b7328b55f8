"""Who is mixed with whom in a batch: partner draws as pure functions of labels and an RNG.

A sample (or a class) is *new* when its class belongs to the current task and *old* otherwise
(a replayed sample of the current task is new). A mixed sample i with partner j is of type
old-old, old-new or new-new by the groups of i and j, in either order. `composition` counts
mixed samples by (own group, partner's group); `composed_partners` draws random partners with
exactly a given composition: the `random_composed` control.
"""
from __future__ import annotations

import numpy as np

PAIR_TYPES = ("old_old", "old_new", "new_new")  # index = number of new members of the pair


def any_partner(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random partner other than itself, for every sample."""
    return (np.arange(n) + rng.integers(1, n, n)) % n if n > 1 else np.zeros(n, dtype=np.int64)


def random_partner(allowed: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each row, a uniformly random allowed column (never itself); and whether any was allowed."""
    allowed = allowed.copy()
    np.fill_diagonal(allowed, False)
    scores = rng.random(allowed.shape)
    scores[~allowed] = -1.0
    return scores.argmax(axis=1), allowed.any(axis=1)


def composition(is_new: np.ndarray, partner: np.ndarray, mixed: np.ndarray) -> np.ndarray:
    """2 x 2 counts of mixed samples: [own group, partner's group], 0 = old, 1 = new."""
    out = np.zeros((2, 2), dtype=np.int64)
    np.add.at(out, (is_new[mixed].astype(int), is_new[partner[mixed]].astype(int)), 1)
    return out


def pair_type_counts(comp: np.ndarray) -> np.ndarray:
    """A composition (2 x 2) as counts of old-old, old-new (either order), new-new pairs."""
    return np.array([comp[0, 0], comp[0, 1] + comp[1, 0], comp[1, 1]])


def composed_partners(is_new: np.ndarray, comp: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random partners with exactly the composition `comp` (2 x 2, as `composition` returns):
    comp[g, h] samples of group g, chosen uniformly within the group, each mixed with a uniformly
    random other sample of group h. Unmixed samples get themselves. Any composition that some
    draw on this batch produced is feasible."""
    n = len(is_new)
    partner, mixed = np.arange(n), np.zeros(n, dtype=bool)
    members = [np.flatnonzero(~is_new), np.flatnonzero(is_new)]
    for g in (0, 1):
        need = int(comp[g].sum())
        if need > len(members[g]):
            raise ValueError(f"composition asks {need} mixed samples of group {g}, the batch has {len(members[g])}")
        anchors = rng.permutation(members[g])[:need]
        mixed[anchors] = True
        start = 0
        for h in (0, 1):
            a = anchors[start:start + int(comp[g, h])]
            start += len(a)
            if not len(a):
                continue
            pool = members[h]
            if g != h:
                partner[a] = pool[rng.integers(0, len(pool), len(a))]
                continue
            if len(pool) < 2:
                raise ValueError(f"composition asks a partner of the same group {g}, the batch has one sample of it")
            pos = np.searchsorted(pool, a)  # the anchor's place in its own group: skipped
            j = rng.integers(0, len(pool) - 1, len(a))
            partner[a] = pool[j + (j >= pos)]
    return partner, mixed


def pair_helpful_fractions(helpful: np.ndarray, seen: np.ndarray, class_new: np.ndarray) -> dict[str, float]:
    """Share of helpful class pairs, unordered with (a, a) included, over the seen pairs: all of
    them ("all") and per pair type. NaN where a type has no seen pair."""
    iu = np.triu_indices(len(seen))
    h, s = helpful[iu], seen[iu]
    kind = class_new[iu[0]].astype(int) + class_new[iu[1]].astype(int)
    out = {"all": float(h[s].mean()) if s.any() else float("nan")}
    for t, name in enumerate(PAIR_TYPES):
        m = s & (kind == t)
        out[name] = float(h[m].mean()) if m.any() else float("nan")
    return out


def decision_flips(prev_helpful: np.ndarray, prev_seen: np.ndarray, helpful: np.ndarray,
                   seen: np.ndarray) -> tuple[int, int]:
    """(pairs whose helpful/harmful decision changed, pairs seen both times): unordered pairs."""
    iu = np.triu_indices(len(seen))
    both = (prev_seen & seen)[iu]
    return int((prev_helpful[iu] != helpful[iu])[both].sum()), int(both.sum())
