"""Prometheus export: sessions (scripted transport, virtual clock), the token broker and the local
peer, scraped over HTTP from 127.0.0.1 and parsed with prometheus_client's parser."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fsm_voice.broker import AuditEntry, AuditLog, BrokerConfig, ClientRegistry, TokenBroker
from fsm_voice.clock import VirtualClock
from fsm_voice.errors import ErrorSource, Severity, VoiceError
from fsm_voice.metrics import BrokerCollector, PeerCollector, PrometheusSink, serve_metrics
from fsm_voice.peer import RealtimePeer
from fsm_voice.policy import MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, TransportSignal
from fsm_voice.session import StatusChange, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def policy() -> SessionPolicy:
    return SessionPolicy(retry=RetryPolicy(base_delay=1.0, jitter=0.0, stable_after=1.0),
                         monitor=MonitorPolicy(metrics_interval=1.0, health_interval=10.0))


@pytest.fixture
async def exported() -> AsyncIterator[tuple[Hub, PrometheusSink, str]]:
    hub = Hub()
    sink = PrometheusSink(hub)
    async with serve_metrics(sink.registry) as url:
        assert url.startswith("http://127.0.0.1:")
        yield hub, sink, url
    sink.close()


async def test_a_session_with_a_reconnect_is_exported(
        exported: tuple[Hub, PrometheusSink, str]) -> None:
    hub, _sink, url = exported
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "hang"])  # the restart hangs: a reconnect follows
    changes: list[StatusChange] = []
    s = VoiceSession(t, clock=clock, policy=policy())
    s.on_status(changes.append)
    hub.track(s, name="one")
    async with s:
        await s.start()
        await anyio.wait_all_tasks_blocked()
        assert s.status == "active"
        t.metrics_sample = ConnectionMetrics(latency_ms=42.0, packets_lost=3, jitter_ms=4.0,
                                             timestamp=0.0, packets_received=97,
                                             loss_fraction=0.03)
        await clock.advance(1.0)
        await anyio.wait_all_tasks_blocked()
        first = await scrape(url)
        assert get(first, "fsm_voice_sessions", status="active") == 1
        assert get(first, "fsm_voice_sessions", status="reconnecting") == 0
        assert get(first, "fsm_voice_rtt_seconds_count") == 1
        assert get(first, "fsm_voice_rtt_seconds_sum") == pytest.approx(0.042)
        assert get(first, "fsm_voice_jitter_seconds_sum") == pytest.approx(0.004)
        assert get(first, "fsm_voice_packet_loss_ratio_sum") == pytest.approx(0.03)
        assert get(first, "fsm_voice_connect_duration_seconds_count") == 1

        await clock.advance(0.5)
        t.emit(TransportSignal.FAILED)
        await s.dispatcher.drain()
        await anyio.wait_all_tasks_blocked()
        assert s.status == "reconnecting"
        mid = await scrape(url)
        assert get(mid, "fsm_voice_sessions", status="reconnecting") == 1
        await clock.advance(30.0)
        await anyio.wait_all_tasks_blocked()
        assert s.status == "active"
        s.monitor.report(VoiceError(severity=Severity.RECOVERABLE, code="rate_limit_exceeded",
                                    message="slow down", source=ErrorSource.SERVER))
        after = await scrape(url)
        assert get(after, "fsm_voice_sessions", status="active") == 1
        await s.stop()

    # transitions: exactly the taken entries of the session's own trace
    taken: dict[tuple[str, str, str], int] = {}
    for e in s.trace:
        if e.outcome == "taken":
            taken[(e.event, e.source, e.target)] = taken.get((e.event, e.source, e.target), 0) + 1
    final = await scrape(url)
    exported_t = {(dict(k[1])["event"], dict(k[1])["source"], dict(k[1])["target"]): v
                  for k, v in final.items() if k[0] == "fsm_voice_transitions_total"}
    assert exported_t == taken
    # a start, a restart caused by transport_failed, a reconnect after the restart timed out
    attempts = {(dict(k[1])["kind"], dict(k[1])["reason"]): v for k, v in final.items()
                if k[0] == "fsm_voice_connection_attempts_total"}
    assert attempts == {("start", "start"): 1, ("restart", "transport_failed"): 1,
                        ("reconnect", "restart_timeout"): 1}
    # outage = the time the status was not up, from the session's own status changes
    down = next(c.time for c in changes if c.previous == "active")
    up = next(c.time for c in changes if c.time > down and c.status == "active")
    assert get(final, "fsm_voice_outage_duration_seconds_count") == 1
    assert get(final, "fsm_voice_outage_duration_seconds_sum") == pytest.approx(up - down)
    assert 0 < get(final, "fsm_voice_recovery_duration_seconds_sum") <= up - down
    # detection: from the last healthy sample (t=1.0) to the failure (t=1.5)
    assert get(final, "fsm_voice_detection_duration_seconds_sum") == pytest.approx(down - 1.0)
    assert get(final, "fsm_voice_errors_total", severity="recoverable",
               code="rate_limit_exceeded") == 1
    # the session has left its context: it is no longer counted
    assert all(get(final, "fsm_voice_sessions", status=st) == 0
               for st in ("idle", "active", "reconnecting"))
    assert len(hub) == 0


async def test_error_codes_are_bounded(exported: tuple[Hub, PrometheusSink, str]) -> None:
    hub, _sink, url = exported
    s = VoiceSession(ScriptedTransport(), clock=VirtualClock())
    hub.track(s)
    async with s:
        for i in range(130):
            s.monitor.report(VoiceError(severity=Severity.TRANSIENT, code=f"code_{i}",
                                        message="x", source=ErrorSource.SERVER))
    samples = await scrape(url)
    codes = {dict(k[1])["code"]: v for k, v in samples.items()
             if k[0] == "fsm_voice_errors_total"}
    assert len(codes) == 101
    assert codes["other"] == 30
    assert sum(codes.values()) == 130


async def test_serve_metrics_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="port"):
        async with serve_metrics(CollectorRegistry(), port=70000):
            pass


async def test_broker_and_peer_are_exported(tmp_path: Path) -> None:
    secrets = {"app-1": "secret-one-7c2e9a41b3d5f6e8"}
    async with RealtimePeer() as peer:
        broker = TokenBroker(BrokerConfig(upstream_base=peer.base_url),
                             api_key="sk-test-metrics-0123456789abcdef",
                             clients=ClientRegistry.from_secrets(secrets),
                             audit=tmp_path / "audit.sqlite3")
        async with broker:
            registry = CollectorRegistry()
            BrokerCollector(broker, registry)
            PeerCollector(peer, registry)
            async with serve_metrics(registry) as url, aiohttp.ClientSession() as http:
                good = {"Authorization": f"Bearer {secrets['app-1']}", "X-Client-Id": "app-1"}
                bad = {"Authorization": "Bearer wrong-secret-000000000", "X-Client-Id": "app-1"}
                for headers in (good, good, bad):
                    async with http.post(broker.token_url, headers=headers, json={}) as r:
                        await r.read()
                samples = await scrape(url)
    assert get(samples, "fsm_voice_broker_keys_minted_total") == 2
    assert get(samples, "fsm_voice_broker_requests_total", outcome="issued") == 2
    refusals = {dict(k[1])["reason"]: v for k, v in samples.items()
                if k[0] == "fsm_voice_broker_refusals_total"}
    assert sum(refusals.values()) == 1 and "issued" not in refusals
    assert get(samples, "fsm_voice_broker_upstream_errors_total") == 0
    assert get(samples, "fsm_voice_broker_audit_failures_total") == 0
    latency = sum(v for k, v in samples.items()
                  if k[0] == "fsm_voice_broker_request_duration_seconds_count")
    assert latency == 3
    assert get(samples, "fsm_voice_peer_client_secrets_minted_total") == 2
    assert math.isfinite(get(samples, "fsm_voice_peer_calls"))


class _BrokenAudit(AuditLog):
    """An audit log whose writes fail (disk full, locked database...)."""

    async def record(self, entry: AuditEntry) -> int:
        raise OSError("disk full")


async def test_broker_upstream_errors_and_audit_failures(tmp_path: Path) -> None:
    secrets = {"app-1": "secret-one-7c2e9a41b3d5f6e8"}
    good = {"Authorization": f"Bearer {secrets['app-1']}", "X-Client-Id": "app-1"}
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    registry = CollectorRegistry()
    async with TokenBroker(BrokerConfig(upstream_base=dead), api_key="sk-test-0123456789abcdef",
                           clients=ClientRegistry.from_secrets(secrets),
                           audit=_BrokenAudit(tmp_path / "a.sqlite3")) as broker:
        BrokerCollector(broker, registry)
        async with serve_metrics(registry) as url, aiohttp.ClientSession() as http:
            async with http.post(broker.token_url, headers=good, json={}) as r:
                assert r.status == 502
            samples = await scrape(url)
    assert get(samples, "fsm_voice_broker_upstream_errors_total") == 1
    assert get(samples, "fsm_voice_broker_refusals_total", reason="upstream_error") == 1
    assert get(samples, "fsm_voice_broker_audit_failures_total") == 1
    assert get(samples, "fsm_voice_broker_keys_minted_total") == 0
    assert get(samples, "fsm_voice_broker_request_duration_seconds_count",
               outcome="upstream_error") == 1


async def test_an_ice_grace_that_recovers_is_no_outage(
        exported: tuple[Hub, PrometheusSink, str]) -> None:
    hub, _sink, url = exported
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "ok"])
    s = VoiceSession(t, clock=clock, policy=policy())
    hub.track(s)
    async with s:
        await s.start()
        await anyio.wait_all_tasks_blocked()
        t.emit(TransportSignal.ICE_DISCONNECTED)  # the status stays active through the grace
        await clock.advance(1.0)
        t.emit(TransportSignal.ICE_RECOVERED)
        await s.dispatcher.drain()
        await clock.advance(20.0)  # a long healthy stretch
        failed_at = clock.now()
        t.emit(TransportSignal.FAILED)
        await s.dispatcher.drain()
        await anyio.wait_all_tasks_blocked()
        assert s.status == "active"
        back_at = next(e.time for e in reversed(s.trace) if e.event == "channel_open")
        samples = await scrape(url)
    assert get(samples, "fsm_voice_outage_duration_seconds_count") == 1
    assert get(samples, "fsm_voice_outage_duration_seconds_sum") == pytest.approx(
        back_at - failed_at)
    assert get(samples, "fsm_voice_transitions_total", event="ice_recovered",
               source="ice_grace", target="active") == 1
