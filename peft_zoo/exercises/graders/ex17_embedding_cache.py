"""Grader machinery of challenge 17 · embedding_cache: an independent model of the cache (a
plain dict and a recency list) that can also reproduce each classic bug, the operations
replayed step by step on the learner's cache, and the diagnosis that names the bug whose
model shows exactly what the learner's cache showed."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from peft_zoo.exercises.grading import CLASSIC_BUG, SEVERAL_BUGS
from peft_zoo.testing import explain

KEYS = st.integers(0, 3)
ADAPTERS = st.sampled_from(["a", "b", "c"])

# ----------------------------------------------------------------------------- the model


class Model:
    """The cache spelled out with a plain dict and a recency list (least recent first).

    ``bug`` names a classic mistake to reproduce instead (used to name the learner's bug).
    """

    def __init__(self, capacity: int, bug: str | None = None) -> None:
        self.capacity, self.bug = capacity, bug
        self.entries: dict[tuple, torch.Tensor] = {}
        self.order: list[tuple] = []  # least recently used first
        self.versions: dict[str, int] = {}
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def version(self, adapter: str) -> int:
        return self.versions.get(adapter, 0)

    def bump(self, adapter: str) -> None:
        self.versions[adapter] = 1 if self.bug == "bump_resets" else self.version(adapter) + 1

    def _key(self, key, adapter: str) -> tuple:
        return (key, adapter) if self.bug == "stale" else (key, adapter, self.version(adapter))

    def _touch(self, full: tuple) -> None:
        self.order.remove(full)
        self.order.append(full)

    def get(self, key, adapter: str):
        full = self._key(key, adapter)
        if full not in self.entries:
            self.misses += 1
            return None
        if self.bug != "get_no_refresh":
            self._touch(full)
        self.hits += 1
        return self.entries[full]

    def put(self, key, adapter: str, value: torch.Tensor) -> None:
        full = self._key(key, adapter)
        if full not in self.entries:
            self.order.append(full)
        elif self.bug != "put_no_refresh":
            self._touch(full)
        self.entries[full] = value
        limit = self.capacity + {"cap_minus": -1, "cap_plus": 1}.get(self.bug or "", 0)
        while len(self.entries) > limit:
            victim = self.order.pop() if self.bug == "evict_newest" else self.order.pop(0)
            del self.entries[victim]
            self.evictions += 1

    def lookup(self, keys, adapters, compute):
        pairs = list(zip(keys, adapters, strict=True))
        rows = [self.get(*pair) for pair in pairs]
        slot: dict[tuple, int] = {}
        miss: list[int] = []
        for i, pair in enumerate(pairs):
            if rows[i] is None and (pair not in slot or self.bug == "no_dedupe"):
                slot[pair] = len(miss)
                miss.append(i)
        if not miss:
            return torch.stack(rows)
        # with the "compute_all" bug every row is computed, then the missing ones are picked out
        everything = self.bug == "compute_all"
        computed = compute(list(range(len(keys))))[miss] if everything else compute(miss)
        for j, i in enumerate(miss):
            self.put(*pairs[i], computed[j])
        return torch.stack([computed[slot[p]] if r is None else r for p, r in zip(pairs, rows, strict=True)])


BUG_MODELS = {
    "stale": "stale entry after an update: the adapter version is not part of the key, so bump() "
    "changes nothing and old embeddings are served",
    "bump_resets": "bump() sets the version to 1 instead of incrementing it: after the second update "
    "the entries of the first are served again (stale)",
    "evict_newest": "the LRU evicts the MOST recent entry (popitem(last=True)); the front of an "
    "OrderedDict is the least recently used: popitem(last=False)",
    "get_no_refresh": "get() does not refresh recency: a hit must move_to_end the entry",
    "put_no_refresh": "put() over an existing entry does not refresh it: assigning to an existing "
    "OrderedDict key keeps its old position, so move_to_end it",
    "compute_all": "compute is called with every index instead of only the misses",
    "no_dedupe": "a (key, adapter) pair that misses twice in one lookup is computed twice",
    "cap_minus": "off-by-one capacity: entries are evicted at len == capacity (the cache holds capacity - 1)",
    "cap_plus": "off-by-one capacity: the cache holds capacity + 1 entries",
}

# ----------------------------------------------------------------------------- running operations


def as_list(t) -> object:
    return tuple(t.flatten().tolist()) if isinstance(t, torch.Tensor) else repr(t)


def label(row) -> str:
    """Name a stored value by where it came from: ``put@3`` (put at step 3), ``computed@3``."""
    if not isinstance(row, torch.Tensor) or row.shape != (2,):
        return repr(row)
    step, tag = (float(v) for v in row.tolist())
    return f"put@{step:g}" if tag == -1 else f"computed@{step:g}"


def rows_of(out) -> str:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != 2:
        return f"{out!r:.200}"
    return "[" + ", ".join(label(r) for r in out) + "]"


def describe(op) -> str:
    kind = op[0]
    if kind == "put":
        return f"put({op[1]!r}, {op[2]!r}, value)"
    if kind == "get":
        return f"get({op[1]!r}, {op[2]!r})"
    if kind == "bump":
        return f"bump({op[1]!r})"
    keys, adapters = [k for k, _ in op[1]], [a for _, a in op[1]]
    return f"lookup(keys={keys}, adapters={adapters}, compute)"


def apply(cache, op, step: int) -> tuple[str, str]:
    """Apply one operation; return what it showed: ``(result, "hits=.., misses=.., evictions=.., len=..")``.

    Values say where they came from: ``put@k`` was put at step k, ``computed@k`` returned by
    compute at step k (an old step after a bump means a stale embedding)."""
    kind = op[0]
    if kind == "put":
        cache.put(op[1], op[2], torch.tensor([float(step), -1.0]))  # a value unique to this step
        result = "-"
    elif kind == "get":
        got = cache.get(op[1], op[2])
        result = "None" if got is None else label(got)
    elif kind == "bump":
        cache.bump(op[1])
        result = f"version({op[1]!r}) = {cache.version(op[1])}"
    else:
        calls: list[list[int]] = []

        def compute(indices) -> torch.Tensor:
            idx = [int(i) for i in indices]
            calls.append(idx)
            return torch.tensor([[float(step), float(i)] for i in idx]).reshape(len(idx), 2)

        keys, adapters = [k for k, _ in op[1]], [a for _, a in op[1]]
        out = cache.lookup(keys, adapters, compute)
        called = "no compute call" if not calls else " then ".join(f"compute({c})" for c in calls)
        result = f"{called}, rows {rows_of(out)}"
    counters = f"hits={cache.hits}, misses={cache.misses}, evictions={cache.evictions}, len={len(cache)}"
    return result, counters


def trace(cache, ops) -> list:
    return [apply(cache, op, step) for step, op in enumerate(ops)]


# Fixed operations that tell apart bugs a short drawn sequence may not: a hit next to a key
# that misses twice (compute of every index vs. of the misses twice), several evictions.
RECHECK_CAPACITY = 2
RECHECK_OPS = [
    ("lookup", [(0, "a")]),
    ("lookup", [(0, "a"), (1, "a"), (1, "a")]),
    ("get", 0, "a"),
    ("put", 2, "a"),
    ("put", 1, "a"),
    ("bump", "a"),
    ("bump", "a"),
    ("lookup", [(0, "a"), (3, "a")]),
]


def matching(capacity: int, ops, got: list) -> list[str]:
    """The classic bugs whose model reproduces every step the learner's cache showed."""
    names = []
    for bug, description in BUG_MODELS.items():
        try:
            if trace(Model(capacity, bug), ops) == got:
                names.append(description)
        except Exception:  # that bug crashes on these operations
            continue
    return names


def diagnose_trace(capacity: int, ops, got: list, cache_cls=None) -> str | None:
    """The classic bug whose model reproduces everything the learner's cache showed; when
    several do, the learner's cache replays :data:`RECHECK_OPS` to tell them apart, and the
    ones still left are all listed, never just the first."""
    names = matching(capacity, ops, got)
    if len(names) > 1 and cache_cls is not None:
        try:
            again = matching(RECHECK_CAPACITY, RECHECK_OPS, trace(cache_cls(RECHECK_CAPACITY), RECHECK_OPS))
            names = [n for n in names if n in again]
        except Exception:  # the learner's cache fails on the fixed operations: keep the list
            pass
    if len(names) > 1:
        return SEVERAL_BUGS + "; ".join(names)
    return CLASSIC_BUG + names[0] if names else None


def drawn_of(capacity, ops, upto: int) -> dict:
    return {"capacity": capacity, "operations": [describe(op) for op in ops[: upto + 1]]}


def run_learner(cache_cls, ref_cls, capacity: int, ops) -> None:
    """Replay ``ops`` on the learner's cache, the reference answer and the model; compare every step."""
    model, ref_cache = Model(capacity), ref_cls(capacity)
    mine = cache_cls(capacity)
    got: list = []
    for step, op in enumerate(ops):
        expected = apply(model, op, step)
        assert apply(ref_cache, op, step) == expected, "grader error: the reference disagrees with the model"
        try:
            shown = apply(mine, op, step)
        except NotImplementedError:
            raise  # an unfinished stub: reported as "not implemented yet"
        except Exception as err:
            raise AssertionError(
                explain(
                    f"step {step}: {describe(op)} raised {type(err).__name__}: {err}",
                    drawn=drawn_of(capacity, ops, step),
                    expected=f"{expected[0]}; {expected[1]}",
                )
            ) from None
        got.append(shown)
        if shown == expected:
            continue
        part = "returned a different result" if shown[0] != expected[0] else "left different counters"
        raise AssertionError(
            explain(
                f"step {step}: {describe(op)} {part} than a correct LRU cache "
                "(put@k: the value put at step k; computed@k: a row compute returned at step k)",
                drawn=drawn_of(capacity, ops, step),
                expected=f"{expected[0]}; {expected[1]}",
                got=f"{shown[0]}; {shown[1]}",
                hint=diagnose_trace(capacity, ops[: step + 1], got, cache_cls),
            )
        )
