"""Replay buffers: reservoir sampling is uniform, class-balanced stays balanced, checkpoints continue."""
import io
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from gradmix_tune.memory import Buffer


def stream(labels, batch=10, start=0):
    """Batches (x, y) as the learner offers them; x[i] = [sample id, label] so a slot's content
    can be traced back to the sample it came from."""
    ids = torch.arange(start, start + len(labels))
    y = torch.as_tensor(labels, dtype=torch.int64)
    x = torch.stack([ids.float(), y.float()], 1)
    for i in range(0, len(y), batch):
        yield x[i:i + batch], y[i:i + batch]


def fill(buf, labels, batch=10, start=0, task=0):
    for x, y in stream(labels, batch, start):
        buf.add(x, y, task)
    return buf


def stored_ids(buf):
    return buf.x[: len(buf), 0].long().tolist()


def counts(buf):
    """Stored samples per class, leaving out classes with none left (see the test below)."""
    return {c: n for c, n in buf.class_counts().items() if n}


def assert_consistent(buf):
    """x, y and the class counts describe the same stored samples."""
    n = len(buf)
    assert torch.equal(buf.x[:n, 1].long(), buf.y[:n])
    assert counts(buf) == dict(sorted(Counter(buf.y[:n].tolist()).items()))
    assert len(set(stored_ids(buf))) == n  # no sample stored twice


def test_reservoir_fills_first_then_stays_full():
    buf = Buffer(20, "reservoir", seed=0)
    fill(buf, [0] * 15)
    assert len(buf) == 15 and stored_ids(buf) == list(range(15))
    fill(buf, [1] * 85, start=15)
    assert len(buf) == 20 and buf.seen == 100
    assert_consistent(buf)


@pytest.mark.parametrize("batch", [1, 10])
def test_reservoir_keeps_each_seen_sample_with_equal_probability(batch):
    # N samples streamed through R independent buffers of size M: each sample must be kept in
    # close to M/N of them, whatever its position in the stream (early, late, same batch).
    n_items, size, reps = 50, 10, 2000
    counts = np.zeros(n_items)
    for seed in range(reps):
        buf = fill(Buffer(size, "reservoir", seed=seed), [i % 5 for i in range(n_items)], batch=batch)
        assert len(buf) == size
        counts[stored_ids(buf)] += 1
    p = size / n_items
    expected = reps * p
    # each item: binomial(reps, p); 5 sigma with 50 items -> a false alarm about once in 10^5 runs
    sd = np.sqrt(reps * p * (1 - p))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    # all items together: chi-square goodness of fit to the uniform inclusion rate
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=n_items - 1) > 1e-4, (chi2, counts)
    # early and late halves of the stream are kept equally often (the classic off-by-one bias)
    assert abs(counts[:25].sum() - counts[25:].sum()) < 5 * np.sqrt(2 * 25) * sd


def test_reservoir_is_repeatable_with_a_seed_and_differs_across_seeds():
    labels = [i % 3 for i in range(200)]
    a = fill(Buffer(30, "reservoir", seed=7), labels)
    b = fill(Buffer(30, "reservoir", seed=7), labels)
    c = fill(Buffer(30, "reservoir", seed=8), labels)
    assert stored_ids(a) == stored_ids(b)
    assert stored_ids(a) != stored_ids(c)


def imbalanced_labels(seed=0):
    counts = {0: 500, 1: 100, 2: 20, 3: 5}
    labels = [c for c, n in counts.items() for _ in range(n)]
    return [int(v) for v in np.random.RandomState(seed).permutation(labels)], counts


def test_class_balanced_buffer_stays_balanced_on_an_imbalanced_stream():
    labels, seen = imbalanced_labels()
    buf = fill(Buffer(100, "class_balanced", seed=0), labels)
    counts = buf.class_counts()
    assert len(buf) == 100 and sum(counts.values()) == 100
    assert counts[3] == 5 and counts[2] == 20  # small classes keep every sample they had
    assert abs(counts[0] - counts[1]) <= 1  # the large classes share the rest equally
    assert_consistent(buf)
    # reservoir on the same stream mirrors the imbalance
    res = fill(Buffer(100, "reservoir", seed=0), labels).class_counts()
    assert res[0] > 60 and res.get(3, 0) <= 3


def test_class_balanced_buffer_balances_a_class_incremental_stream():
    # one class after another, as tasks arrive: the buffer gives each class its share
    labels = [0] * 300 + [1] * 300 + [2] * 300 + [3] * 300
    buf = Buffer(100, "class_balanced", seed=1)
    for t, c in enumerate(range(4)):
        fill(buf, labels[300 * c:300 * (c + 1)], start=300 * c, task=t)
        counts = buf.class_counts()
        assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert buf.class_counts() == {0: 25, 1: 25, 2: 25, 3: 25}
    assert_consistent(buf)
    # within a class, which samples are kept is not just the first ones seen
    kept0 = [i for i, y in zip(stored_ids(buf), buf.y.tolist()) if y == 0]
    assert max(kept0) > 100


