"""Prometheus metrics for one gateway process, on its own registry (no global state).

    interlock_requests_total{api,status}         interlock_request_duration_seconds{api}
    interlock_reload_attempts_total               interlock_reload_success_total
    interlock_reload_rejected_total               interlock_config_info{version}
    interlock_in_flight_requests
    interlock_usage_requests_total{model,upstream,key}    (key: the key's id, never the key)
    interlock_usage_tokens_total{model,upstream,key,kind} (kind: input | output | cached)
    interlock_usage_cost_total{model,upstream,key,currency}
    interlock_ledger_queue_depth  interlock_ledger_written_total  interlock_ledger_dropped_total
    interlock_ledger_write_errors_total  interlock_ledger_write_seconds
    interlock_limit_refusals_total  interlock_limit_backend_errors_total
    interlock_cache_lookups_total{result}  (result: hit | miss | bypass)
    interlock_cache_stores_total  interlock_cache_skipped_total
    interlock_cache_backend_errors_total

Label values are API names, status codes and config versions: never keys, bodies or headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from runtime.caching import CacheStats
    from runtime.state.ledger import Ledger, UsageRecord

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "interlock_requests",
            "Requests answered, by client API and HTTP status.",
            ["api", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "interlock_request_duration_seconds",
            "Time to the response headers (streams: to the end of the stream).",
            ["api"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "interlock_in_flight_requests", "Requests being served.", registry=self.registry
        )
        self.reload_attempts = Counter(
            "interlock_reload_attempts",
            "Reloads that found changed config bytes.",
            registry=self.registry,
        )
        self.reload_success = Counter(
            "interlock_reload_success",
            "Reloads that published a new table.",
            registry=self.registry,
        )
        self.reload_rejected = Counter(
            "interlock_reload_rejected",
            "Reloads rejected; the previous table kept serving.",
            registry=self.registry,
        )
        self.config = Gauge(
            "interlock_config_info",
            "The live config version (value 1).",
            ["version"],
            registry=self.registry,
        )
        self.usage_requests = Counter(
            "interlock_usage_requests",
            "Requests in the usage ledger, by model, upstream and key id.",
            ["model", "upstream", "key"],
            registry=self.registry,
        )
        self.usage_tokens = Counter(
            "interlock_usage_tokens",
            "Tokens in the usage ledger (kind: input, output, cached).",
            ["model", "upstream", "key", "kind"],
            registry=self.registry,
        )
        self.usage_cost = Counter(
            "interlock_usage_cost",
            "Cost in the usage ledger, in the model's pricing currency.",
            ["model", "upstream", "key", "currency"],
            registry=self.registry,
        )
        self.ledger_write = Histogram(
            "interlock_ledger_write_seconds",
            "Time to write one batch of ledger records.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.ledger: Ledger | None = None
        self.registry.register(_LedgerCollector(lambda: self.ledger))
        self.limit_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.registry.register(_LimitsCollector(lambda: self.limit_counts()))
        self.cache_stats: Callable[[], CacheStats | None] = lambda: None  # None: no cache
        self.registry.register(_CacheCollector(lambda: self.cache_stats()))
        self._children: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._usage: dict[tuple[str, str, str, str], tuple[Counter, ...]] = {}

    def observe(self, api: str, status: int, seconds: float) -> None:
        # PERF: cache the labelled children; labels() takes a lock and builds a tuple each call.
        child = self._children.get((api, status))
        if child is None:
            child = self._children[(api, status)] = self.requests.labels(api, str(status))
        child.inc()
        histogram = self._histograms.get(api)
        if histogram is None:
            histogram = self._histograms[api] = self.duration.labels(api)
        histogram.observe(seconds)

    def observe_usage(self, record: UsageRecord) -> None:
        labels = (record.model or "", record.upstream or "", record.key_id or "")
        currency = record.currency or ""
        children = self._usage.get((*labels, currency))
        if children is None:
            children = self._usage[(*labels, currency)] = (
                self.usage_requests.labels(*labels),
                self.usage_tokens.labels(*labels, "input"),
                self.usage_tokens.labels(*labels, "output"),
                self.usage_tokens.labels(*labels, "cached"),
                self.usage_cost.labels(*labels, currency),
            )
        requests, input_tokens, output_tokens, cached_tokens, cost = children
        requests.inc()
        if record.input_tokens:
            input_tokens.inc(record.input_tokens)
        if record.output_tokens:
            output_tokens.inc(record.output_tokens)
        if record.cached_tokens:
            cached_tokens.inc(record.cached_tokens)
        if record.cost:
            cost.inc(record.cost)

    def observe_ledger_write(self, records: int, seconds: float) -> None:
        self.ledger_write.observe(seconds)

    def set_version(self, version: str) -> None:
        self.config.clear()
        self.config.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LedgerCollector(Collector):
    """The ledger's queue depth and counters, read at scrape time."""

    def __init__(self, ledger: Callable[[], Ledger | None]) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self._ledger()
        if ledger is None:
            return
        yield GaugeMetricFamily(
            "interlock_ledger_queue_depth", "Ledger records waiting to be written.", ledger.depth
        )
        for name, doc, value in (
            ("interlock_ledger_written", "Ledger records written to the store.", ledger.written),
            (
                "interlock_ledger_dropped",
                "Ledger records dropped because the queue was full.",
                ledger.dropped,
            ),
            (
                "interlock_ledger_write_errors",
                "Failed ledger writes (retried).",
                ledger.write_errors,
            ),
        ):
            yield CounterMetricFamily(name, doc, value)


class _LimitsCollector(Collector):
    """Requests refused by a limit policy, and limits backend failures (admitted or denied as
    `limits.on_backend_error` says)."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        refusals, errors = self._counts()
        yield CounterMetricFamily(
            "interlock_limit_refusals", "Requests refused by a limit policy (429).", refusals
        )
        yield CounterMetricFamily(
            "interlock_limit_backend_errors", "Limits backend failures (Redis away).", errors
        )


class _CacheCollector(Collector):
    """The response cache's lookups by result, stores, answers not stored (too large, or a
    stream that did not complete) and backend failures (each served as a miss)."""

    def __init__(self, stats: Callable[[], CacheStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        lookups = CounterMetricFamily(
            "interlock_cache_lookups", "Response cache lookups, by result.", labels=["result"]
        )
        for result, value in (("hit", stats.hits), ("miss", stats.misses)):
            lookups.add_metric([result], value)
        lookups.add_metric(["bypass"], stats.bypasses)
        yield lookups
        for name, doc, value in (
            ("interlock_cache_stores", "Answers stored in the response cache.", stats.stores),
            (
                "interlock_cache_skipped",
                "Answers not stored: larger than max_entry_bytes, or a stream cut short.",
                stats.skipped,
            ),
            (
                "interlock_cache_backend_errors",
                "Response cache backend failures (Redis away); served as misses.",
                stats.errors,
            ),
        ):
            yield CounterMetricFamily(name, doc, value)
