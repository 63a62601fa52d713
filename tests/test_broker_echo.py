"""The broker never hands out what is not an ephemeral key: an upstream that answers 200 with
its own ``Authorization`` key (or anything else that is not an ``ek_`` key) gets a 502, audited,
and the API key is nowhere in the answer or the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.test_broker import API_KEY, anyio_backend, bearer, fake_upstream, make_broker, request

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]

FAR = 2_000_000_000

ECHOES: dict[str, Callable[[str], str]] = {
    "the API key itself": lambda key: key,
    "ek_ + the API key": lambda key: f"ek_{key}",
    "the API key inside": lambda key: f"ek_abc{key}def",
    "not an ek_ key": lambda key: "sk-other-0123456789abcdef",
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
async def test_upstream_echoing_the_api_key_is_refused(
    echo: Callable[[str], str], tmp_path: Path
) -> None:
    async def echoing(req: web.Request) -> web.StreamResponse:
        auth = req.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response({"value": echo(auth), "expires_at": FAR})

    async with (
        aiohttp.ClientSession() as http,
        fake_upstream(echoing) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502, body
        assert body["error"]["code"] == "upstream_invalid_response"
        assert "value" not in body and API_KEY not in json.dumps(body)
        rows = await broker.audit.rows()
        assert [(r["outcome"], r["detail"]) for r in rows] == [
            ("upstream_error", "upstream_invalid_response")
        ]
        assert API_KEY not in json.dumps([dict(r) for r in rows], default=str)


async def test_a_real_ek_key_is_still_handed_out(tmp_path: Path) -> None:
    async def minting(req: web.Request) -> web.StreamResponse:
        return web.json_response({"value": "ek_fresh_0123456789", "expires_at": FAR})

    async with (
        aiohttp.ClientSession() as http,
        fake_upstream(minting) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 200 and body["value"] == "ek_fresh_0123456789", body
