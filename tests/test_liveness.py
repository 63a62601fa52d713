"""Probe-based liveness: the sans-IO decision (plain calls) and real sessions against the local
peer (VoiceSession + aiortc + HTTP signaling on 127.0.0.1).

The session tests use the production IcePolicy (5 s ICE grace): a restart that happens before
the grace could have expired proves the early restart came from the probes.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from fsm_voice.client import realtime_session
from fsm_voice.errors import ConfigError
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.session import VoiceSession
from fsm_voice.transport import AiortcTransport, NullSink, SilenceSource
from fsm_voice.transport.liveness import PathLiveness, ProbeTiming

T = ProbeTiming()  # interval 0.1, probe_after 0.2, dead_after 0.5, fail_after 0.85


# ----------------------------------------------------------------------------- sans-IO


def calibrated(**kw: Any) -> PathLiveness:
    """A monitor whose calibration probe was answered (probes are trusted)."""
    lv = PathLiveness(T, now=0.0, **kw)
    assert lv.tick(0.0, 0).probe  # the calibration probe goes out at once
    lv.probe_sent(0.0)
    lv.probe_answered(0.0, 0.01)
    return lv


def _run(lv: PathLiveness, until: float, inbound: Any = None, answer: bool = False,
         rtt: float = 0.01) -> list[tuple[float, str]]:
    """Drive ``lv`` tick by tick (``inbound(t)`` gives the counter; probes answered after
    ``rtt`` when ``answer``); returns the signals with their times."""
    out: list[tuple[float, str]] = []
    pending: list[float] = []
    t = 0.0
    while t < until - 1e-9:
        t = round(t + T.interval, 6)
        for sent in [s for s in pending if s + rtt <= t]:
            pending.remove(sent)
            step = lv.probe_answered(sent + rtt, rtt)
            if step.signal is not None:
                out.append((t, step.signal.value))
        step = lv.tick(t, inbound(t) if inbound else 0)
        if step.signal is not None:
            out.append((t, step.signal.value))
        if step.probe:
            lv.probe_sent(t)
            if answer:
                pending.append(t)
    return out


def test_flowing_path_never_probes() -> None:
    lv = calibrated()
    assert _run(lv, 5.0, inbound=lambda t: int(t * 50)) == []
    assert lv.probes_sent == 1  # the calibration probe only


def test_silent_remote_answering_probes_is_alive() -> None:
    lv = calibrated()
    assert _run(lv, 30.0, answer=True) == []
    assert lv.probes_answered > 50 and lv.silent_alive == lv.probes_answered - 1  # - calibration


def test_dead_path_disconnected_then_failed() -> None:
    lv = calibrated()
    signals = _run(lv, 3.0)
    assert [s for _, s in signals] == ["ice_disconnected", "transport_failed"]
    (dead, _), (failed, _) = signals
    assert T.dead_after <= dead < T.dead_after + 2 * T.interval
    assert T.fail_after <= failed < T.fail_after + 2 * T.interval
    assert lv.probes_sent >= 2 and lv.state == "failed"


def test_evidence_before_the_fail_threshold_recovers() -> None:
    lv = calibrated()
    signals = _run(lv, 2.0, inbound=lambda t: 0 if t < 0.7 else int(t * 50))
    assert [s for _, s in signals] == ["ice_disconnected", "ice_recovered"]


def test_slow_path_is_not_dead() -> None:
    """Answers that take 0.35 s: thresholds grow with the measured RTT, no signal."""
    lv = PathLiveness(T, now=0.0)
    lv.probe_answered(0.0, 0.35)  # the calibration probe measured the round trip
    assert _run(lv, 20.0, answer=True, rtt=0.35) == []
    assert lv.thresholds()[0] >= T.probe_after + T.interval + 0.7


def test_probes_never_answered_are_not_trusted() -> None:
    """A remote that answers no STUN at all: calibration probes every second, and the stall
    rule (ICE_DISCONNECTED only, never FAILED): a muted call is not restarted for it."""
    lv = PathLiveness(T, now=0.0, stall=0.75)
    signals = _run(lv, 10.0)
    assert [s for _, s in signals] == ["ice_disconnected"]
    assert 9 <= lv.probes_sent <= 11 and lv.rtt is None


def test_stall_detection_without_probes() -> None:
    lv = PathLiveness(T, now=0.0, probing=False, stall=0.75)
    signals = _run(lv, 5.0)
    assert [s for _, s in signals] == ["ice_disconnected"]  # never failed: the grace decides
    assert lv.probes_sent == 0


@pytest.mark.parametrize(
    "kw",
    [{"interval": 0}, {"probe_after": 0.6}, {"fail_after": 0.4}, {"probe_timeout": float("nan")}],
)
def test_bad_timing_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ProbeTiming(**kw)


def test_transport_refuses_a_bad_probe_argument() -> None:
    from fsm_voice.signaling import HttpSignaling

    with pytest.raises(ConfigError, match="probe"):
        AiortcTransport(HttpSignaling("http://127.0.0.1:9", "k"), probe=0.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real sessions

POLICY = SessionPolicy(
    retry=RetryPolicy(base_delay=0.2, factor=2.0, max_attempts=3, jitter=0, stable_after=0.5),
    ice=IcePolicy(),  # production grace (5 s)
    monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def session_for(peer: RealtimePeer) -> VoiceSession:
    return realtime_session(peer.base_url, "ek_test", policy=POLICY,
                            host_addresses=["127.0.0.1"], audio_source=SilenceSource,
                            audio_sink=NullSink)


def _transport(s: VoiceSession) -> AiortcTransport:
    assert isinstance(s.transport, AiortcTransport)
    return s.transport


def calibrated_path(t: AiortcTransport) -> bool:
    """The connection's first (calibration) probe was answered: probes are trusted."""
    return t.liveness is not None and t.liveness.rtt is not None


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


