"""The typed session configuration, and that a real session re-applies it after a restart."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from fsm_voice.client import realtime_session
from fsm_voice.errors import ConfigError
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, SessionPolicy
from fsm_voice.realtime import RealtimeConfig
from fsm_voice.transport import NullSink, SilenceSource


def test_default_is_pcm16_24khz_with_server_vad() -> None:
    s = RealtimeConfig(instructions="hi").to_session()
    assert s["type"] == "realtime" and s["instructions"] == "hi"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert s["audio"]["output"]["voice"] == "alloy"


def test_telephony_formats_and_no_turn_detection() -> None:
    s = RealtimeConfig(input_format="g711_ulaw", output_format="g711_alaw",
                       turn_detection=None).to_session()
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert s["audio"]["input"]["turn_detection"] is None


@pytest.mark.parametrize(("kw", "field"), [
    ({"voice": ""}, "voice"), ({"model": " "}, "model"),
    ({"input_format": "mp3"}, "input_format"), ({"turn_detection": "push"}, "turn_detection"),
    ({"vad_threshold": 1.5}, "vad_threshold"), ({"silence_duration_ms": -1},
                                                 "silence_duration_ms"),
])
def test_invalid_values_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"RealtimeConfig.{field}"):
        RealtimeConfig(**kw)


@pytest.mark.anyio
async def test_config_reaches_the_peer_and_is_reapplied_after_a_restart() -> None:
    config = RealtimeConfig(voice="verse", instructions="short answers",
                            input_format="g711_ulaw", output_format="g711_ulaw")
    policy = SessionPolicy(ice=IcePolicy(disconnected_grace=1.0))
    async with RealtimePeer() as peer:
        s = realtime_session(peer.base_url, "ek_cfg", policy=policy, session_config=config,
                             audio_source=SilenceSource, audio_sink=NullSink)
        updated: list[dict[str, Any]] = []
        s.on_server_event(lambda e: updated.append(e["session"])
                          if e.get("type") == "session.updated" else None)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            with anyio.fail_after(5):
                while not updated:
                    await anyio.sleep(0.05)
            await peer.close_call()
            await s.wait_for("reconnecting", timeout=10)
            await s.wait_for("active", timeout=10)
            for _ in range(50):
                if len(updated) >= 2:
                    break
                await anyio.sleep(0.05)
        assert len(updated) >= 2  # once per connection
        for session in updated[:2]:
            assert session["audio"]["output"]["voice"] == "verse"
            assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert session["instructions"] == "short answers"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
