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
# Enclave recovery (locked seen -> every stored session restored): a KMS round trip plus
# the replay, from under a second to minutes with retries.
_RECOVERY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


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
        # Sealed state (parent/enclave_supervisor.py). Labels are fixed words.
        self.enclave_ready = Gauge(
            "enclave_ready",
            "1 while the enclave is unlocked and every stored session restored, else 0.",
            registry=self.registry,
        )
        self.enclave_recovery_seconds = Histogram(
            "enclave_recovery_seconds",
            "Time from seeing the enclave locked (started or restarted) to every stored"
            " session restored.",
            buckets=_RECOVERY_BUCKETS,
            registry=self.registry,
        )
        self.enclave_last_recovery_seconds = Gauge(
            "enclave_last_recovery_seconds",
            "Duration of the latest enclave recovery (locked seen -> all sessions restored).",
            registry=self.registry,
        )
        self.enclave_restored_sessions = Counter(
            "enclave_restored_sessions_total",
            "Sealed session states replayed into the enclave, by outcome (restored, refused).",
            ("outcome",),
            registry=self.registry,
        )
        self.enclave_recovery_failures = Counter(
            "enclave_recovery_failures_total",
            "Failed unlock or restore attempts by reason (e.g. unlock_forbidden: KMS refused"
            " the attestation; unlock_unavailable: KMS unreachable; database).",
            ("reason",),
            registry=self.registry,
        )
        self.sealed_states_stored = Counter(
            "sealed_states_stored_total",
            "Sealed session states written to the database, by source"
            " (confirm, aggregates, logs, disclose, checkpoint).",
            ("source",),
            registry=self.registry,
        )
        self.sealed_states_refused = Counter(
            "sealed_states_refused_total",
            "Sealed blobs from the enclave refused (malformed, or naming another session).",
            ("source",),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format of every series in this registry."""
        return generate_latest(self.registry)
