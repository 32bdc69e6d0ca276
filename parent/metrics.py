"""Prometheus metrics of the parent's HTTPS API. Side: parent.

Each ``ApiMetrics`` owns its ``CollectorRegistry`` (not the process-global one), so
tests can build several applications in one process. Label values are bounded sets:
HTTP routes are the route *templates* (``/enclave/metrics/{session_id}``), never a
concrete path, because paths carry session ids, which are bearer secrets and would
also make the series count unbounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "UNMATCHED_ROUTE", "ApiMetrics"]

UNMATCHED_ROUTE = "<unmatched>"
"""The route label of requests that matched no route (404s): one series for all paths."""

# Latency buckets for an API whose calls cross vsock and PostgreSQL: 1 ms .. 10 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The parent's series, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration by route template.",
            ("route",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.enclave_operations = Counter(
            "enclave_operations_total",
            "Calls to the enclave by operation and outcome (ok, an error code, unavailable).",
            ("op", "outcome"),
            registry=self.registry,
        )
        self.enclave_duration = Histogram(
            "enclave_operation_duration_seconds",
            "Duration of calls to the enclave by operation.",
            ("op",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "active_sessions",
            "Unexpired sessions in the database (resynchronised at every purge run).",
            registry=self.registry,
        )
        self.ttl_purged_sessions = Counter(
            "ttl_purged_sessions_total",
            "Sessions deleted by the TTL purge.",
            registry=self.registry,
        )
        self.rate_limited_requests = Counter(
            "rate_limited_requests_total",
            "Requests refused with 429 by the per-client rate limit.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format of every series in this registry."""
        return generate_latest(self.registry)
