"""Client secrets (ephemeral ``ek_`` keys) on the local peer: ``POST /v1/realtime/client_secrets``.

Wire shape, as documented for the OpenAI Realtime API (GA):

request (JSON, both fields optional)::

    {"expires_after": {"anchor": "created_at", "seconds": 10..7200 (default 600)},
     "session": {"type": "realtime", "model": ..., "instructions": ...,
                 "audio": {"output": {"voice": ...}}, ...}}

response ``200``::

    {"value": "ek_...", "expires_at": <unix seconds>, "session": {<effective session>}}

The request needs ``Authorization: Bearer <API key>``: a key in the configured set, or (when no set
is configured) any ``sk-``-prefixed key. An ephemeral key cannot mint another one. The session
configuration attached to a key is applied to calls made with it (``/v1/realtime/calls``).

:class:`ClientSecretStore` keeps the minted keys with their expiry; its clock is injectable so
tests expire keys without sleeping. Nothing here logs a key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Literal

import attrs
from aiohttp import web

from fsm_voice._lifetime import read_limited

from . import protocol as p

__all__ = [
    "CLIENT_SECRETS_PATH",
    "DEFAULT_EXPIRES_SECONDS",
    "MAX_EXPIRES_SECONDS",
    "MIN_EXPIRES_SECONDS",
    "ClientSecretStore",
    "KeyStatus",
    "MintedKey",
    "RequestError",
    "add_client_secret_routes",
    "parse_client_secret_request",
]

CLIENT_SECRETS_PATH: Final = "/v1/realtime/client_secrets"
MIN_EXPIRES_SECONDS: Final = 10
MAX_EXPIRES_SECONDS: Final = 7200
DEFAULT_EXPIRES_SECONDS: Final = 600
"""The documented default TTL of a client secret (10 minutes) when ``expires_after`` is absent."""
MAX_REQUEST_BYTES: Final = 64 * 1024

# Top-level keys of a realtime session configuration (GA ``RealtimeSessionCreateRequest``).
SESSION_KEYS: Final = frozenset(
    {
        "type",
        "model",
        "instructions",
        "audio",
        "output_modalities",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
    }
)

KeyStatus = Literal["valid", "expired", "unknown"]


class RequestError(Exception):
    """A request the endpoint refuses with ``status`` and an OpenAI-shaped error body."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> web.Response:
        return web.json_response(
            p.http_error(self.message, code=self.code, param=self.param), status=self.status
        )


@attrs.frozen
class MintedKey:
    """One minted client secret. ``value`` is the secret: it is kept out of ``repr``."""

    value: str = attrs.field(repr=False)
    created_at: float
    expires_at: int
    session: Mapping[str, Any] = attrs.field(repr=False)
    minted_by: str = ""
    """A digest of the API key that minted it ("" when minted directly)."""


def _invalid_type(param: str, expected: str) -> RequestError:
    return RequestError(
        400, f"Invalid type for '{param}': expected {expected}.", "invalid_type", param
    )


def _unknown(param: str) -> RequestError:
    return RequestError(400, f"Unknown parameter: '{param}'.", "unknown_parameter", param)


