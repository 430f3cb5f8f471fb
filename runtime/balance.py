"""The order in which a model's targets are tried, per request, by the model's ``strategy``.

``order_targets`` returns every target exactly once; the pipeline walks the order, skipping
targets whose breaker refuses, and fails over down the list. The state strategies need (latency
averages, round-robin counters) lives in books the gateway keeps across reloads, keyed by stable
ids, never in the compiled table::

    priority       ascending ``priority``, ties in declared order
    weighted       weighted random order without replacement: the first target is ``t`` with
                   probability ``weight(t) / sum(weights)``, the second likewise among the rest...
                   Targets with weight <= 0 come last, in priority order (standby only).
    round_robin    declared order rotated by a counter kept per model
    least_latency  unmeasured targets first (in priority order, so they get measured), then by
                   ascending EWMA latency

Example: targets a (priority 2), b (priority 1), strategy priority -> ``[b, a]``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeVar

from compiler.table import CompiledModel, CompiledTarget

__all__ = [
    "LatencyBook",
    "RoundRobinBook",
    "order_targets",
    "round_robin_key",
]


class LatencyBook:
    """Exponentially weighted moving average of each target's latency, keyed by ``state_id``.

    Example (alpha 0.3): observe 1.0, then 2.0 -> ``latency(id) == 0.3 * 2.0 + 0.7 * 1.0 == 1.3``.
    """

    __slots__ = ("_ewma", "alpha")

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._ewma: dict[str, float] = {}

    def observe(self, state_id: str, seconds: float) -> None:
        """Fold one measured latency into the target's average (negative or NaN are ignored)."""
        if not seconds >= 0.0:
            return
        previous = self._ewma.get(state_id)
        if previous is None:
            self._ewma[state_id] = seconds
        else:
            self._ewma[state_id] = previous + self.alpha * (seconds - previous)

    def latency(self, state_id: str) -> float | None:
        """The target's average latency in seconds, None if never measured."""
        return self._ewma.get(state_id)

    def prune(self, live_ids: Iterable[str]) -> int:
        """Forget targets not in `live_ids`; returns how many were forgotten."""
        return _prune(self._ewma, live_ids)

    def __len__(self) -> int:
        return len(self._ewma)


def round_robin_key(model: CompiledModel) -> tuple[str, ...]:
    """The stable key of a model's round-robin counter: its name and its targets' state ids, so a
    reload that changes the targets starts a fresh rotation. Example: ``("m", "id-a", "id-b")``."""
    return (model.name, *[target.state_id for target in model.targets])


class RoundRobinBook:
    """Round-robin counters, one per ``round_robin_key``; lives across reloads."""

    __slots__ = ("_counters",)

    def __init__(self) -> None:
        self._counters: dict[Hashable, int] = {}

    def advance(self, key: Hashable, size: int) -> int:
        """The rotation for this request in ``range(size)``, then step the counter.

        Example: size 3 -> 0, 1, 2, 0, ...
        """
        current = self._counters.get(key, 0) % size
        self._counters[key] = (current + 1) % size
        return current

    def prune(self, live_keys: Iterable[Hashable]) -> int:
        """Forget counters whose key is not in `live_keys`; returns how many were forgotten.
        Example: ``book.prune(round_robin_key(m) for m in table.models.values())``."""
        return _prune(self._counters, live_keys)

    def __len__(self) -> int:
        return len(self._counters)


def order_targets(
    model: CompiledModel,
    book: LatencyBook,
    rng: random.Random,
    counters: RoundRobinBook,
) -> Sequence[CompiledTarget]:
    """Every target of `model`, in the order to try them for this request.

    A model with one target returns its ``targets`` tuple itself (no allocation, no state
    touched); otherwise a new list. Callers must not mutate the result. Raises ValueError for a
    strategy the compiler would not have produced.
    """
    targets = model.targets
    if len(targets) <= 1:
        return targets
    order = _STRATEGIES.get(model.strategy)
    if order is None:
        raise ValueError(f"unknown strategy {model.strategy!r} for model {model.name!r}")
    return order(model, book, rng, counters)


def _priority(target: CompiledTarget) -> int:
    return target.priority


def _by_priority(
    model: CompiledModel, book: LatencyBook, rng: random.Random, counters: RoundRobinBook
) -> list[CompiledTarget]:
    return sorted(model.targets, key=_priority)


def _weighted(
    model: CompiledModel, book: LatencyBook, rng: random.Random, counters: RoundRobinBook
) -> list[CompiledTarget]:
    # NOTE: Efraimidis-Spirakis: sorting by Exp(1) / weight is weighted sampling without
    # replacement in one pass. 1 - random() is in (0, 1], so the log is finite.
    targets = model.targets
    draw = rng.random
    keyed: list[tuple[float, int, int]] = []
    for index, target in enumerate(targets):
        weight = target.weight
        key = -math.log(1.0 - draw()) / weight if weight > 0 else math.inf
        keyed.append((key, target.priority, index))
    keyed.sort()
    return [targets[index] for _, _, index in keyed]


def _round_robin(
    model: CompiledModel, book: LatencyBook, rng: random.Random, counters: RoundRobinBook
) -> list[CompiledTarget]:
    targets = model.targets
    start = counters.advance(round_robin_key(model), len(targets))
    return [*targets[start:], *targets[:start]]


def _least_latency(
    model: CompiledModel, book: LatencyBook, rng: random.Random, counters: RoundRobinBook
) -> list[CompiledTarget]:
    def key(target: CompiledTarget) -> tuple[bool, float, int]:
        seen = book.latency(target.state_id)
        return (seen is not None, 0.0 if seen is None else seen, target.priority)

    return sorted(model.targets, key=key)


_Strategy = Callable[
    [CompiledModel, LatencyBook, random.Random, RoundRobinBook], list[CompiledTarget]
]

_STRATEGIES: Final[Mapping[str, _Strategy]] = MappingProxyType(
    {
        "priority": _by_priority,
        "weighted": _weighted,
        "round_robin": _round_robin,
        "least_latency": _least_latency,
    }
)

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _prune(entries: dict[_K, _V], live: Iterable[_K]) -> int:
    keep = set(live)
    dead = [key for key in entries if key not in keep]
    for key in dead:
        del entries[key]
    return len(dead)
