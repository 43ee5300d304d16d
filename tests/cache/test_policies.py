"""Eviction policies: one contract over all of them (against a brute-force model), then each one's exact order."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamahome.cache.policies import (
    POLICIES,
    EvictionPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    TimePolicy,
    make_policy,
    policy_names,
)
from llamahome.errors import CacheError, ConfigError

# --------------------------------------------------------------------------------------------- the model


@dataclass
class _Meta:
    inserted: int
    used: int  # tick of the last read or write
    written: float  # clock time of the last write
    written_tick: int
    count: int = 1
    count_tick: int = 0  # tick at which the entry reached its current count


@dataclass
class Model:
    """A slow, obviously-right statement of each policy's rule: sort every key by its sort key."""

    name: str
    meta: dict[Hashable, _Meta] = field(default_factory=dict)
    tick: int = 0

    def _next(self) -> int:
        self.tick += 1
        return self.tick

    def insert(self, key: Hashable, now: float) -> None:
        t = self._next()
        self.meta[key] = _Meta(inserted=t, used=t, written=now, written_tick=t, count=1, count_tick=t)

    def access(self, key: Hashable, now: float) -> None:
        m = self.meta[key]
        t = self._next()
        m.used = t
        m.count += 1
        m.count_tick = t

    def update(self, key: Hashable, now: float) -> None:
        self.access(key, now)
        m = self.meta[key]
        m.written, m.written_tick = now, m.used

    def remove(self, key: Hashable) -> None:
        del self.meta[key]

    def order(self) -> list[Hashable]:
        rules = {
            "lru": lambda m: (m.used,),
            "fifo": lambda m: (m.inserted,),
            "time": lambda m: (m.written, m.written_tick),
            "lfu": lambda m: (m.count, m.count_tick),
        }
        rule = rules[self.name]
        return sorted(self.meta, key=lambda k: rule(self.meta[k]))


_ops = st.lists(
    st.tuples(st.sampled_from(["insert", "access", "update", "remove", "victim"]), st.integers(0, 7)),
    max_size=60,
)


@pytest.fixture(params=list(POLICIES), scope="module")
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ------------------------------------------------------------------------------------------ the contract


class TestPolicyContract:
    """What every policy promises, parametrised over all of them."""

    def test_is_an_eviction_policy_with_its_name(self, name: str) -> None:
        p = make_policy(name)
        assert isinstance(p, EvictionPolicy)
        assert p.name == name
        assert len(p) == 0 and list(p) == []

    def test_victim_of_empty_policy_raises_key_error(self, name: str) -> None:
        with pytest.raises(KeyError):
            make_policy(name).victim()

    def test_tracks_inserted_and_removed_keys(self, name: str) -> None:
        p = make_policy(name)
        for i, key in enumerate(["a", b"a", "b"]):
            p.insert(key, float(i))
        assert len(p) == 3
        assert "a" in p and b"a" in p and "zz" not in p
        assert sorted(map(repr, p)) == sorted(map(repr, ["a", b"a", "b"]))
        p.remove(b"a")
        assert b"a" not in p and len(p) == 2
        p.clear()
        assert len(p) == 0 and list(p) == []

    def test_victim_is_the_head_of_the_order(self, name: str) -> None:
        p = make_policy(name)
        for i in range(5):
            p.insert(f"k{i}", float(i))
        p.access("k0", 5.0)
        p.update("k1", 6.0)
        order = list(p)
        assert p.victim() == order[0]
        p.remove(order[0])
        assert p.victim() == order[1]

    def test_removing_every_victim_drains_in_order(self, name: str) -> None:
        p = make_policy(name)
        for i in range(6):
            p.insert(i, float(i))
        for key in (2, 4, 4, 1):
            p.access(key, 10.0)
        expected = list(p)
        drained = []
        while len(p):
            victim = p.victim()
            drained.append(victim)
            p.remove(victim)
        assert drained == expected

    @settings(max_examples=150, deadline=None)
    @given(ops=_ops)
    def test_matches_the_model_on_any_sequence(self, name: str, ops: list[tuple[str, int]]) -> None:
        p, model = make_policy(name), Model(name)
        now = 0.0
        for op, key in ops:
            now += 1.0
            present = key in model.meta
            if op == "insert" and not present:
                p.insert(key, now)
                model.insert(key, now)
            elif op == "access" and present:
                p.access(key, now)
                model.access(key, now)
            elif op == "update" and present:
                p.update(key, now)
                model.update(key, now)
            elif op == "remove" and present:
                p.remove(key)
                model.remove(key)
            elif op == "victim" and model.meta:
                assert p.victim() == model.order()[0]
            assert list(p) == model.order()
            assert len(p) == len(model.meta)


