"""Client secrets on the local peer: ``POST /v1/realtime/client_secrets`` and ek_-only calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fsm_voice.peer import RealtimePeer
from fsm_voice.peer.secrets import (
    CLIENT_SECRETS_PATH,
    DEFAULT_EXPIRES_SECONDS,
    ClientSecretStore,
    RequestError,
    parse_client_secret_request,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-peer-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def peer(clock: FakeClock) -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(require_ephemeral=True, now=clock) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def mint(
    http: aiohttp.ClientSession,
    peer: RealtimePeer,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    raw: bytes | None = None,
    ctype: str = "application/json",
) -> tuple[int, Any]:
    headers = {"Content-Type": ctype}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (b"" if body is None else json.dumps(body))
    async with http.post(peer.base_url + CLIENT_SECRETS_PATH, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


# A syntactically complete offer is not needed to see that authentication passed: a broken SDP
# gets 400 invalid_offer *after* the key check.
BROKEN_OFFER = "v=0\r\n"


async def offer_status(
    http: aiohttp.ClientSession, peer: RealtimePeer, key: str
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
    async with http.post(peer.calls_url, data=BROKEN_OFFER, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def assert_openai_error(body: Any, code: str | None, param: str | None = None) -> None:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"type", "code", "message", "param"}
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param


# ------------------------------------------------------------------------------ minting


async def test_mints_documented_shape(
    http: aiohttp.ClientSession, peer: RealtimePeer, clock: FakeClock
) -> None:
    status, body = await mint(
        http,
        peer,
        {
            "expires_after": {"anchor": "created_at", "seconds": 120},
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "Be brief.",
                "audio": {"output": {"voice": "marin"}},
            },
        },
    )
    assert status == 200, body
    assert set(body) == {"value", "expires_at", "session"}
    assert body["value"].startswith("ek_") and len(body["value"]) > 20
    assert body["expires_at"] == int(clock.t) + 120
    session = body["session"]
    assert session["type"] == "realtime"
    assert session["object"] == "realtime.session"
    assert session["id"].startswith("sess_")
    assert session["model"] == "gpt-realtime"
    assert session["instructions"] == "Be brief."
    assert session["audio"]["output"]["voice"] == "marin"
    assert peer.stats()["client_secrets_minted"] == 1


async def test_defaults_when_body_is_empty(
    http: aiohttp.ClientSession, peer: RealtimePeer, clock: FakeClock
) -> None:
    bodies: list[dict[str, Any] | None] = [None, {}]
    for body in bodies:
        status, data = await mint(http, peer, body)
        assert status == 200, data
        assert data["expires_at"] == int(clock.t) + DEFAULT_EXPIRES_SECONDS == int(clock.t) + 600
        assert data["session"]["model"] == peer.model
        assert data["session"]["audio"]["output"]["voice"] == peer.voice


async def test_keys_are_unique(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    values = {(await mint(http, peer))[1]["value"] for _ in range(20)}
    assert len(values) == 20


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ([], "invalid_type", None),
        ("x", "invalid_type", None),
        ({"foo": 1}, "unknown_parameter", "foo"),
        ({"expires_after": 60}, "invalid_type", "expires_after"),
        ({"expires_after": {"seconds": "60"}}, "invalid_type", "expires_after.seconds"),
        ({"expires_after": {"seconds": 60.5}}, "invalid_type", "expires_after.seconds"),
        ({"expires_after": {"seconds": True}}, "invalid_type", "expires_after.seconds"),
        ({"expires_after": {"seconds": 9}}, "integer_below_min_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": 7201}}, "integer_above_max_value", "expires_after.seconds"),
        ({"expires_after": {"anchor": "now"}}, "invalid_value", "expires_after.anchor"),
        ({"expires_after": {"other": 1}}, "unknown_parameter", "expires_after.other"),
        ({"session": []}, "invalid_type", "session"),
        ({"session": {}}, "missing_required_parameter", "session.type"),
        ({"session": {"type": "transcription"}}, "invalid_value", "session.type"),
        ({"session": {"type": "realtime", "model": 3}}, "invalid_type", "session.model"),
        ({"session": {"type": "realtime", "bogus": 1}}, "unknown_parameter", "session.bogus"),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": 1}}}},
            "invalid_type",
            "session.audio.output.voice",
        ),
    ],
)
async def test_invalid_bodies_are_400(
    http: aiohttp.ClientSession, peer: RealtimePeer, body: Any, code: str, param: str | None
) -> None:
    status, data = await mint(http, peer, body)
    assert status == 400, data
    assert_openai_error(data, code, param)


async def test_bounds_are_inclusive(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    for seconds in (10, 7200):
        status, data = await mint(http, peer, {"expires_after": {"seconds": seconds}})
        assert status == 200, data


async def test_bad_json_is_400(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    status, data = await mint(http, peer, raw=b"{not json")
    assert status == 400
    assert_openai_error(data, None)
    assert "JSON" in data["error"]["message"]


async def test_oversized_body_is_413(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    status, data = await mint(http, peer, raw=b" " * (70 * 1024))
    assert status == 413
    assert_openai_error(data, "request_too_large")


async def test_wrong_content_type_is_400(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    status, data = await mint(http, peer, {}, ctype="text/plain")
    assert status == 400
    assert_openai_error(data, "unsupported_content_type")


@pytest.mark.parametrize("key", [None, "", "not-an-sk-key", "ek_0123456789abcdef"])
async def test_minting_needs_an_api_key(
    http: aiohttp.ClientSession, peer: RealtimePeer, key: str | None
) -> None:
    status, data = await mint(http, peer, {}, key=key)
    assert status == 401
    assert data["error"]["type"] == "invalid_request_error"
    assert peer.stats()["client_secrets_minted"] == 0


async def test_ephemeral_key_cannot_mint(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    _, data = await mint(http, peer, {})
    status, refused = await mint(http, peer, {}, key=data["value"])
    assert status == 401
    assert refused["error"]["code"] == "invalid_api_key"


async def test_configured_api_keys(http: aiohttp.ClientSession) -> None:
    async with RealtimePeer(api_keys={"sk-only-this-one"}) as p:
        assert (await mint(http, p, {}, key="sk-only-this-one"))[0] == 200
        status, data = await mint(http, p, {}, key=API_KEY)
        assert status == 401
        assert data["error"]["code"] == "invalid_api_key"
        # the message never echoes the key
        assert API_KEY not in str(data)


# ------------------------------------------------------------------------------ using keys


async def test_require_ephemeral_accepts_only_valid_minted_keys(
    http: aiohttp.ClientSession, peer: RealtimePeer, clock: FakeClock
) -> None:
    _, data = await mint(http, peer, {"expires_after": {"seconds": 30}})
    key = data["value"]
    status, body = await offer_status(http, peer, key)
    assert (status, body["error"]["code"]) == (400, "invalid_offer")  # auth passed

    for other in (API_KEY, "ek_unknown0123456789", "anything"):
        status, body = await offer_status(http, peer, other)
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"

    clock.t += 29.5
    assert (await offer_status(http, peer, key))[0] == 400  # still valid
    clock.t += 1
    status, body = await offer_status(http, peer, key)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    # expired and unknown get the same answer
    assert body == (await offer_status(http, peer, "ek_unknown0123456789"))[1]


async def test_expire_all_keys(http: aiohttp.ClientSession, peer: RealtimePeer) -> None:
    keys = [(await mint(http, peer))[1]["value"] for _ in range(3)]
    assert peer.expire_all_keys() == 3
    assert peer.expire_all_keys() == 0
    for key in keys:
        assert (await offer_status(http, peer, key))[0] == 401
    fresh = (await mint(http, peer))[1]["value"]
    assert (await offer_status(http, peer, fresh))[0] == 400


async def test_default_mode_still_accepts_any_token(http: aiohttp.ClientSession) -> None:
    async with RealtimePeer() as p:
        assert (await offer_status(http, p, "whatever"))[0] == 400  # past auth
        assert p.require_ephemeral is False


# ------------------------------------------------------------------------------ pure parts


def test_parse_request_defaults() -> None:
    assert parse_client_secret_request({}) == (600, None)
    seconds, session = parse_client_secret_request(
        {"expires_after": {"seconds": 60}, "session": {"type": "realtime"}}
    )
    assert (seconds, session) == (60, {"type": "realtime"})
    with pytest.raises(RequestError) as info:
        parse_client_secret_request({"session": {"type": "realtime", "instructions": ["x"]}})
    assert info.value.param == "session.instructions"


def test_store_status_and_pruning() -> None:
    clock = FakeClock(1000.0)
    store = ClientSecretStore(now=clock, max_keys=3)
    a = store.mint(10)
    assert store.status(a.value) == "valid"
    assert store.lookup(a.value) is a
    assert store.status("ek_nope") == "unknown"
    clock.t = 1010.0
    assert store.status(a.value) == "expired"
    assert store.lookup(a.value) is None
    b, c = store.mint(100), store.mint(100)
    d = store.mint(100)  # full: the expired key goes first
    assert store.status(a.value) == "unknown"
    assert len(store) == 3
    store.mint(100)  # full of valid keys: the oldest goes
    assert store.status(b.value) == "unknown"
    assert store.status(c.value) == store.status(d.value) == "valid"
    assert a.value not in repr(a) and a.value not in repr(store)
    assert store.accepts_api_key("sk-x") and not store.accepts_api_key("ek_x")
    assert not store.accepts_api_key("")