MUTE_RUNS = 20


@pytest.mark.anyio
async def test_chromium_style_mute_keeps_the_session_20_of_20() -> None:
    """20 real sessions; in each the peer stops its RTP like a browser's
    ``replaceTrack(null)`` (ICE, DTLS, data channel up). Each run lasts until the client has
    judged the path alive five times by probe answers (>= ~1.5 s of mute): no liveness signal,
    no restart, the session stays ``active``; unmuted, audio flows again."""
    kept = 0
    async with RealtimePeer() as peer:
        for run in range(MUTE_RUNS):
            s = session_for(peer)
            async with s:
                await s.start()
                await s.wait_for("active", timeout=10)
                transport = _transport(s)
                await _until(lambda t=transport: calibrated_path(t))
                offers = peer.stats()["offers_received"]
                t0 = time.monotonic()
                assert peer.mute_media() == 1
                await _until(lambda t=transport: t.liveness.silent_alive >= 5)
                stats = transport.liveness
                assert stats is not None
                events = [e.event for e in s.trace if e.time >= t0 - 0.01]
                frames = peer.list_calls()[0]["audio_frames_out"]
                assert peer.unmute_media() == 1
                await _until(lambda f=frames: peer.list_calls()[0]["audio_frames_out"] > f + 5)
                ok = (
                    s.status == "active"
                    and stats.signals == ()
                    and not {"ice_disconnected", "transport_failed"} & set(events)
                    and peer.stats()["offers_received"] == offers
                )
                assert ok, (run, s.status, stats, events)
                kept += 1
    assert kept == MUTE_RUNS