# ------------------------------------------------------------------------------------- each exact order


def _filled(policy: EvictionPolicy, keys: str = "abcde") -> EvictionPolicy:
    for i, key in enumerate(keys):
        policy.insert(key, float(i))
    return policy


def test_lru_order() -> None:
    p = _filled(LRUPolicy())
    p.access("a")
    p.update("c")
    assert list(p) == ["b", "d", "e", "a", "c"]
    assert p.victim() == "b"


def test_fifo_order_ignores_reads_and_rewrites() -> None:
    p = _filled(FIFOPolicy())
    p.access("a")
    p.update("b")
    assert list(p) == ["a", "b", "c", "d", "e"]
    assert not FIFOPolicy.reads_matter


def test_lfu_order_counts_uses_and_breaks_ties_by_first_to_reach() -> None:
    p = _filled(LFUPolicy())
    p.access("c")
    p.access("a")
    p.access("a")
    p.update("e")  # an overwrite is a use too
    assert [p.count(k) for k in "abcde"] == [3, 1, 2, 1, 2]
    # count 1: b, d (inserted in that order); count 2: c before e (c reached 2 first); then a.
    assert list(p) == ["b", "d", "c", "e", "a"]
    p.remove("b")
    p.remove("d")
    assert p.victim() == "c"
    p.insert("f")  # a newcomer has the fewest uses: it is the next victim
    assert p.victim() == "f"


def test_lfu_victim_after_removing_the_lowest_bucket() -> None:
    p = _filled(LFUPolicy(), "ab")
    p.access("a")
    p.access("b")
    p.access("b")
    p.remove("a")  # empties count 2; the lowest count must be found again
    assert p.victim() == "b"


def test_time_order_is_write_time_and_reads_do_not_help() -> None:
    p = _filled(TimePolicy())
    p.access("a", 10.0)
    p.update("b", 11.0)
    assert list(p) == ["a", "c", "d", "e", "b"]
    assert p.age("a", 20.0) == 20.0 and p.age("b", 20.0) == 9.0


def test_time_policy_stale_entries_past_max_age() -> None:
    p = _filled(TimePolicy(max_age=3.0))  # written at 0..4
    assert p.stale(4.5) == ["a", "b"]  # ages 4.5 and 3.5
    assert p.stale(3.0) == ["a"]  # exactly max_age old counts as stale
    assert TimePolicy().stale(1e9) == []


@pytest.mark.parametrize("bad", [0, -1.0])
def test_time_policy_rejects_non_positive_max_age(bad: float) -> None:
    with pytest.raises(ConfigError, match="max_age"):
        TimePolicy(max_age=bad)


# --------------------------------------------------------------------------------------------- by name


@pytest.mark.parametrize("spelling", ["LRU", " lru ", "Lru"])
def test_names_are_case_insensitive(spelling: str) -> None:
    assert isinstance(make_policy(spelling), LRUPolicy)


def test_names_and_classes() -> None:
    assert policy_names() == ["lru", "lfu", "fifo", "time"]
    assert [type(make_policy(n)) for n in policy_names()] == [LRUPolicy, LFUPolicy, FIFOPolicy, TimePolicy]
    assert make_policy("lru") is not make_policy("lru")  # a fresh one every time


def test_an_instance_passes_through() -> None:
    p = TimePolicy(max_age=60)
    assert make_policy(p) is p


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"Unknown eviction policy 'lur'; use one of lru, lfu, fifo, time\. "
                                          r"Did you mean 'lru'\?") as info:
        make_policy("lur")
    assert isinstance(info.value, CacheError)


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not int"):
        make_policy(3)  # type: ignore[arg-type]


def test_base_hooks_name_the_missing_method() -> None:
    class Half(EvictionPolicy):
        pass

    with pytest.raises(NotImplementedError, match=r"Half\.victim"):
        Half().victim()


# ------------------------------------------------- order keys and SQL agree with the live policies


_histories = st.lists(st.tuples(st.sampled_from(["set", "get", "del"]), st.integers(0, 7)), max_size=60)


