"""Fault-injection control API of the local peer (``/control/...``), loopback callers only.

Every endpoint mirrors a :class:`~fsm_voice.peer.server.RealtimePeer` method:

=========================  ======  ==============================================================
path                       method  body (JSON) -> result
=========================  ======  ==============================================================
/control/calls             GET     -> ``{"calls": [call info...]}``
/control/calls/{id}/conversation GET -> ``{"call_id", "items": [item...]}`` (live calls)
/control/calls/{id}/events GET     -> ``{"call_id", "events": [{event_id, type}...]}`` received
/control/stats             GET     -> counters (offers, calls, events received per type, faults)
/control/send_error        POST    ``{type?, code?, message, param?, call_id?}`` -> ``{"sent": n}``
/control/send_event        POST    ``{event: {type, ...}, call_id?}`` -> ``{"sent": n}`` (any event)
/control/go_silent         POST    ``{call_id?}`` -> ``{"calls": n}``
/control/resume            POST    ``{call_id?}`` -> ``{"calls": n}``
/control/mute_media        POST    ``{call_id?}`` -> ``{"calls": n}`` (RTP stops, like a browser's
                                   ``replaceTrack(null)``; ICE/DTLS/data channel stay up)
/control/unmute_media      POST    ``{call_id?}`` -> ``{"calls": n}``
/control/close_call        POST    ``{call_id?}`` -> ``{"closed": n}``
/control/reject_offers     POST    ``{count, status, retry_after?, code?, message?}``
/control/delay_answers     POST    ``{seconds}``
/control/drop_calls_after  POST    ``{seconds|null}``: close each new call that long after it opens
/control/expires_at        POST    ``{expires_at|null}``: new calls report this session.expires_at
/control/reset             POST    clears pending offer/config rejections and answer delay
/control/live_sessions     GET     -> ``{"sessions": [LiveSessionRecord as a dict...]}``
/control/live_close        POST    ``{reason, session_id?}`` -> ``{"closed": n}``: session.closed
                                   {reason} (one of the five), then the Live call ends
/control/reject_config     POST    ``{code, message?, param?, count?, status?}``: the next Live
                                   create(s) get 400 with this code
=========================  ======  ==============================================================

A request is refused (403) unless it comes from a loopback address, carries no ``Origin``
header (which browsers add to cross-site requests: a web page cannot drive the peer), names the
peer in ``Host`` (a loopback literal, ``localhost`` or the bound address: a DNS-rebound name is
refused) and carries the peer's control token (``X-Control-Token``, see
:attr:`~fsm_voice.peer.server.RealtimePeer.control_token`): another local process cannot list or
hang up the calls. Bodies are JSON objects of at most 64 KiB, read whole however they are
segmented; too deep a nesting is a 400, ``reject_offers.count`` is bounded.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fsm_voice._lifetime import read_limited

from .protocol import http_error

if TYPE_CHECKING:
    from .server import RealtimePeer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROL_TOKEN_HEADER = "X-Control-Token"
MAX_CONTROL_BODY = 64 * 1024


def is_loopback_address(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def host_names_peer(host: str | None, bound: str, port: int | None) -> bool:
    """Whether a ``Host`` header names this peer: a loopback literal, ``localhost`` or the
    bound address, with no port or the bound one (anything else is e.g. a DNS-rebound name)."""
    if not host:
        return False
    text = host.strip().lower()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port_text = rest[1:]
    elif text.count(":") == 1:
        name, port_text = text.split(":")
    elif ":" in text:
        return False  # an unbracketed IPv6 address is not a valid Host
    else:
        name, port_text = text, ""
    if port_text and (not port_text.isdigit() or port is None or int(port_text) != port):
        return False
    return name in ("localhost", bound.lower()) or is_loopback_address(name)


def control_refusal(
    remote: str | None,
    origin: str | None,
    *,
    host: str | None = None,
    bound: str | None = None,
    port: int | None = None,
    token: str | None = None,
    expected_token: str | None = None,
) -> str | None:
    """Why a control request must be refused, or None when it may proceed (``host``/``token``
    are checked when ``bound``/``expected_token`` are given)."""
    if not is_loopback_address(remote):
        return f"the control API accepts loopback callers only (caller: {remote!r})"
    if origin is not None:
        return "the control API refuses browser (Origin) requests"
    if bound is not None and not host_names_peer(host, bound, port):
        return "the control API refuses requests whose Host does not name the peer"
    if expected_token is not None and not hmac.compare_digest(
        (token or "").encode(), expected_token.encode()
    ):
        return f"the control API needs this peer's control token in {CONTROL_TOKEN_HEADER}"
    return None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await read_limited(request, MAX_CONTROL_BODY)  # whole, however it is segmented
    if raw is None:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_CONTROL_BODY, actual_size=request.content_length or MAX_CONTROL_BODY + 1
        )
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _bad("body is nested too deeply") from None
    except ValueError as exc:
        raise _bad(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _bad("body must be a JSON object")
    return data


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps(http_error(message, code="invalid_value")),
        content_type="application/json",
    )


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{key!r} must be a string")
    return value


def _number(body: dict[str, Any], key: str, default: float | None = None) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{key!r} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise _bad(f"{key!r} must be finite")
    return number


def add_control_routes(app: web.Application, peer: RealtimePeer) -> None:
    """Register the ``/control`` endpoints for ``peer`` on ``app``."""

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            reason = control_refusal(
                request.remote,
                request.headers.get("Origin"),
                host=request.headers.get("Host"),
                bound=peer.host,
                port=peer.bound_port,
                token=request.headers.get(CONTROL_TOKEN_HEADER),
                expected_token=peer.control_token,
            )
            if reason is not None:
                return _json(http_error(reason, code="forbidden"), status=403)
            return await handler(request)

        return wrapper

    async def calls(request: web.Request) -> web.StreamResponse:
        return _json({"calls": peer.list_calls()})

    def _live_call(request: web.Request) -> Any:
        call = peer.calls.get(request.match_info["call_id"])
        if call is None:
            raise web.HTTPNotFound(
                text=json.dumps(http_error("Call not found (or ended).", code="call_not_found")),
                content_type="application/json")
        return call

    async def conversation(request: web.Request) -> web.StreamResponse:
        call = _live_call(request)
        return _json({"call_id": call.id, "items": call.conversation()})

    async def received(request: web.Request) -> web.StreamResponse:
        call = _live_call(request)
        return _json({"call_id": call.id, "events": call.received()})

    async def stats(request: web.Request) -> web.StreamResponse:
        return _json(peer.stats())

    async def send_error(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        message = _opt_str(body, "message") or "Injected error"
        sent = peer.send_error(
            _opt_str(body, "type") or "server_error",
            _opt_str(body, "code"),
            message,
            param=_opt_str(body, "param"),
            call_id=_opt_str(body, "call_id"),
        )
        return _json({"sent": sent})

    async def send_event(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        event = body.get("event")
        if not isinstance(event, dict):
            raise _bad("'event' must be an object")
        try:
            sent = peer.send_event(event, _opt_str(body, "call_id"))
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"sent": sent})

    async def go_silent(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json({"calls": peer.go_silent(_opt_str(body, "call_id"))})

    async def resume(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json({"calls": peer.resume(_opt_str(body, "call_id"))})

    async def mute_media(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json({"calls": peer.mute_media(_opt_str(body, "call_id"))})

    async def unmute_media(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json({"calls": peer.unmute_media(_opt_str(body, "call_id"))})

    async def close_call(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json({"closed": await peer.close_call(_opt_str(body, "call_id"))})

    async def reject_offers(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        retry = body.get("retry_after")
        try:
            peer.reject_offers(
                int(_number(body, "count")),
                int(_number(body, "status", 503)),
                retry_after=None if retry is None else _number(body, "retry_after"),
                code=_opt_str(body, "code"),
                message=_opt_str(body, "message"),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"pending_rejections": peer.pending_rejections})

    async def delay_answers(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        try:
            peer.delay_answers(_number(body, "seconds"))
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"answer_delay": peer.answer_delay})

    async def drop_calls_after(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        seconds = None if body.get("seconds") is None else _number(body, "seconds")
        try:
            peer.drop_calls_after(seconds)
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"drop_after": peer.drop_after})

    async def expires_at(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        try:
            peer.session_expires_at(body.get("expires_at"))
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"expires_at": peer.expires_at})

    async def live_sessions(request: web.Request) -> web.StreamResponse:
        return _json({"sessions": [r.to_dict() for r in peer.live_sessions]})

    async def live_close(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        try:
            closed = await peer.live_close(_opt_str(body, "reason") or "",
                                           _opt_str(body, "session_id"))
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"closed": closed})

    async def reject_config(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        try:
            peer.reject_config(
                _opt_str(body, "code") or "",
                _opt_str(body, "message"),
                param=_opt_str(body, "param"),
                count=int(_number(body, "count", 1)),
                status=int(_number(body, "status", 400)),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return _json({"pending_config_rejections": peer.stats()["pending_config_rejections"]})

    async def reset(request: web.Request) -> web.StreamResponse:
        peer.reset_faults()
        return _json({"ok": True})

    app.router.add_get("/control/calls", guarded(calls))
    app.router.add_get("/control/stats", guarded(stats))
    app.router.add_get("/control/calls/{call_id}/conversation", guarded(conversation))
    app.router.add_get("/control/calls/{call_id}/events", guarded(received))
    app.router.add_get("/control/live_sessions", guarded(live_sessions))
    for path, handler in (
        ("send_error", send_error),
        ("send_event", send_event),
        ("go_silent", go_silent),
        ("resume", resume),
        ("mute_media", mute_media),
        ("unmute_media", unmute_media),
        ("close_call", close_call),
        ("reject_offers", reject_offers),
        ("delay_answers", delay_answers),
        ("drop_calls_after", drop_calls_after),
        ("expires_at", expires_at),
        ("reset", reset),
        ("live_close", live_close),
        ("reject_config", reject_config),
    ):
        app.router.add_post(f"/control/{path}", guarded(handler))
