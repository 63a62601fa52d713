"""A deterministic scripted session (virtual clock, seeded random source) whose trace holds every
kind of event field: speech, an ICE grace that expires, a restart that hangs, a failed
reconnect with a jittered backoff, posted parameters (code, severity, retry_after, expires_in),
a refused event, a stale signal from a closed transport, timer expiries, an error, and a
metrics sample, a quality alert and a signaling exchange (written by hand: no transport here).

``tests/data/trace_v1.jsonl`` is this session as the version-1 writer (commit 07a3d25) wrote it;
``tests/test_trace_v2.py`` records it again with the current writer and compares."""

from __future__ import annotations

import random
from pathlib import Path

from fsm_voice.clock import VirtualClock
from fsm_voice.policy import IcePolicy, QualityAlert, RetryPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport, failure

V1_FIXTURE = Path(__file__).parent / "data" / "trace_v1.jsonl"


async def record_every_field(path: Path) -> VoiceSession:
    """Record the session into ``path`` (wall time fixed, so two recordings are comparable)."""
    from fsm_voice.trace import TraceWriter

    clock = VirtualClock()
    t = ScriptedTransport(["ok", "hang", failure("recoverable"), "ok", "ok"])
    policy = SessionPolicy(retry=RetryPolicy(jitter=0.2, stable_after=5.0),
                           ice=IcePolicy(disconnected_grace=3.0, restart_timeout=4.0))
    async with VoiceSession(t, clock=clock, policy=policy, rng=random.Random(7)) as s:
        w = TraceWriter(path, wall_clock=1_764_000_000.0).record(s)
        await s.start()
        w.signaling(method="POST", url="http://user:pw@127.0.0.1:9/v1/calls?model=x",
                    status=201, elapsed=0.0125)
        w.metrics(ConnectionMetrics(latency_ms=42.5, packets_lost=3, jitter_ms=None,
                                    timestamp=0.0, packets_received=500,
                                    loss_fraction=float("inf")))
        w.alert(QualityAlert("rtt", 420.0, 400.0))
        await clock.advance(0.5)
        t.server({"type": "input_audio_buffer.speech_started"})
        await clock.advance(1)
        t.server({"type": "input_audio_buffer.speech_stopped"})
        s.post("audio_started")
        s.post("audio_stopped")
        s.post("ice_recovered")  # refused: nothing was lost
        s.post("session_info", expires_in=600.0)
        await clock.advance(10)
        t.emit(TransportSignal.ICE_DISCONNECTED)
        await clock.advance(40)
        stale = t.sink
        t.emit(TransportSignal.FAILED)
        await clock.advance(40)
        assert stale is not None
        stale.signal(TransportSignal.ICE_DISCONNECTED)  # from a closed transport: stale
        s.post("server_error", severity="transient", code="rate_limited", retry_after=0.5)
        await clock.advance(5)
        await s.stop()
    return s
