"""Issue 8's "done when", end to end: real aiortc sessions against the local peer, each fault
injected through the peer's control API (HTTP, as an operator would)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import anyio
import pytest

from fsm_voice.clock import RealClock
from fsm_voice.effects import ArmTimer, OpenTransport, Timer
from fsm_voice.errors import VoiceError
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, RolloverPolicy, SessionPolicy
from fsm_voice.session import VoiceSession
from tests.test_session_real import session_for, stable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def policy(**retry: Any) -> SessionPolicy:
    """Short delays so each scenario runs in seconds; exact delays (jitter 0)."""
    return SessionPolicy(
        retry=RetryPolicy(**{"base_delay": 0.2, "factor": 2.0, "max_attempts": 3, "jitter": 0.0,
                             "stable_after": 0.5, **retry}),
        ice=IcePolicy(disconnected_grace=1.0, connect_timeout=5.0, restart_timeout=5.0),
        monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
        rollover=RolloverPolicy(margin=2.0, min_interval=1.5),
    )


async def control(peer: RealtimePeer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (aiohttp.ClientSession(headers=peer.control_headers) as http,
                http.post(f"{peer.base_url}/control/{path}", json=body) as resp):
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


def opens(s: VoiceSession) -> list[tuple[float, OpenTransport]]:
    return [(e.time, x) for e in s.trace for x in e.effects if isinstance(x, OpenTransport)]


async def test_a_backend_that_drops_every_call_ends_in_error_after_the_bounded_attempts() -> None:
    async with RealtimePeer() as peer:
        await control(peer, "drop_calls_after", {"seconds": 0.5})
        s = session_for(peer, policy=policy(stable_after=10.0))  # each call lives 0.5 s < 10 s
        errors: list[VoiceError] = []
        s.on_error(errors.append)
        async with s:
            await s.start()
            assert await s.wait_for("error", timeout=40) == "error"
            calls = peer.stats()["calls_created"]
            await anyio.sleep(1.5)  # longer than any backoff of this policy: nothing new
            assert peer.stats()["calls_created"] == calls
        # the first call, then exactly max_attempts more: each came up and was dropped
        assert calls == 1 + 3, [(t, o) for t, o in opens(s)]
        assert [o.attempt for _, o in opens(s)][1:] == [1, 2, 3]
        assert errors[-1].code == "retries_exhausted"
        ups = [e for e in s.trace if e.target == "active" and e.source != e.target]
        assert len(ups) == calls  # every call did reach active (flapping, not failing to connect)


async def test_a_server_error_event_restarts_with_config_reapplied_and_history_replayed() -> None:
    config = {"type": "realtime", "instructions": "be brief"}
    async with RealtimePeer() as peer:
        s = session_for(peer, policy=policy(), session_config=config)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            first = set(peer.calls)
            s.send_event({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "remember me"}]}})
            with anyio.fail_after(5):  # the peer's conversation.item.done comes back
                while not s.history:
                    await anyio.sleep(0.05)
            await stable(s)
            sent = await control(peer, "send_error", {"type": "server_error",
                                                      "code": "server_error",
                                                      "message": "the backend hiccupped"})
            assert sent == {"sent": 1}
            await s.wait_for("reconnecting", timeout=5)
            await s.wait_for("active", timeout=10)
            (new_id,) = set(peer.calls) - first
            with anyio.fail_after(5):  # until the new call has read what was sent on it
                while "conversation.item.create" not in (
                        new := peer.calls[new_id].info())["events_received"]:
                    await anyio.sleep(0.05)
        assert new["events_received"].get("session.update") == 1
        assert new["events_received"].get("conversation.item.create") == 1  # the replay
        assert s.replayed_items == 1
        assert [o.reason for _, o in opens(s)] == ["start", "restart"]


async def test_a_503_with_retry_after_5_is_retried_after_at_least_5_s() -> None:
    async with RealtimePeer() as peer:
        await control(peer, "reject_offers", {"count": 1, "status": 503, "retry_after": 5})
        s = session_for(peer, policy=policy())
        assert isinstance(s.clock, RealClock)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=20)
        (t0, _), (t1, second) = opens(s)
        backoff = [x for e in s.trace for x in e.effects
                   if isinstance(x, ArmTimer) and x.timer is Timer.BACKOFF]
        assert [b.delay for b in backoff] == [5.0]  # the server's wait, not the policy's 0.2 s
        assert t1 - t0 >= 5.0 and second.attempt == 1
        assert peer.stats()["offers_received"] == 2


async def test_expires_at_zero_or_absurd_gives_no_rollover_storm() -> None:
    async with RealtimePeer() as peer:
        for expires_at in (0, int(time.time()) - 3600, 10**400):
            await control(peer, "expires_at", {"expires_at": expires_at})
            s = session_for(peer, policy=policy())
            async with s:
                await s.start()
                await s.wait_for("active", timeout=10)
                await anyio.sleep(3.0)  # two min_intervals: a storm would restart many times
                assert s.status == "active"
            assert len(opens(s)) == 1, expires_at
            assert s.rollovers == 0
            infos = [e for e in s.trace if e.event == "session_info"]
            assert infos and all(e.outcome == "taken" for e in infos)


async def test_rollovers_are_spaced_by_min_interval_on_a_short_server_limit() -> None:
    async with RealtimePeer() as peer:
        # every new call reports the same near deadline: the machine may roll over, but never
        # sooner than min_interval (1.5 s) after the last
        await control(peer, "expires_at", {"expires_at": int(time.time()) + 4})
        s = session_for(peer, policy=policy())
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            await anyio.sleep(6.0)
        rolls = [e.time for e in s.trace if e.event == "rollover_due" and e.outcome == "taken"]
        assert 1 <= len(rolls) <= 6.0 / 1.5 + 1
        assert all(b - a >= 1.5 for a, b in itertools.pairwise(rolls))


async def test_stop_is_idle_at_once_when_the_aiortc_close_hangs() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer, policy=policy(), close_timeout=1.0)
        transport: Any = s.transport
        real_close = transport.close
        hung = anyio.Event()

        async def wedged_close() -> None:  # a teardown step that never returns ...
            hung.set()
            try:
                await anyio.sleep_forever()
            finally:  # ... until close_timeout cancels it; then the rest of the teardown runs
                with anyio.CancelScope(shield=True):
                    await real_close()

        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            transport.close = wedged_close
            with anyio.fail_after(0.3):
                await s.stop()
            assert s.status == "idle" and hung.is_set()
            transport.close = real_close
            await s.start()  # dispatch goes on; the new call waits for the abandoned close
            await s.wait_for("active", timeout=10)
        assert s.status == "idle"


async def test_the_new_control_faults_refuse_bad_input_and_reset() -> None:
    async with RealtimePeer() as peer, aiohttp.ClientSession(headers=peer.control_headers) as http:
        for path, body in (("drop_calls_after", {"seconds": -1}),
                           ("drop_calls_after", {"seconds": "soon"}),
                           ("expires_at", {"expires_at": "tomorrow"}),
                           ("expires_at", {"expires_at": 1.5})):
            async with http.post(f"{peer.base_url}/control/{path}", json=body) as resp:
                assert resp.status == 400, (path, body)
        assert await control(peer, "drop_calls_after", {"seconds": 2}) == {"drop_after": 2.0}
        assert await control(peer, "expires_at", {"expires_at": 0}) == {"expires_at": 0}
        await control(peer, "reset", {})
        assert peer.drop_after is None and peer.expires_at is None