def test_sample_draws_distinct_stored_indices_and_can_exclude_a_task():
    buf = Buffer(50, "reservoir", seed=0)
    fill(buf, [0] * 20, task=0)
    fill(buf, [1] * 20, start=20, task=1)
    gen = torch.Generator().manual_seed(0)
    idx = buf.sample(10, gen)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and int(idx.max()) < len(buf)
    old = buf.sample(30, gen, exclude_task=1)
    assert len(old) == 20 and set(buf.y[old].tolist()) == {0}
    assert len(Buffer(10).sample(5, gen)) == 0  # empty buffer: nothing to replay


def test_size_zero_stores_nothing():
    buf = fill(Buffer(0, "reservoir"), [0, 1, 2] * 10)
    assert len(buf) == 0 and buf.class_counts() == {}


def _roundtrip(state, json_rng):
    """What a checkpoint does: torch.save / torch.load (and a JSON round trip of the RNG state,
    which turns its tuples into lists)."""
    if json_rng:
        state = dict(state, rng=json.loads(json.dumps(state["rng"])))
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=False)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
@pytest.mark.parametrize("json_rng", [False, True])
def test_state_dict_round_trip_continues_identically(policy, json_rng):
    labels, _ = imbalanced_labels(seed=3)
    first, rest = labels[:250], labels[250:]
    a = fill(Buffer(60, policy, seed=11), first)
    b = Buffer(60, policy, seed=999)  # a different seed: the loaded RNG state must take over
    b.load_state_dict(_roundtrip(a.state_dict(), json_rng))
    assert len(b) == len(a) and b.seen == a.seen and counts(b) == counts(a)
    fill(a, rest, start=250, task=1)
    fill(b, rest, start=250, task=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.task, b.task)
    assert counts(a) == counts(b) and a.seen == b.seen == len(labels)
    assert_consistent(b)


def test_class_counts_lists_only_classes_still_in_the_buffer():
    # A class whose last sample was evicted must drop out of class_counts(), as it does after a
    # load_state_dict: otherwise the counts differ between a run and its resumed copy.
    buf = fill(Buffer(10, "reservoir", seed=0), [0] * 10)
    start = 10
    while 0 in buf.y.tolist():  # stream class 1 until every class-0 sample has been replaced
        fill(buf, [1] * 100, start=start)
        start += 100
        assert start < 100_000
    assert buf.class_counts() == {1: 10}
    restored = Buffer(10, "reservoir")
    restored.load_state_dict(buf.state_dict())
    assert restored.class_counts() == buf.class_counts()


def test_state_dict_of_a_partly_filled_and_an_empty_buffer():
    a = fill(Buffer(40, "reservoir", seed=2), [0, 1] * 10)
    b = Buffer(40, "reservoir", seed=5)
    b.load_state_dict(_roundtrip(a.state_dict(), False))
    fill(a, [2] * 50, start=20)
    fill(b, [2] * 50, start=20)
    assert stored_ids(a) == stored_ids(b)
    empty = Buffer(40, "class_balanced", seed=0)
    c = Buffer(40, "class_balanced", seed=1)
    c.load_state_dict(_roundtrip(empty.state_dict(), True))
    fill(empty, [0] * 50)
    fill(c, [0] * 50)
    assert stored_ids(empty) == stored_ids(c)


# ---------------------------------------------------------------- decisions, rows, old checkpoints

class OneAtATime:
    """The buffer's decisions as they were first written: each sample offered on its own, the
    class-balanced eviction scanning every slot. The batched buffer must make the same draws
    from its RNG and keep the same samples in the same slots."""

    def __init__(self, size, policy, seed):
        self.size, self.policy, self.rng = size, policy, random.Random(seed)
        self.n = self.seen = 0
        self.slots = [None] * size  # (sample id, label, task)
        self.counts, self.class_seen = {}, {}

    def offer(self, sid, label, task):
        self.class_seen[label] = self.class_seen.get(label, 0) + 1
        slot = self._slot(label)
        self.seen += 1
        if slot is None:
            return
        if slot < self.n:
            old = self.slots[slot][1]
            self.counts[old] -= 1
            if self.counts[old] == 0:
                del self.counts[old]
        else:
            self.n += 1
        self.slots[slot] = (sid, label, task)
        self.counts[label] = self.counts.get(label, 0) + 1

    def _slot(self, label):
        if self.n < self.size:
            return self.n
        if self.policy == "reservoir":
            j = self.rng.randint(0, self.seen)
            return j if j < self.size else None
        largest = max(self.counts.values())
        if self.counts.get(label, 0) >= largest:
            if self.rng.random() >= self.counts[label] / self.class_seen[label]:
                return None
            target = label
        else:
            biggest = [c for c, n in self.counts.items() if n == largest]
            target = biggest[self.rng.randrange(len(biggest))]
        slots = [i for i in range(self.n) if self.slots[i][1] == target]
        return slots[self.rng.randrange(len(slots))]