@pytest.mark.anyio
async def test_dead_path_restarts_at_once_on_a_fresh_path() -> None:
    """The peer stops sending anything on the call (its consent answers too) while its HTTP
    endpoint still answers: probes go unanswered -> ice_disconnected -> transport_failed ->
    restart on a new call -> active, long before the 5 s ICE grace could have expired."""
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            await _until(lambda: calibrated_path(_transport(s)))
            # the first connect's failure episode is over: a dead path now restarts at once
            await _until(lambda: any(e.event == "session_stable" for e in s.trace))
            t0 = time.monotonic()
            assert peer.go_silent() == 1
            await _until(
                lambda: any(e.event == "transport_failed" for e in s.trace if e.time >= t0)
            )
            await s.wait_for("active", timeout=10)
            outage = time.monotonic() - t0
            events = [e.event for e in s.trace if e.time >= t0 and e.outcome == "taken"
                      and e.event != "session_info"]
            print(f"\ndead path: back to active after {outage:.2f} s; {events}")
            assert events[:2] == ["ice_disconnected", "transport_failed"], events
            assert "ice_grace_expired" not in events
            assert outage < POLICY.ice.disconnected_grace
            assert peer.stats()["offers_received"] == 2
            assert s.status == "active"


@pytest.mark.anyio
async def test_short_blip_shown_alive_by_probes_is_not_restarted() -> None:
    """Everything from the peer stops just long enough for the client to start probing, then
    comes back: the probes (or the packets) prove the path alive; no restart, no signal."""
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            transport = _transport(s)
            await _until(lambda: calibrated_path(transport))
            t0 = time.monotonic()
            assert peer.go_silent() == 1
            await _until(lambda: transport.liveness.probes_sent >= 1)
            assert peer.resume() == 1
            await anyio.sleep(1.5)  # observation window (past the fail threshold), not a sync
            events = [e.event for e in s.trace if e.time >= t0 and e.outcome == "taken"]
            assert "transport_failed" not in events and "ice_disconnected" not in events, events
            assert peer.stats()["offers_received"] == 1
            assert s.status == "active"



@pytest.mark.anyio
async def test_control_api_mutes_and_unmutes_the_peer_audio() -> None:
    """``/control/mute_media`` stops the call's RTP (no frame is sent) while the
    connection stays up; ``/control/unmute_media`` resumes it."""
    import aiohttp

    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            async with aiohttp.ClientSession(headers=peer.control_headers) as http:
                async with http.post(peer.base_url + "/control/mute_media", json={}) as r:
                    assert r.status == 200 and (await r.json()) == {"calls": 1}
                info = peer.list_calls()[0]
                assert info["media_muted"] is True and info["state"] == "connected"
                async with http.post(peer.base_url + "/control/mute_media", json={}) as r:
                    assert (await r.json()) == {"calls": 1}  # idempotent: still muted
                async with http.post(peer.base_url + "/control/unmute_media",
                                     json={"call_id": info["call_id"]}) as r:
                    assert (await r.json()) == {"calls": 1}
                async with http.post(peer.base_url + "/control/unmute_media", json={}) as r:
                    assert (await r.json()) == {"calls": 0}  # nothing muted any more
                frames = peer.list_calls()[0]["audio_frames_out"]
                await _until(lambda: peer.list_calls()[0]["audio_frames_out"] > frames + 5)
                assert peer.list_calls()[0]["media_muted"] is False
            assert s.status == "active"


@pytest.mark.anyio
async def test_a_reply_muted_mid_way_still_ends_and_the_status_returns_to_active() -> None:
    """A browser-style mute (``replaceTrack(null)``) while the assistant speaks: the server's
    output buffer still plays out, so ``output_audio_buffer.stopped`` still comes and the
    status goes ``speaking`` -> ``active`` during the mute (it stayed ``speaking`` before)."""
    async with RealtimePeer(reply="tone", tone_seconds=1.0) as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            s.send_event({"type": "response.create"})
            await s.wait_for("speaking", timeout=10)
            assert peer.mute_media() == 1
            await s.wait_for("active", timeout=10)
            assert peer.list_calls()[0]["media_muted"] is True
            assert peer.unmute_media() == 1
            assert s.status == "active"