def _int_field(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer")
    return value


def parse_client_secret_request(body: object) -> tuple[int, dict[str, Any] | None]:
    """Validate a decoded request body: ``(ttl seconds, session config or None)``.

    Raises :class:`RequestError` (400) naming the offending parameter.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.", "invalid_type")
    for key in body:
        if key not in ("expires_after", "session"):
            raise _unknown(str(key))
    seconds = DEFAULT_EXPIRES_SECONDS
    expires = body.get("expires_after")
    if expires is not None:
        if not isinstance(expires, dict):
            raise _invalid_type("expires_after", "an object")
        for key in expires:
            if key not in ("anchor", "seconds"):
                raise _unknown(f"expires_after.{key}")
        anchor = expires.get("anchor", "created_at")
        if anchor != "created_at":
            raise RequestError(
                400,
                f"Invalid value: {anchor!r}. Supported values are: 'created_at'.",
                "invalid_value",
                "expires_after.anchor",
            )
        if "seconds" in expires:
            seconds = _int_field(expires["seconds"], "expires_after.seconds")
            if seconds < MIN_EXPIRES_SECONDS:
                raise RequestError(
                    400,
                    f"Invalid 'expires_after.seconds': integer below minimum value. Expected a "
                    f"value >= {MIN_EXPIRES_SECONDS}, but got {seconds} instead.",
                    "integer_below_min_value",
                    "expires_after.seconds",
                )
            if seconds > MAX_EXPIRES_SECONDS:
                raise RequestError(
                    400,
                    f"Invalid 'expires_after.seconds': integer above maximum value. Expected a "
                    f"value <= {MAX_EXPIRES_SECONDS}, but got {seconds} instead.",
                    "integer_above_max_value",
                    "expires_after.seconds",
                )
    session = body.get("session")
    if session is None:
        return seconds, None
    if not isinstance(session, dict):
        raise _invalid_type("session", "an object")
    return seconds, _check_session(session)


def _check_session(session: dict[str, Any]) -> dict[str, Any]:
    for key in session:
        if key not in SESSION_KEYS:
            raise _unknown(f"session.{key}")
    stype = session.get("type")
    if stype is None:
        raise RequestError(
            400,
            "Missing required parameter: 'session.type'.",
            "missing_required_parameter",
            "session.type",
        )
    if stype != "realtime":
        raise RequestError(
            400,
            f"Invalid value: {stype!r}. The local peer supports 'realtime' sessions only.",
            "invalid_value",
            "session.type",
        )
    for key in ("model", "instructions"):
        if key in session and not isinstance(session[key], str):
            raise _invalid_type(f"session.{key}", "a string")
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise _invalid_type("session.audio", "an object")
        output = audio.get("output")
        if output is not None:
            if not isinstance(output, dict):
                raise _invalid_type("session.audio.output", "an object")
            voice = output.get("voice")
            if voice is not None and not isinstance(voice, str):
                raise _invalid_type("session.audio.output.voice", "a string")
    return session


class ClientSecretStore:
    """Mints ``ek_`` keys and remembers them (value -> :class:`MintedKey`) until they expire.

    ``api_keys``: API keys allowed to mint (None: any ``sk-``-prefixed key). ``now``: epoch
    seconds clock (injectable). At most ``max_keys`` keys are kept (expired ones go first, then
    the oldest).
    """

    def __init__(
        self,
        *,
        api_keys: Collection[str] | None = None,
        now: Callable[[], float] = time.time,
        model: str = p.DEFAULT_MODEL,
        voice: str = p.DEFAULT_VOICE,
        max_keys: int = 10_000,
    ) -> None:
        if max_keys <= 0:
            raise ValueError("max_keys must be positive")
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self.now = now
        self.model = model
        self.voice = voice
        self.max_keys = max_keys
        self._keys: dict[str, MintedKey] = {}
        self.minted = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"ClientSecretStore(keys={len(self._keys)}, minted={self.minted})"

    def accepts_api_key(self, key: str) -> bool:
        """Whether ``key`` may mint client secrets (ephemeral keys never may)."""
        if not key or key.startswith("ek_"):
            return False
        if self._api_keys is None:
            return key.startswith("sk-")
        return key in self._api_keys

    def mint(
        self,
        seconds: int = DEFAULT_EXPIRES_SECONDS,
        session: Mapping[str, Any] | None = None,
        *,
        api_key: str = "",
    ) -> MintedKey:
        """A new key valid for ``seconds`` carrying the effective session configuration
        (``api_key``: who minted it; only its digest is kept)."""
        created = self.now()
        model = str((session or {}).get("model") or self.model)
        effective = p.default_session(model, self.voice)
        if session is not None:
            effective = p.merge_session(effective, session)
        effective["expires_at"] = 0  # the session's own expiry starts with the call
        key = MintedKey(
            value="ek_" + secrets.token_hex(16),
            created_at=created,
            expires_at=int(created) + int(seconds),
            session=effective,
            minted_by=hashlib.sha256(api_key.encode()).hexdigest() if api_key else "",
        )
        self._prune()
        self._keys[key.value] = key
        self.minted += 1
        return key

    def _prune(self) -> None:
        if len(self._keys) < self.max_keys:
            return
        now = self.now()
        for value in [v for v, k in self._keys.items() if k.expires_at <= now]:
            del self._keys[value]
        while len(self._keys) >= self.max_keys:
            del self._keys[next(iter(self._keys))]

    def status(self, token: str) -> KeyStatus:
        key = self._keys.get(token)
        if key is None:
            return "unknown"
        return "valid" if self.now() < key.expires_at else "expired"

    def lookup(self, token: str) -> MintedKey | None:
        """The key if it is known and unexpired."""
        key = self._keys.get(token)
        return key if key is not None and self.now() < key.expires_at else None

    def expire_all(self) -> int:
        """Make every minted key expired now (they stay known: use gives 'expired')."""
        now = self.now()
        count = 0
        for value, key in list(self._keys.items()):
            if key.expires_at > now:
                self._keys[value] = attrs.evolve(key, expires_at=int(now) - 1)
                count += 1
        return count

    def __len__(self) -> int:
        return len(self._keys)


async def _read_json(request: web.Request) -> object:
    raw = await read_limited(request, MAX_REQUEST_BYTES)  # whole, however it is segmented
    if raw is None:
        raise RequestError(
            413,
            f"Request body too large: the limit is {MAX_REQUEST_BYTES} bytes.",
            "request_too_large",
        )
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
        ) from None


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of ``request`` (None when absent or not Bearer)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def add_client_secret_routes(app: web.Application, store: ClientSecretStore) -> None:
    """Register ``POST /v1/realtime/client_secrets`` for ``store`` on ``app``."""

    async def create(request: web.Request) -> web.StreamResponse:
        try:
            token = bearer_token(request)
            if token is None:
                raise RequestError(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if not store.accepts_api_key(token):
                raise RequestError(401, "Incorrect API key provided.", "invalid_api_key")
            if request.content_type not in ("application/json", "application/octet-stream"):
                raise RequestError(
                    400,
                    f"Unsupported content type {request.content_type!r}: send JSON.",
                    "unsupported_content_type",
                )
            seconds, session = parse_client_secret_request(await _read_json(request))
        except RequestError as err:
            store.refused += 1
            return err.response()
        key = store.mint(seconds, session, api_key=token)
        return web.json_response(
            {"value": key.value, "expires_at": key.expires_at, "session": key.session},
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_post(CLIENT_SECRETS_PATH, create)
