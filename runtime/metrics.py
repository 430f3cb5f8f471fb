"""Prometheus metrics for the gateway, on a registry of its own (no global state).

    interlock_requests_total{api,status}         interlock_request_duration_seconds{api}
    interlock_reload_attempts_total               interlock_reload_success_total
    interlock_reload_rejected_total               interlock_config_info{version}
    interlock_in_flight_requests
    interlock_usage_requests_total{model,upstream,key}    (key: the key's id, never the key)
    interlock_usage_tokens_total{model,upstream,key,kind} (kind: input | output | cached)
    interlock_usage_cost_total{model,upstream,key,currency}
    interlock_ledger_queue_depth  interlock_ledger_written_total  interlock_ledger_dropped_total
    interlock_ledger_write_errors_total  interlock_ledger_write_seconds
    interlock_limit_refusals_total{policy}  interlock_limit_backend_errors_total
    interlock_cache_lookups_total{result}  (result: hit | miss | bypass)
    interlock_cache_stores_total  interlock_cache_skipped_total
    interlock_cache_backend_errors_total
    interlock_upstream_up{upstream}  interlock_upstream_breaker_state{upstream} (0 closed,
    1 half-open, 2 open)  interlock_upstream_error_rate{upstream}
    interlock_upstream_latency_ewma_seconds{upstream}

Label values are API names, status codes, model, upstream and policy names, key ids and config
versions: never keys, bodies or headers.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` and every worker's values
live in files there (prometheus-client's multiprocess mode); whichever worker answers a scrape
sums them, so counters are totals over all workers. Gauges of live workers are summed (in-flight
requests, ledger queue), or take the worst (upstream up: the minimum; breaker state, error rate,
latency: the maximum). Counts kept as plain ints elsewhere (the ledger's, the cache's, limit
refusals) are copied into counters before each scrape and, with several workers, at the end of
each request and after each ledger write, so that another worker's scrape sees them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from runtime.caching import CacheStats
    from runtime.health import UpstreamHealth
    from runtime.metering import Spend
    from runtime.state.ledger import Ledger

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_Mode = Literal["livesum", "livemin", "livemax"]
_PUBLISH_EVERY_S: Final = 1.0  # multiprocess: upstream gauges are written at most this often


class _Mirror:
    """Copies a count kept as a plain int elsewhere into a Counter. `read` returns the object
    that owns the count and its value; a new owner (a ledger reopened on another store) counts
    from zero again."""

    __slots__ = ("child", "owner", "read", "seen")

    def __init__(self, child: Counter, read: Callable[[], tuple[object, int]]) -> None:
        self.child = child
        self.read = read
        self.owner: object = None
        self.seen = 0

    def sync(self) -> None:
        owner, value = self.read()
        if owner is not self.owner:
            self.owner, self.seen = owner, 0
        if value > self.seen:
            self.child.inc(value - self.seen)
            self.seen = value


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters()
        self._gauges()
        # What the gateway hands in (see `Gateway.__init__`), read when syncing
        self.ledger: Ledger | None = None
        self.limit_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.refusals_by_policy: Callable[[], Mapping[str, int]] = dict
        self.cache_stats: Callable[[], CacheStats | None] = lambda: None  # None: no cache
        self.in_flight_count: Callable[[], int] = lambda: 0
        self.upstreams: Callable[[], list[UpstreamHealth]] = list
        self._children: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._usage: dict[tuple[str | None, ...], tuple[Counter, ...]] = {}
        self._usage_totals: dict[tuple[str | None, ...], list[float]] = {}
        self._refusals: dict[str, int] = {}  # refusals counted so far, by policy
        self._mirrors = self._make_mirrors()
        self._version: str | None = None
        self._upstream_names: set[str] = set()
        self._published_at = 0.0

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _counters(self) -> None:
        counter = self._counter
        self.requests = counter(
            "interlock_requests",
            "Requests answered, by client API and HTTP status.",
            ("api", "status"),
        )
        self.duration = Histogram(
            "interlock_request_duration_seconds",
            "Time to the response headers (streams: to the end of the stream).",
            ["api"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.reload_attempts = counter(
            "interlock_reload_attempts", "Reloads that found changed config bytes."
        )
        self.reload_success = counter(
            "interlock_reload_success", "Reloads that published a new table."
        )
        self.reload_rejected = counter(
            "interlock_reload_rejected", "Reloads rejected; the previous table kept serving."
        )
        usage = ("model", "upstream", "key")
        self.usage_requests = counter(
            "interlock_usage_requests",
            "Metered requests, by model, upstream and key id.",
            usage,
        )
        self.usage_tokens = counter(
            "interlock_usage_tokens",
            "Tokens of metered requests (kind: input, output, cached).",
            (*usage, "kind"),
        )
        self.usage_cost = counter(
            "interlock_usage_cost",
            "Cost of metered requests, in the model's pricing currency.",
            (*usage, "currency"),
        )
        self.ledger_write = Histogram(
            "interlock_ledger_write_seconds",
            "Time to write one batch of ledger records.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.ledger_written = counter(
            "interlock_ledger_written", "Ledger records written to the store."
        )
        self.ledger_dropped = counter(
            "interlock_ledger_dropped", "Ledger records dropped because the queue was full."
        )
        self.ledger_write_errors = counter(
            "interlock_ledger_write_errors", "Failed ledger writes (retried)."
        )
        self.limit_refusals = counter(
            "interlock_limit_refusals",
            "Requests refused by a limit policy (429), by policy.",
            ("policy",),
        )
        self.limit_backend_errors = counter(
            "interlock_limit_backend_errors", "Limits backend failures (Redis away)."
        )
        self.cache_lookups = counter(
            "interlock_cache_lookups", "Response cache lookups, by result.", ("result",)
        )
        self.cache_stores = counter(
            "interlock_cache_stores", "Answers stored in the response cache."
        )
        self.cache_skipped = counter(
            "interlock_cache_skipped",
            "Answers not stored: larger than max_entry_bytes, or a stream cut short.",
        )
        self.cache_backend_errors = counter(
            "interlock_cache_backend_errors",
            "Response cache backend failures (Redis away); served as misses.",
        )

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], mode: _Mode) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def _gauges(self) -> None:
        gauge = self._gauge
        self.in_flight = gauge(
            "interlock_in_flight_requests", "Requests being served.", (), "livesum"
        )
        self.config = gauge(
            "interlock_config_info", "The live config version (value 1).", ("version",), "livemax"
        )
        self.ledger_depth = gauge(
            "interlock_ledger_queue_depth", "Ledger records waiting to be written.", (), "livesum"
        )
        upstream = ("upstream",)
        self.upstream_up = gauge(
            "interlock_upstream_up",
            "1 unless the upstream is down (breakers open, or its last attempt failed).",
            upstream,
            "livemin",
        )
        self.upstream_breaker = gauge(
            "interlock_upstream_breaker_state",
            "Worst breaker state of the upstream's targets: 0 closed, 1 half-open, 2 open.",
            upstream,
            "livemax",
        )
        self.upstream_error_rate = gauge(
            "interlock_upstream_error_rate",
            "Recent share of failed attempts (moving average over about 20 attempts).",
            upstream,
            "livemax",
        )
        self.upstream_latency = gauge(
            "interlock_upstream_latency_ewma_seconds",
            "Moving average of successful attempts' latency to the response headers.",
            upstream,
            "livemax",
        )

    def _make_mirrors(self) -> list[_Mirror]:
        def ledger(read: Callable[[Ledger], int]) -> Callable[[], tuple[object, int]]:
            return lambda: (self.ledger, read(self.ledger) if self.ledger is not None else 0)

        def cache(read: Callable[[CacheStats], int]) -> Callable[[], tuple[object, int]]:
            def value() -> tuple[object, int]:
                stats = self.cache_stats()
                return stats, read(stats) if stats is not None else 0

            return value

        return [
            _Mirror(self.ledger_written, ledger(lambda ledger: ledger.written)),
            _Mirror(self.ledger_dropped, ledger(lambda ledger: ledger.dropped)),
            _Mirror(self.ledger_write_errors, ledger(lambda ledger: ledger.write_errors)),
            _Mirror(self.limit_backend_errors, lambda: (self, self.limit_counts()[1])),
            _Mirror(self.cache_lookups.labels("hit"), cache(lambda stats: stats.hits)),
            _Mirror(self.cache_lookups.labels("miss"), cache(lambda stats: stats.misses)),
            _Mirror(self.cache_lookups.labels("bypass"), cache(lambda stats: stats.bypasses)),
            _Mirror(self.cache_stores, cache(lambda stats: stats.stores)),
            _Mirror(self.cache_skipped, cache(lambda stats: stats.skipped)),
            _Mirror(self.cache_backend_errors, cache(lambda stats: stats.errors)),
        ]

    def observe(self, api: str, status: int, seconds: float) -> None:
        """One answered request (at its very end)."""
        # PERF: cache the labelled children; labels() takes a lock and builds a tuple each call.
        child = self._children.get((api, status))
        if child is None:
            child = self._children[(api, status)] = self.requests.labels(api, str(status))
        child.inc()
        histogram = self._histograms.get(api)
        if histogram is None:
            histogram = self._histograms[api] = self.duration.labels(api)
        histogram.observe(seconds)
        if self.multiprocess:  # NOTE: another worker may answer the next scrape
            self.sync()

    def observe_usage(
        self, model: str | None, upstream: str | None, key_id: str | None, spend: Spend
    ) -> None:
        """A metered request's tokens and cost, once. PERF: kept in plain numbers here and
        added to the counters by `sync`: on scrape, and multiprocess by `observe`, which
        follows every request's settlement."""
        labels = (model, upstream, key_id, spend.currency)  # NOTE: None is '' when published
        totals = self._usage_totals.get(labels)
        if totals is None:
            totals = self._usage_totals[labels] = [0, 0, 0, 0, 0.0]
        totals[0] += 1
        totals[1] += spend.input_tokens
        totals[2] += spend.output_tokens
        totals[3] += spend.cached_tokens
        totals[4] += spend.cost

    def _publish_usage(self) -> None:
        for labels, totals in self._usage_totals.items():
            if not totals[0]:
                continue
            children = self._usage.get(labels)
            if children is None:
                names = [value or "" for value in labels]
                children = self._usage[labels] = (
                    self.usage_requests.labels(*names[:3]),
                    self.usage_tokens.labels(*names[:3], "input"),
                    self.usage_tokens.labels(*names[:3], "output"),
                    self.usage_tokens.labels(*names[:3], "cached"),
                    self.usage_cost.labels(*names),
                )
            for child, amount in zip(children, totals, strict=True):
                if amount:
                    child.inc(amount)
            totals[:] = (0, 0, 0, 0, 0.0)

    def observe_ledger_write(self, records: int, seconds: float) -> None:
        self.ledger_write.observe(seconds)
        if self.multiprocess:  # NOTE: the writer runs after the requests it writes
            self.sync()

    def set_version(self, version: str) -> None:
        previous, self._version = self._version, version
        if previous is not None and previous != version:
            if self.multiprocess:  # NOTE: a file keeps every label it saw: say 0 instead
                self.config.labels(previous).set(0)
            else:
                self.config.remove(previous)
        self.config.labels(version).set(1)

    def sync(self, *, publish: bool = False) -> None:
        """Copy the counts kept elsewhere into the metrics; with `publish` (or, multiprocess,
        at most every second) also the gauges of upstream state."""
        for mirror in self._mirrors:
            mirror.sync()
        self._publish_usage()
        seen = self._refusals
        for policy, count in self.refusals_by_policy().items():
            if count > seen.get(policy, 0):
                self.limit_refusals.labels(policy).inc(count - seen.get(policy, 0))
                seen[policy] = count
        self.in_flight.set(self.in_flight_count())
        ledger = self.ledger
        self.ledger_depth.set(ledger.depth if ledger is not None else 0)
        now = time.monotonic()
        if publish or now - self._published_at >= _PUBLISH_EVERY_S:
            self._published_at = now
            self._publish_upstreams()

    def _publish_upstreams(self) -> None:
        rows = self.upstreams()
        names = {row.name for row in rows}
        for row in rows:
            self.upstream_up.labels(row.name).set(1 if row.up else 0)
            self.upstream_breaker.labels(row.name).set(row.breaker_level)
            self.upstream_error_rate.labels(row.name).set(row.error_rate)
            if row.latency_s is not None:
                self.upstream_latency.labels(row.name).set(row.latency_s)
        if not self.multiprocess:  # NOTE: files cannot forget a label; one process can
            for gone in self._upstream_names - names:
                for gauge in (
                    self.upstream_up,
                    self.upstream_breaker,
                    self.upstream_error_rate,
                    self.upstream_latency,
                ):
                    with contextlib.suppress(KeyError):
                        gauge.remove(gone)
        self._upstream_names = names

    def render(self) -> bytes:
        self.sync(publish=True)
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def share_metrics() -> Callable[[], None]:
    """For a supervisor about to start workers: point them at one metrics directory (a fresh
    temporary one unless ``PROMETHEUS_MULTIPROC_DIR`` is set already). Returns the cleanup to
    call once they have exited: it removes the directory it made."""
    if os.environ.get(MULTIPROC_ENV):
        return lambda: None
    made = tempfile.mkdtemp(prefix="interlock-metrics-")
    os.environ[MULTIPROC_ENV] = made

    def cleanup() -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)

    return cleanup


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight requests, upstream state) from the sums."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
