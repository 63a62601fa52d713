"""Prometheus export (the ``metrics`` extra: ``pip install 'fsm-voice[metrics]'``).

:class:`PrometheusSink` watches a :class:`~fsm_voice.telemetry.Hub`; :class:`BrokerCollector` and
:class:`PeerCollector` read a token broker's and a local peer's counters at scrape time;
:func:`serve_metrics` serves ``/metrics`` on 127.0.0.1 (aiohttp, in the caller's event loop).

Names follow Prometheus conventions (``fsm_voice_`` prefix, base units, ``_total`` counters):

==========================================  =========  =========================================
metric                                      type       labels
==========================================  =========  =========================================
fsm_voice_sessions                          gauge      status
fsm_voice_transitions_total                 counter    event, source, target
fsm_voice_events_not_taken_total            counter    event, outcome (refused | stale)
fsm_voice_connection_attempts_total         counter    kind (start | restart | reconnect), reason
fsm_voice_errors_total                      counter    severity, code
fsm_voice_quality_alerts_total              counter    kind
fsm_voice_connect_duration_seconds          histogram  (start -> first active)
fsm_voice_detection_duration_seconds        histogram  (last healthy sign -> leaving active)
fsm_voice_outage_duration_seconds           histogram  (leaving active -> active again)
fsm_voice_recovery_duration_seconds         histogram  (first new attempt -> active again)
fsm_voice_rtt_seconds                       histogram  (one per quality sample)
fsm_voice_jitter_seconds                    histogram
fsm_voice_packet_loss_ratio                 histogram
fsm_voice_broker_requests_total             counter    outcome
fsm_voice_broker_keys_minted_total          counter
fsm_voice_broker_refusals_total             counter    reason
fsm_voice_broker_upstream_errors_total      counter
fsm_voice_broker_audit_failures_total       counter
fsm_voice_broker_request_duration_seconds   histogram  outcome
fsm_voice_peer_*                            counter    (the local peer's ``stats()``)
==========================================  =========  =========================================

``reason`` of a reconnect or restart is the event that caused it (``transport_failed``,
``ice_grace_expired``, ``server_error``, ``rollover_due``...). Error codes come from servers too:
at most :data:`MAX_CODES` distinct codes get their own series, the rest count as ``other``.

Transitions are counted in a plain dict per session on the dispatcher's hot path
(:attr:`SessionTap.counts`) and turned into samples only when scraped (a custom collector), so
export costs little per event.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fsm_voice.effects import OpenTransport
from fsm_voice.errors import VoiceError
from fsm_voice.policy import QualityAlert
from fsm_voice.ports import ConnectionMetrics
from fsm_voice.telemetry import (
    BaseSink,
    BoundedLabel,
    Hub,
    SessionTap,
    merge_counts,
    split_counts,
    statuses,
)

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("Prometheus export needs the 'metrics' extra: "
                      "pip install 'fsm-voice[metrics]'") from exc

if TYPE_CHECKING:
    from fsm_voice.broker.app import TokenBroker
    from fsm_voice.broker.audit import AuditEntry
    from fsm_voice.peer.server import RealtimePeer

__all__ = ["BrokerCollector", "PeerCollector", "PrometheusSink", "metrics_app",
           "serve_metrics"]

MAX_CODES = 100
LOCAL_HOST = "127.0.0.1"

#: Buckets (seconds) for connect/detection/outage/recovery and broker latency.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BROKER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Deferred:
    """A histogram whose observations are kept in a list and folded in when it is collected
    (or every :data:`FOLD_AT` values): an observation on the dispatcher's path is a list append
    instead of a locked bucket update."""

    FOLD_AT = 1024

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        self.pending.append(value)
        if len(self.pending) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        pending, self.pending = self.pending, []
        observe = self.histogram.observe
        for value in pending:
            observe(value)

    def collect(self) -> Iterable[Metric]:
        self.fold()
        return self.histogram.collect()


class PrometheusSink(BaseSink, Collector):
    """Session metrics of a hub, registered in ``registry`` (a fresh one by default)."""

    def __init__(self, hub: Hub, registry: CollectorRegistry | None = None) -> None:
        self.hub = hub
        self.registry = registry if registry is not None else CollectorRegistry()
        self.retired: dict[tuple[str, str, str, str], int] = {}
        """Counts of the sessions no longer tracked."""
        self._code = BoundedLabel(MAX_CODES)
        r = self.registry
        self.attempts = Counter("fsm_voice_connection_attempts", "Transport opens by kind "
                                "(start, restart, reconnect) and the event that caused them",
                                ["kind", "reason"], registry=r)
        self.errors = Counter("fsm_voice_errors", "Errors reported by sessions",
                              ["severity", "code"], registry=r)
        self.alerts = Counter("fsm_voice_quality_alerts", "Quality alerts by kind", ["kind"],
                              registry=r)
        self.durations = {
            kind: _Deferred(Histogram(f"fsm_voice_{kind}_duration_seconds", doc,
                                      buckets=DURATION_BUCKETS, registry=None))
            for kind, doc in (
                ("connect", "Time from start to the first active status"),
                ("detection", "Time from the last healthy sign to the status leaving active"),
                ("outage", "Time from the status leaving active to active again"),
                ("recovery", "Time from the first reconnect/restart attempt to active again"),
            )
        }
        self.rtt = _Deferred(Histogram("fsm_voice_rtt_seconds", "Round-trip time per quality "
                                       "sample", buckets=RTT_BUCKETS, registry=None))
        self.jitter = _Deferred(Histogram("fsm_voice_jitter_seconds", "Jitter per quality sample",
                                          buckets=JITTER_BUCKETS, registry=None))
        self.loss = _Deferred(Histogram("fsm_voice_packet_loss_ratio", "Packet loss fraction per "
                                        "sample", buckets=LOSS_BUCKETS, registry=None))
        self._histograms = [*self.durations.values(), self.rtt, self.jitter, self.loss]
        r.register(self)
        hub.add_sink(self)

    def close(self) -> None:
        """Stop watching the hub (the registry keeps what was counted)."""
        if self in self.hub.sinks:
            self.hub.remove_sink(self)

    # -- sink ---------------------------------------------------------------------------------
    def removed(self, tap: SessionTap) -> None:
        merge_counts(self.retired, tap.counts)

    def attempt(self, tap: SessionTap, effect: OpenTransport, cause: str) -> None:
        self.attempts.labels(str(effect.reason), cause).inc()

    def duration(self, tap: SessionTap, kind: str, seconds: float) -> None:
        self.durations[kind].observe(seconds)

    def error(self, tap: SessionTap, err: VoiceError) -> None:
        self.errors.labels(str(err.severity), self._code(err.code)).inc()

    def sample(self, tap: SessionTap, m: ConnectionMetrics) -> None:
        if m.latency_ms is not None:
            self.rtt.observe(m.latency_ms / 1000.0)
        if m.jitter_ms is not None:
            self.jitter.observe(m.jitter_ms / 1000.0)
        self.loss.observe(m.loss_fraction)

    def alert(self, tap: SessionTap, alert: QualityAlert) -> None:
        self.alerts.labels(alert.kind).inc()

    # -- collector ----------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("fsm_voice_sessions", "Tracked sessions by status",
                              labels=["status"])
        from fsm_voice.machine import STATUSES
        counts = statuses(self.hub)
        for status in STATUSES:
            g.add_metric([status], counts.get(status, 0))
        yield g
        taken, not_taken = split_counts(self.retired, self.hub)
        c = CounterMetricFamily("fsm_voice_transitions", "Machine transitions taken",
                                labels=["event", "source", "target"])
        for key, n in sorted(taken.items()):
            c.add_metric(list(key), n)
        yield c
        n_t = CounterMetricFamily("fsm_voice_events_not_taken",
                                  "Events the machine refused or the runtime dropped as stale",
                                  labels=["event", "outcome"])
        for key2, n in sorted(not_taken.items()):
            n_t.add_metric(list(key2), n)
        yield n_t
        for h in self._histograms:
            yield from h.collect()


class BrokerCollector(Collector):
    """A token broker's counters (read at scrape time) and its request latency histogram
    (fed by the broker's ``observers`` hook)."""

    def __init__(self, broker: TokenBroker, registry: CollectorRegistry | None = None) -> None:
        self.broker = broker
        self.registry = registry if registry is not None else CollectorRegistry()
        self.latency = Histogram("fsm_voice_broker_request_duration_seconds",
                                 "Token request handling time", ["outcome"],
                                 buckets=BROKER_BUCKETS, registry=self.registry)
        self.registry.register(self)
        broker.observers.append(self._observe)

    def _observe(self, entry: AuditEntry) -> None:
        self.latency.labels(entry.outcome).observe(entry.latency_ms / 1000.0)

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        counters = dict(self.broker.counters)
        req = CounterMetricFamily("fsm_voice_broker_requests", "Token requests by outcome",
                                  labels=["outcome"])
        ref = CounterMetricFamily("fsm_voice_broker_refusals", "Token requests refused, by "
                                  "reason", labels=["reason"])
        for outcome, n in sorted(counters.items()):
            if outcome == "audit_failed":
                continue
            req.add_metric([outcome], n)
            if outcome not in ("issued", "internal_error"):
                ref.add_metric([outcome], n)
        yield req
        yield ref
        yield CounterMetricFamily("fsm_voice_broker_keys_minted", "Ephemeral keys handed out",
                                  value=counters.get("issued", 0))
        yield CounterMetricFamily("fsm_voice_broker_upstream_errors",
                                  "Upstream key requests that failed",
                                  value=counters.get("upstream_error", 0))
        yield CounterMetricFamily("fsm_voice_broker_audit_failures",
                                  "Audit log writes that failed",
                                  value=counters.get("audit_failed", 0))


class PeerCollector(Collector):
    """The local peer's counters (:meth:`RealtimePeer.stats`), read at scrape time."""

    def __init__(self, peer: RealtimePeer, registry: CollectorRegistry | None = None) -> None:
        self.peer = peer
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        stats = self.peer.stats()
        for name in ("offers_received", "offers_answered", "offers_refused", "calls_created",
                     "calls_ended", "client_secrets_minted", "client_secrets_refused"):
            value = stats.get(name)
            if isinstance(value, int):
                yield CounterMetricFamily(f"fsm_voice_peer_{name}",
                                          f"Local peer: {name.replace('_', ' ')}", value=value)
        calls = GaugeMetricFamily("fsm_voice_peer_calls", "Local peer: live calls",
                                  value=stats.get("calls_active", 0))
        yield calls
        events = CounterMetricFamily("fsm_voice_peer_client_events",
                                     "Local peer: client events received by type",
                                     labels=["type"])
        for etype, n in sorted(dict(stats.get("events_received", {})).items()):
            events.add_metric([str(etype)], n)
        yield events


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` (text exposition format)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


@contextlib.asynccontextmanager
async def serve_metrics(registry: CollectorRegistry, port: int = 0,
                        app: web.Application | None = None) -> AsyncIterator[str]:
    """Serve ``/metrics`` on 127.0.0.1:``port`` (0: any free port) while the context is open;
    yields the URL. ``app``: serve this app instead (it must route ``/metrics`` itself)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    runner = web.AppRunner(app if app is not None else metrics_app(registry),
                           access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOCAL_HOST, port)
        await site.start()
        addr: Any = runner.addresses[0]
        yield f"http://{LOCAL_HOST}:{addr[1]}/metrics"
    finally:
        await runner.cleanup()


def with_peer_metrics(peer: Any, metrics_port: int) -> Callable[[Callable[[str], None]],
                                                                 Awaitable[None]]:
    """``fsm-voice peer --metrics-port``: ``peer.serve_forever`` with the peer's counters on
    ``/metrics`` (127.0.0.1:``metrics_port``)."""

    async def run(ready: Callable[[str], None]) -> None:
        registry = CollectorRegistry()
        PeerCollector(peer, registry)
        async with serve_metrics(registry, metrics_port) as url:
            print(f"metrics: {url}", flush=True)
            await peer.serve_forever(ready)

    return run


def with_broker_metrics(broker: TokenBroker, metrics_port: int) -> Callable[
        [Callable[[str], None]], Awaitable[None]]:
    """``fsm-voice broker --metrics-port``: ``broker.serve_forever`` with the broker's
    ``/metrics``."""

    async def run(ready: Callable[[str], None]) -> None:
        registry = CollectorRegistry()
        BrokerCollector(broker, registry)
        async with serve_metrics(registry, metrics_port) as url:
            print(f"metrics: {url}", flush=True)
            await broker.serve_forever(ready)

    return run