def class_incremental_labels(seed=0):
    rs = np.random.RandomState(seed)
    return [int(c) for t in range(4) for c in rs.permutation([2 * t] * 90 + [2 * t + 1] * 60)]


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
@pytest.mark.parametrize("batch", [1, 7, 10, 64])
def test_batched_decisions_equal_offering_one_sample_at_a_time(policy, batch):
    labels = class_incremental_labels()
    ref = OneAtATime(40, policy, seed=3)
    buf = Buffer(40, policy, seed=3)
    for start in range(0, len(labels), 150):  # one task per 150 samples
        task = start // 150
        for i in range(start, start + 150):
            ref.offer(i, labels[i], task)
        fill(buf, labels[start:start + 150], batch=batch, start=start, task=task)
        assert stored_ids(buf) == [s[0] for s in ref.slots[: ref.n]]
        assert buf.task[: len(buf)].tolist() == [s[2] for s in ref.slots[: ref.n]]
        assert buf.class_counts() == dict(sorted(ref.counts.items())) and buf.seen == ref.seen
        assert buf.rng.getstate() == ref.rng.getstate()  # the same draws, no more
    assert_consistent(buf)


def bound(size, policy, seed, labels):
    """A buffer bound to source tensors (x[i] = [i, label]), as the learner makes one."""
    y = torch.as_tensor(labels, dtype=torch.int64)
    x = torch.stack([torch.arange(len(y)).float(), y.float()], 1)
    return Buffer(size, policy, seed=seed, source=(x, y))


def offer_rows(buf, start, stop, task=0, batch=10):
    sy = buf.source[1]
    for i in range(start, stop, batch):
        rows = list(range(i, min(i + batch, stop)))
        buf.add_rows(rows, sy[rows].tolist(), task)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_a_buffer_of_rows_keeps_what_a_buffer_of_copies_keeps(policy):
    labels = class_incremental_labels(1)
    copies = fill(Buffer(50, policy, seed=4), labels, task=2)
    rows = bound(50, policy, 4, labels)
    offer_rows(rows, 0, len(labels), task=2)
    assert torch.equal(rows.rows[: len(rows)], rows.x[:, 0].long())  # a slot's row is its sample
    assert torch.equal(rows.x, copies.x) and torch.equal(rows.y, copies.y)
    assert torch.equal(rows.task[: len(rows)], copies.task[: len(copies)])
    assert rows.class_counts() == copies.class_counts() and rows.labels() == copies.labels()
    idx = torch.tensor([3, 0, 49, 7])
    gx, gy = rows.gather(idx)
    assert torch.equal(gx, rows.source[0][rows.rows[idx]]) and torch.equal(gy, copies.y[idx])
    assert_consistent(rows)


def test_rows_and_copies_are_offered_through_their_own_method():
    with pytest.raises(ValueError, match="add_rows"):
        bound(10, "reservoir", 0, [0] * 20).add(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="with add"):
        Buffer(10).add_rows([0, 1], [0, 0])


@pytest.mark.parametrize("old_format", [False, True])
def test_a_buffer_of_rows_resumes_from_its_checkpoint_and_from_one_of_copies(old_format):
    # checkpoints written before buffers stored rows hold copies only: their rows are found again
    labels = class_incremental_labels(2)
    a = bound(60, "reservoir", 5, labels)
    offer_rows(a, 0, 300, task=0)
    state = _roundtrip(a.state_dict(), json_rng=True)
    if old_format:
        del state["rows"]
    b = bound(60, "reservoir", 99, labels)
    b.load_state_dict(state)
    assert torch.equal(b.rows[: len(b)], a.rows[: len(a)])
    offer_rows(a, 300, len(labels), task=1)
    offer_rows(b, 300, len(labels), task=1)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.task, b.task) and a.seen == b.seen
    assert counts(a) == counts(b)
    assert_consistent(b)


def test_a_checkpoint_of_samples_not_in_the_source_is_refused():
    labels = [0, 1] * 20
    a = fill(Buffer(10, "reservoir", seed=0), labels, start=1000)  # ids the source does not hold
    b = bound(10, "reservoir", 0, labels)
    with pytest.raises(ValueError, match="not in the training data"):
        b.load_state_dict(a.state_dict())
