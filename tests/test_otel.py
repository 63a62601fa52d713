"""OpenTelemetry export through the SDK's in-memory span exporter and metric reader: a span per
session and per connection attempt, and the metrics (scripted transport, virtual clock)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fsm_voice.clock import VirtualClock
from fsm_voice.otel import OtelSink
from fsm_voice.policy import MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


async def test_spans_per_session_and_attempt_and_the_metrics() -> None:
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    hub = Hub()
    sink = OtelSink(hub, tracer_provider=tp, meter_provider=mp, model="gpt-realtime")
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "hang"])  # the restart hangs, the reconnect succeeds
    s = VoiceSession(t, clock=clock, policy=SessionPolicy(
        retry=RetryPolicy(base_delay=1.0, jitter=0.0, stable_after=1.0),
        monitor=MonitorPolicy(metrics_interval=1.0, health_interval=10.0)))
    hub.track(s, name="conv-1")
    async with s:
        await s.start()
        await anyio.wait_all_tasks_blocked()
        t.metrics_sample = ConnectionMetrics(latency_ms=20.0, packets_lost=0, jitter_ms=2.0,
                                             timestamp=0.0, packets_received=50)
        await clock.advance(1.0)
        await anyio.wait_all_tasks_blocked()
        live = points(reader)
        assert {p.attributes["status"]: p.value for p in live["fsm_voice.sessions"]
                if p.value} == {"active": 1}
        t.emit(TransportSignal.FAILED)
        await s.dispatcher.drain()
        await anyio.wait_all_tasks_blocked()
        await clock.advance(30.0)
        await anyio.wait_all_tasks_blocked()
        assert s.status == "active"
        await s.stop()
    sink.close()

    finished = spans.get_finished_spans()
    session_spans = [x for x in finished if x.name == "realtime gpt-realtime"]
    assert len(session_spans) == 1
    root = session_spans[0]
    assert root.attributes is not None
    assert root.attributes["gen_ai.operation.name"] == "realtime"
    assert root.attributes["gen_ai.conversation.id"] == "conv-1"
    assert [e.attributes["fsm_voice.status"] for e in root.events if e.name == "status"
            and e.attributes] == ["connecting", "active", "reconnecting", "active", "idle"]
    attempts = sorted((x for x in finished if x.name.startswith("realtime.connect")),
                      key=lambda x: x.start_time or 0)
    assert [x.name for x in attempts] == ["realtime.connect start", "realtime.connect restart",
                                          "realtime.connect reconnect"]
    assert [x.status.status_code for x in attempts] == [StatusCode.OK, StatusCode.ERROR,
                                                        StatusCode.OK]
    assert all(x.parent is not None and x.parent.span_id == root.context.span_id
               for x in attempts)

    got = points(reader)
    taken = sum(1 for e in s.trace if e.outcome == "taken")
    assert sum(p.value for p in got["fsm_voice.transitions"]) == taken
    assert {(p.attributes["kind"], p.attributes["reason"]): p.value
            for p in got["fsm_voice.connection.attempts"]} == {
        ("start", "start"): 1, ("restart", "transport_failed"): 1,
        ("reconnect", "restart_timeout"): 1}
    assert sum(p.value for p in got["fsm_voice.sessions"]) == 0  # none left
    (outage,) = got["fsm_voice.outage.duration"]
    assert outage.count == 1 and outage.sum == pytest.approx(11.0)  # 1.0 -> 12.0 virtual
    (rtt,) = got["fsm_voice.rtt"]
    assert rtt.sum == pytest.approx(0.02 * rtt.count) and rtt.count >= 1
    (op,) = got["gen_ai.client.operation.duration"]
    assert op.count == 1
