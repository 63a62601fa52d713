"""End to end: broker -> ephemeral key -> local stand-in -> active session; the session survives
the server's ``session_expired`` (rolled over by a transport restart) and a key that expires
during a reconnect (refreshed, not fatal)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from fsm_voice.broker.app import BrokerConfig, ClientRegistry, TokenBroker
from fsm_voice.broker.ratelimit import RatePolicy
from fsm_voice.client import realtime_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, RetryPolicy, SessionPolicy
from fsm_voice.tokens import EphemeralKeyProvider
from fsm_voice.transport import NullSink, SilenceSource

pytestmark = pytest.mark.anyio
API_KEY = "sk-e2e-" + "x" * 24
CLIENT_SECRET = "client-secret-e2e-0123456789"
POLICY = SessionPolicy(retry=RetryPolicy(base_delay=0.2),
                       ice=IcePolicy(disconnected_grace=1.0, connect_timeout=5.0,
                                     restart_timeout=5.0))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_brokered_session_survives_session_expiry_and_key_expiry(tmp_path: Path) -> None:
    async with RealtimePeer(api_keys={API_KEY}, require_ephemeral=True) as peer:
        broker = TokenBroker(
            BrokerConfig(upstream_base=peer.base_url,
                         session_config={"type": "realtime", "model": "gpt-realtime"},
                         rate=RatePolicy(capacity=100, refill_per_second=10)),
            api_key=API_KEY,
            clients=ClientRegistry.from_secrets({"app": CLIENT_SECRET}),
            audit=tmp_path / "audit.sqlite3",
        )
        async with broker:
            provider = EphemeralKeyProvider(broker.token_url, client_id="app",
                                            client_secret=CLIENT_SECRET)
            session = realtime_session(peer.base_url, provider, policy=POLICY,
                                       host_addresses=["127.0.0.1"],
                                       audio_source=SilenceSource, audio_sink=NullSink)
            session.closers.append(provider.aclose)
            async with session:
                await session.start()
                await session.wait_for("active", timeout=10)
                calls_before = set(peer.calls)

                # 1. The server ends the session at its time limit: roll over seamlessly.
                peer.send_error("invalid_request_error", "session_expired",
                                "Your session hit the maximum duration of 60 minutes.")
                await session.wait_for("reconnecting", timeout=5)
                await session.wait_for("active", timeout=10)
                assert not set(peer.calls) & calls_before  # a new call replaced the old one
                assert any(e.event == "server_error" and e.source == "active"
                           for e in session.trace)  # posted as is; the table restarts

                # 2. Every key expires; the path then dies: the restart needs a key, gets a
                #    401 with the cached (expired) one, refreshes it and connects.
                peer.expire_all_keys()
                peer.go_silent()
                await session.wait_for("reconnecting", timeout=10)
                await session.wait_for("active", timeout=15)
                assert session.errors == []  # neither event was fatal nor reported as failure
                minted = peer.stats()["client_secrets_minted"]
                refused = peer.stats()["offers_refused"]
            assert minted >= 2 and refused >= 1
            rows = await broker.audit.rows()
            assert [r["outcome"] for r in rows].count("issued") == minted


async def test_cli_connect_through_a_broker(tmp_path: Path) -> None:
    import json
    import os
    import sys

    async with RealtimePeer(api_keys={API_KEY}, require_ephemeral=True) as peer:
        broker = TokenBroker(
            BrokerConfig(upstream_base=peer.base_url),
            api_key=API_KEY,
            clients=ClientRegistry.from_secrets({"app": CLIENT_SECRET}),
            audit=tmp_path / "audit.sqlite3",
        )
        async with broker:
            env = {**os.environ, "FSM_VOICE_CLIENT_SECRET": CLIENT_SECRET}
            result = await anyio.run_process(
                [sys.executable, "-m", "fsm_voice.cli", "connect", "--base-url", peer.base_url,
                 "--token-url", broker.token_url, "--client-id", "app", "--duration", "2"],
                env=env, check=False)
    out = result.stdout.decode()
    statuses = [json.loads(line)["status"] for line in out.splitlines()
                if line.startswith("{") and '"status"' in line]
    assert result.returncode == 0, (out, result.stderr.decode()[-2000:])
    assert statuses[:2] == ["connecting", "active"] and statuses[-1] == "idle"
    assert CLIENT_SECRET not in out and API_KEY not in out
