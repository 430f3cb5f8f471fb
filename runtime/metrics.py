"""Prometheus metrics for one gateway process, on its own registry (no global state).

    interlock_requests_total{api,status}         interlock_request_duration_seconds{api}
    interlock_reload_attempts_total               interlock_reload_success_total
    interlock_reload_rejected_total               interlock_config_info{version}
    interlock_in_flight_requests

Label values are API names, status codes and config versions: never keys, bodies or headers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self._children: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

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

    def set_version(self, version: str) -> None:
        self.config.clear()
        self.config.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
