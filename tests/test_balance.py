from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.table import CompiledModel, CompiledTarget, CompiledUpstream
from runtime.balance import LatencyBook, RoundRobinBook, order_targets, round_robin_key


def target(name: str, priority: int = 0, weight: float = 1.0) -> CompiledTarget:
    upstream = CompiledUpstream(
        name=name, kind="mock", base_url="http://mock.invalid", state_id=f"up-{name}"
    )
    return CompiledTarget(
        upstream=upstream, model=None, state_id=f"t-{name}", priority=priority, weight=weight
    )


def model(strategy: str, *targets: CompiledTarget, name: str = "m") -> CompiledModel:
    return CompiledModel(name=name, targets=targets, strategy=strategy)


def names(order: object) -> list[str]:
    assert isinstance(order, list | tuple)
    return [t.upstream.name for t in order]


def order(m: CompiledModel, seed: int = 0, **books: object) -> list[str]:
    latency = books.get("latency", LatencyBook())
    counters = books.get("counters", RoundRobinBook())
    assert isinstance(latency, LatencyBook)
    assert isinstance(counters, RoundRobinBook)
    return names(order_targets(m, latency, random.Random(seed), counters))


@pytest.mark.parametrize("strategy", ["priority", "weighted", "round_robin", "least_latency"])
def test_single_target_fast_path(strategy: str) -> None:
    m = model(strategy, target("a"))
    counters = RoundRobinBook()
    result = order_targets(m, LatencyBook(), random.Random(0), counters)
    assert result is m.targets
    assert len(counters) == 0


def test_no_targets() -> None:
    assert order_targets(model("weighted"), LatencyBook(), random.Random(0), RoundRobinBook()) == ()


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        order(model("fastest", target("a"), target("b")))


def test_priority_is_ascending_and_stable() -> None:
    m = model("priority", target("a", 2), target("b", 1), target("c", 2), target("d", 0))
    assert order(m) == ["d", "b", "a", "c"]


# --- weighted -----------------------------------------------------------------------------------


@given(
    weights=st.lists(st.floats(0.01, 100.0), min_size=2, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_weighted_is_a_permutation(weights: list[float], seed: int) -> None:
    m = model("weighted", *(target(f"t{i}", weight=w) for i, w in enumerate(weights)))
    result = order(m, seed)
    assert sorted(result) == sorted(t.upstream.name for t in m.targets)


def test_weighted_is_deterministic_for_a_seed() -> None:
    m = model("weighted", target("a"), target("b"), target("c"))
    assert order(m, 42) == order(m, 42)


def test_weighted_first_choice_tracks_weights() -> None:
    m = model("weighted", target("a", weight=1), target("b", weight=2), target("c", weight=7))
    rng = random.Random(1234)
    draws = 20_000
    firsts = Counter(
        order_targets(m, LatencyBook(), rng, RoundRobinBook())[0].upstream.name
        for _ in range(draws)
    )
    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(firsts[name] / draws - share) < 0.02


def test_weighted_second_choice_is_proportional_among_the_rest() -> None:
    m = model("weighted", target("a", weight=8), target("b", weight=1), target("c", weight=1))
    rng = random.Random(99)
    draws = 20_000
    seconds: Counter[str] = Counter()
    for _ in range(draws):
        result = names(order_targets(m, LatencyBook(), rng, RoundRobinBook()))
        if result[0] == "a":
            seconds[result[1]] += 1
    total = seconds["b"] + seconds["c"]
    assert abs(seconds["b"] / total - 0.5) < 0.03


@given(seed=st.integers(0, 2**32))
def test_weighted_zero_weight_is_standby(seed: int) -> None:
    m = model(
        "weighted",
        target("idle2", priority=2, weight=0),
        target("a", weight=1),
        target("idle1", priority=1, weight=0),
        target("b", weight=3),
    )
    assert order(m, seed)[2:] == ["idle1", "idle2"]


# --- round robin --------------------------------------------------------------------------------


def test_round_robin_rotates() -> None:
    m = model("round_robin", target("a"), target("b"), target("c"))
    counters = RoundRobinBook()
    got = [order(m, counters=counters) for _ in range(4)]
    assert got == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


@given(size=st.integers(2, 7), rounds=st.integers(1, 5), warmup=st.integers(0, 6))
def test_round_robin_cycles_evenly(size: int, rounds: int, warmup: int) -> None:
    m = model("round_robin", *(target(f"t{i}") for i in range(size)))
    counters = RoundRobinBook()
    for _ in range(warmup):
        order(m, counters=counters)
    firsts = Counter(order(m, counters=counters)[0] for _ in range(size * rounds))
    assert set(firsts.values()) == {rounds}
    assert len(firsts) == size


def test_round_robin_counter_is_per_model_and_survives_reload() -> None:
    a, b = target("a"), target("b")
    counters = RoundRobinBook()
    m1 = model("round_robin", a, b, name="m1")
    m2 = model("round_robin", a, b, name="m2")
    assert order(m1, counters=counters)[0] == "a"
    assert order(m2, counters=counters)[0] == "a"
    reloaded = model("round_robin", target("a"), target("b"), name="m1")  # equal, new objects
    assert order(reloaded, counters=counters)[0] == "b"


def test_round_robin_restarts_when_targets_change() -> None:
    counters = RoundRobinBook()
    m = model("round_robin", target("a"), target("b"), target("c"))
    order(m, counters=counters)
    changed = model("round_robin", target("a"), target("b"), target("d"))
    assert round_robin_key(changed) != round_robin_key(m)
    assert order(changed, counters=counters)[0] == "a"
    assert counters.prune([round_robin_key(changed)]) == 1
    assert len(counters) == 1


# --- least latency ------------------------------------------------------------------------------


def test_latency_ewma() -> None:
    book = LatencyBook()
    assert book.latency("x") is None
    book.observe("x", 1.0)
    assert book.latency("x") == 1.0
    book.observe("x", 2.0)
    assert book.latency("x") == pytest.approx(1.3)
    book.observe("x", float("nan"))
    book.observe("x", -1.0)
    assert book.latency("x") == pytest.approx(1.3)


def test_latency_alpha_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="alpha"):
        LatencyBook(alpha=0.0)


def test_least_latency_measures_unknown_targets_first() -> None:
    m = model("least_latency", target("slow"), target("new2", 2), target("fast"), target("new1", 1))
    book = LatencyBook()
    book.observe("t-slow", 2.0)
    book.observe("t-fast", 0.5)
    assert order(m, latency=book) == ["new1", "new2", "fast", "slow"]
    for name in ("new1", "new2"):
        book.observe(f"t-{name}", 1.0)
    assert order(m, latency=book) == ["fast", "new1", "new2", "slow"]  # ties: by priority


def test_latency_prune() -> None:
    book = LatencyBook()
    book.observe("a", 1.0)
    book.observe("b", 1.0)
    assert book.prune(["b"]) == 1
    assert len(book) == 1
    assert book.latency("a") is None