def _replay(history: list[tuple[str, int]], policy_name: str) -> tuple[list[int], list[int], list[int]]:
    """One history through a live policy, through ORDER_KEYS and through ORDER_SQL: three eviction orders."""
    import sqlite3

    from llamahome.cache.policies import ORDER_KEYS, ORDER_SQL, Usage

    live = make_policy(policy_name)
    records: dict[int, Usage] = {}
    seq = 0
    for tick, (op, key) in enumerate(history, start=1):
        now = float(tick)  # every event at its own time: ties are broken by seq alone
        if op == "set" and key not in records:
            seq += 1
            live.insert(key, now)
            records[key] = Usage(seq=seq, written=now, last_used=now, uses=1)
        elif op == "set":
            live.update(key, now)
            old = records[key]
            records[key] = Usage(old.seq, written=now, last_used=now, uses=old.uses + 1)
        elif op == "get" and key in records:
            live.access(key, now)
            old = records[key]
            records[key] = Usage(old.seq, old.written, last_used=now, uses=old.uses + 1)
        elif op == "del" and key in records:
            live.remove(key)
            del records[key]
    by_keys = sorted(records, key=lambda k: ORDER_KEYS[policy_name](records[k]))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, key INTEGER, created REAL, accessed REAL, hits INTEGER)")
    db.executemany(
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        [(u.seq, k, u.written, u.last_used, u.uses) for k, u in records.items()],
    )
    by_sql = [row[0] for row in db.execute(f"SELECT key FROM entries ORDER BY {ORDER_SQL[policy_name]}")]
    db.close()
    return list(live), by_keys, by_sql


@pytest.mark.parametrize("policy_name", ["lru", "lfu", "fifo", "time"])
@settings(max_examples=150, deadline=None)
@given(history=_histories)
def test_order_keys_and_sql_agree_with_the_live_policy(policy_name: str, history: list[tuple[str, int]]) -> None:
    live, by_keys, by_sql = _replay(history, policy_name)
    assert by_keys == live
    assert by_sql == live


def test_order_keys_tell_policies_apart() -> None:
    """The agreement test above can fail: the same history gives different orders under different policies."""
    history = [("set", 1), ("set", 2), ("set", 3), ("get", 1), ("get", 1), ("set", 2)]
    orders = {name: _replay(history, name)[0] for name in ("lru", "lfu", "fifo", "time")}
    assert orders == {"lru": [3, 1, 2], "lfu": [3, 2, 1], "fifo": [1, 2, 3], "time": [1, 3, 2]}


def test_eviction_order_and_policy_names() -> None:
    from llamahome.cache.policies import Usage, check_policy_name, eviction_order

    items = [("a", Usage(1, 5.0, 9.0, 1)), ("b", Usage(2, 1.0, 2.0, 3))]
    assert [n for n, _ in eviction_order(items, "lru", lambda i: i[1])] == ["b", "a"]
    assert [n for n, _ in eviction_order(items, "fifo", lambda i: i[1])] == ["a", "b"]
    assert check_policy_name(" LRU ") == "lru"
    with pytest.raises(ConfigError, match="Did you mean 'lru'"):
        check_policy_name("lruu", "model_cache.cleanup_policy")


# ------------------------------------------------------------------ every cache uses the one table (issue 12)


def test_every_cache_names_the_same_policies_and_the_disk_tier_orders_by_order_sql() -> None:
    from llamahome.cache import config, system
    from llamahome.cache.disk import POLICIES as disk_policies
    from llamahome.cache.disk import _sqlite
    from llamahome.cache.model import POLICIES as model_policies
    from llamahome.cache.policies import ORDER_SQL, POLICY_NAMES
    from llamahome.cache.training import POLICIES as training_policies

    for names in (config.POLICIES, system.POLICIES, disk_policies, model_policies, training_policies):
        assert tuple(names) == POLICY_NAMES
    assert _sqlite.POLICY_ORDER is ORDER_SQL


def test_model_cache_fifo_ignores_reads_and_breaks_ties_by_name() -> None:
    # The model cache used to order fifo by (created, last_used): a read changed which of two models put in
    # the same clock tick went first. With the shared ORDER_KEYS fifo is insertion order only (seq = rank by
    # (created, name)), as FIFOPolicy says: reads never change it.
    from llamahome.cache.model._store import ModelInfo, _usages
    from llamahome.cache.policies import POLICY_NAMES, eviction_order

    def info(name: str, created: float, used: float, hits: int) -> ModelInfo:
        return ModelInfo(name=name, size=1, raw_size=1, stored_size=1, ratio=1.0, compressed=False, files=(),
                         tensors=0, created=created, last_used=used, hits=hits, pinned=False, sharded=False)

    models = [info("b", 1.0, 1.0, 1), info("a", 1.0, 9.0, 5), info("c", 0.5, 0.5, 1)]
    usages = _usages(models)
    order = {p: [m.name for m in eviction_order(models, p, lambda m: usages[m.name])] for p in POLICY_NAMES}
    assert order["fifo"] == order["time"] == ["c", "a", "b"]  # "a" was read later; fifo does not care
    assert order["lru"] == ["c", "b", "a"]
    assert order["lfu"] == ["c", "b", "a"]  # one use each for b and c: the least recently used first
