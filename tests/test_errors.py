"""Error model and classifiers (fsm_voice.errors)."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import pickle
import socket
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_voice.errors import (
    HTTP_STATUS_TABLE,
    SERVER_ERROR_TABLE,
    SERVER_ERROR_TYPE_DEFAULTS,
    ConfigError,
    ErrorSource,
    Severity,
    VoiceError,
    classify,
    classify_exception,
    classify_http,
    classify_server_event,
    machine_severity,
    parse_retry_after,
    redact,
)

T, R, F = Severity.TRANSIENT, Severity.RECOVERABLE, Severity.FATAL


def server_event(
    code: Any = None, error_type: Any = "invalid_request_error", message: Any = "boom", **extra: Any
) -> dict[str, Any]:
    error = {"type": error_type, "code": code, "message": message, "param": None, "event_id": None}
    error.update(extra)
    return {"type": "error", "event_id": "event_1", "error": error}


# --------------------------------------------------------------------------------------------
# VoiceError
# --------------------------------------------------------------------------------------------


def test_voice_error_is_a_frozen_exception_with_readable_str() -> None:
    err = VoiceError(F, "invalid_api_key", "Incorrect API key provided", ErrorSource.SERVER)
    assert isinstance(err, Exception)
    assert str(err) == "[fatal] invalid_api_key (server): Incorrect API key provided"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        err.code = "other"  # type: ignore[misc]
    with pytest.raises(VoiceError) as info:
        raise err
    assert info.value is err


def test_voice_error_str_mentions_http_status_and_retry_after() -> None:
    err = VoiceError(
        R, "rate_limit_exceeded", "slow down", ErrorSource.SIGNALING, 2.5, http_status=429
    )
    assert str(err) == (
        "[recoverable] rate_limit_exceeded (signaling, HTTP 429): slow down (retry after 2.5s)"
    )


@pytest.mark.parametrize(("severity", "retryable"), [(T, True), (R, True), (F, False)])
def test_retryable_is_false_only_for_fatal(severity: Severity, retryable: bool) -> None:
    assert VoiceError(severity, "c", "m", ErrorSource.CLIENT).retryable is retryable


def test_voice_error_message_is_always_redacted() -> None:
    err = VoiceError(F, "x", "key sk-proj-abcdefghijklmnop leaked", ErrorSource.CLIENT)
    assert "abcdefghijklmnop" not in err.message
    assert "abcdefghijklmnop" not in str(err)


def test_voice_error_pickles_and_accepts_notes() -> None:
    err = VoiceError(R, "server_error", "oops", ErrorSource.SERVER, 1.0, error_type="server_error")
    err.add_note("while reconnecting")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.severity, copy.code, copy.message, copy.retry_after, copy.error_type) == (
        R,
        "server_error",
        "oops",
        1.0,
        "server_error",
    )


def test_enum_values() -> None:
    assert [s.value for s in Severity] == ["transient", "recoverable", "fatal"]
    assert {s.value for s in ErrorSource} == {
        "server",
        "signaling",
        "network",
        "media",
        "transport",
        "config",
        "client",
    }


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: sk-abc123def456ghi789.", "abc123def456ghi789"),
        ("key sk-proj-AbCdEf_12-34567890xyz here", "AbCdEf_12-34567890xyz"),
        ("Incorrect API key provided: sk-abcde*********************wxyz", "wxyz"),
        ("ephemeral ek_68af3c2a9f2c8190abcdef used", "68af3c2a9f2c8190abcdef"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("authorization: bearer ek_secret_value_123", "secret_value_123"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


@pytest.mark.parametrize(
    "text",
    ["Conversation already has an active response", "risk-free task", "use sk-learn", "desk-top"],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_is_idempotent_and_bounds_length() -> None:
    once = redact("Bearer abc " + "x" * 2000)
    assert redact(once) == once
    assert len(once) <= 500
    assert once.startswith("Bearer *** ")


@given(st.text())
def test_redact_never_grows_text_beyond_limit(text: str) -> None:
    out = redact(text)
    assert len(out) <= max(500, len(text))
    assert redact(out) == out


# --------------------------------------------------------------------------------------------
# Server events
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), sorted(SERVER_ERROR_TABLE.items()))
def test_every_table_code_maps_as_the_table_says(
    code: str, expected: tuple[Severity, bool]
) -> None:
    err = classify_server_event(server_event(code))
    assert (err.severity, err.ignorable) == expected
    assert err.code == code
    assert err.source is ErrorSource.SERVER
    assert not (err.ignorable and err.severity is not T), "only transient errors are ignorable"


@pytest.mark.parametrize(("code", "expected"), [
    ("response_cancel_not_active", "ignorable"), ("invalid_value", "transient"),
    ("server_error", "recoverable"), ("session_expired", "recoverable"),
    ("invalid_api_key", "fatal")])
def test_machine_severity_marks_ignorable_races(code: str, expected: str) -> None:
    """The machine gets every server error; ``ignorable`` is a severity to its table."""
    from fsm_voice.machine import SEVERITIES

    assert machine_severity(classify_server_event(server_event(code))) == expected
    assert expected in SEVERITIES


# Independent expectations: if the table is edited wrongly, these fail.
EXPECTED = {
    "conversation_already_has_active_response": (T, True),
    "response_cancel_not_active": (T, True),
    "input_audio_buffer_commit_empty": (T, True),
    "item_truncate_invalid_item_id": (T, True),
    "invalid_event": (T, False),
    "invalid_value": (T, False),
    "unknown_parameter": (T, False),
    "missing_required_parameter": (T, False),
    "session_expired": (R, False),
    "server_error": (R, False),
    "internal_error": (R, False),
    "rate_limit_exceeded": (R, False),
    "invalid_api_key": (F, False),
    "insufficient_quota": (F, False),
    "model_not_found": (F, False),
    "invalid_model": (F, False),
    "permission_denied": (F, False),
}


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_important_codes(code: str, expected: tuple[Severity, bool]) -> None:
    assert SERVER_ERROR_TABLE[code] == expected
    err = classify_server_event(server_event(code))
    assert (err.severity, err.ignorable) == expected


def test_server_event_fields_are_carried() -> None:
    err = classify_server_event(
        {
            "type": "error",
            "event_id": "event_890",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "Invalid value: 'pcm17'.",
                "param": "session.audio.input.format",
                "event_id": "event_567",
            },
        }
    )
    assert err.severity is T and not err.ignorable
    assert err.code == "invalid_value"
    assert err.error_type == "invalid_request_error"
    assert err.param == "session.audio.input.format"
    assert err.event_id == "event_567"  # the client event that caused it
    assert err.message == "Invalid value: 'pcm17'."
    assert err.http_status is None


@pytest.mark.parametrize(("error_type", "severity"), sorted(SERVER_ERROR_TYPE_DEFAULTS.items()))
def test_unknown_code_falls_back_to_type_default(error_type: str, severity: Severity) -> None:
    err = classify_server_event(server_event("some_new_code", error_type))
    assert err.severity is severity
    assert err.ignorable is False
    assert err.code == "some_new_code"


def test_type_defaults_explicit() -> None:
    assert classify_server_event(server_event(None, "authentication_error")).severity is F
    assert classify_server_event(server_event(None, "permission_error")).severity is F
    assert classify_server_event(server_event(None, "server_error")).severity is R
    assert classify_server_event(server_event(None, "rate_limit_error")).severity is R
    # A per-event request error must not end the session nor trigger a reconnect.
    err = classify_server_event(server_event("brand_new_request_problem", "invalid_request_error"))
    assert err.severity is T and err.ignorable is False


def test_code_without_type_and_unknown_type_are_recoverable() -> None:
    err = classify_server_event(server_event(None, "weird_type", "???"))
    assert err.severity is R
    assert err.code == "weird_type"
    assert classify_server_event(server_event("mystery", None)).severity is R


@pytest.mark.parametrize(
    ("message", "code", "ignorable"),
    [
        (
            "Conversation already has an active response",
            "conversation_already_has_active_response",
            True,
        ),
        ("Cancellation failed: no active response found", "response_cancel_not_active", True),
        (
            "Error committing input audio buffer: buffer too small. Expected at least 100ms",
            "input_audio_buffer_commit_empty",
            True,
        ),
        ("Your session hit the maximum duration of 30 minutes.", "session_expired", False),
    ],
)
def test_codeless_errors_recognised_by_message(message: str, code: str, ignorable: bool) -> None:
    err = classify_server_event(server_event(None, "invalid_request_error", message))
    assert err.code == code
    assert err.ignorable is ignorable


def test_explicit_code_wins_over_message_hint() -> None:
    err = classify_server_event(server_event("invalid_api_key", message="buffer too small"))
    assert err.severity is F and err.code == "invalid_api_key"


def test_rate_limit_message_gives_retry_after() -> None:
    err = classify_server_event(
        server_event(
            "rate_limit_exceeded",
            "rate_limit_error",
            "Rate limit reached for tokens. Please try again in 1.5s.",
        )
    )
    assert err.retry_after == 1.5
    err = classify_server_event(
        server_event("rate_limit_exceeded", "rate_limit_error", "Please try again in 250ms.")
    )
    assert err.retry_after == 0.25


def test_server_event_message_is_redacted() -> None:
    err = classify_server_event(
        server_event(
            "invalid_api_key",
            "invalid_request_error",
            "Incorrect API key provided: sk-proj-SECRETSECRETSECRET",
        )
    )
    assert "SECRET" not in err.message and "SECRET" not in str(err)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": "error"},
        {"type": "error", "error": None},
        {"type": "error", "error": "string"},
        {"type": "error", "error": []},
        {"type": "error", "error": {}},
        {"type": "error", "error": {"code": 42, "type": ["x"], "message": {"a": 1}}},
        {"type": "error", "error": {"code": "", "type": "  ", "message": ""}},
    ],
)
def test_garbage_server_events_give_unknown_error(event: dict[str, Any]) -> None:
    err = classify_server_event(event)
    assert err.code == "unknown_error"
    assert err.severity is R
    assert err.ignorable is False
    assert err.message  # never empty


class _ExplodingMapping(dict[str, Any]):
    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("nope")


def test_misbehaving_mapping_does_not_raise() -> None:
    err = classify_server_event(_ExplodingMapping())
    assert err.code == "unknown_error" and err.severity is R


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
error_keys = st.sampled_from(["type", "code", "message", "param", "event_id"])
error_bodies = st.dictionaries(
    error_keys,
    json_values | st.sampled_from([*SERVER_ERROR_TABLE, *SERVER_ERROR_TYPE_DEFAULTS]),
)


@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=5)
    | st.builds(
        lambda body, extra: {**extra, "type": "error", "error": body},
        error_bodies,
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    )
)
def test_classify_server_event_never_raises(event: dict[str, Any]) -> None:
    err = classify_server_event(event)
    assert isinstance(err, VoiceError)
    assert isinstance(err.severity, Severity)
    assert err.source is ErrorSource.SERVER
    assert err.code and err.message
    assert not (err.ignorable and err.severity is not T)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (400, F),
        (401, F),
        (403, F),
        (404, F),
        (408, T),
        (409, T),
        (413, F),
        (422, F),
        (429, R),
        (500, R),
        (502, R),
        (503, R),
        (504, R),
        (507, R),
        (599, R),
        (301, F),
        (302, F),
    ],
)
def test_http_status_severity(status: int, severity: Severity) -> None:
    err = classify_http(status)
    assert err.severity is severity
    assert err.source is ErrorSource.SIGNALING
    assert err.http_status == status


def test_http_status_table_matches_its_explicit_expectations() -> None:
    for status, severity in HTTP_STATUS_TABLE.items():
        assert classify_http(status).severity is severity


def test_http_default_code_and_message() -> None:
    err = classify_http(429)
    assert err.code == "http_too_many_requests"
    assert err.message == "HTTP 429 Too Many Requests"
    assert classify_http(499).code == "http_499"


def test_http_openai_json_body_supplies_code_and_message() -> None:
    body = (
        b'{"error": {"message": "Incorrect API key provided: sk-abcd****************wxyz.",'
        b' "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
    )
    err = classify_http(401, body)
    assert err.severity is F
    assert err.code == "invalid_api_key"
    assert err.error_type == "invalid_request_error"
    assert err.message.startswith("Incorrect API key provided")
    assert "wxyz" not in err.message


def test_http_429_insufficient_quota_is_fatal_even_with_retry_after() -> None:
    body = (
        '{"error": {"message": "You exceeded your current quota, please check your plan and '
        'billing details.", "type": "insufficient_quota", "param": null, '
        '"code": "insufficient_quota"}}'
    )
    err = classify_http(429, body, {"Retry-After": "20"})
    assert err.severity is F
    assert err.code == "insufficient_quota"
    assert err.retry_after is None
    assert not err.retryable


def test_http_429_rate_limit_is_recoverable_with_retry_after() -> None:
    body = (
        '{"error": {"message": "Rate limit reached", "type": "rate_limit_error",'
        ' "code": "rate_limit_exceeded"}}'
    )
    err = classify_http(429, body, {"retry-after": "7"})
    assert err.severity is R
    assert err.code == "rate_limit_exceeded"
    assert err.retry_after == 7.0


def test_http_body_fatal_type_makes_fatal() -> None:
    body = '{"error": {"message": "denied", "type": "permission_error", "code": null}}'
    assert classify_http(500, body).severity is F


def test_http_body_per_event_code_does_not_soften_a_fatal_status() -> None:
    body = (
        '{"error": {"message": "bad sdp", "type": "invalid_request_error",'
        ' "code": "invalid_value"}}'
    )
    err = classify_http(400, body)
    assert err.severity is F and err.code == "invalid_value"


def test_http_503_retry_after_http_date() -> None:
    now = 1_445_412_470.0  # 2015-10-21 07:27:50 UTC
    err = classify_http(503, None, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=now)
    assert err.severity is R
    assert err.retry_after == pytest.approx(10.0)


def test_http_retry_after_ms_preferred() -> None:
    err = classify_http(429, None, {"retry-after-ms": "1500", "Retry-After": "2"})
    assert err.retry_after == 1.5


def test_http_non_json_body_used_as_message_and_redacted() -> None:
    err = classify_http(502, b"Bad gateway, token Bearer abc.def.ghi")
    assert err.message == "Bad gateway, token Bearer ***"
    err = classify_http(500, b"\xff\xfe not utf8")
    assert "not utf8" in err.message


@pytest.mark.parametrize(
    "body", [b"", "   ", "{not json", '{"error": "flat"}', "[1,2]", '{"error": {"code": 7}}']
)
def test_http_garbage_bodies(body: bytes | str) -> None:
    err = classify_http(503, body)
    assert err.severity is R
    assert err.message


def test_http_garbage_status() -> None:
    err = classify_http(True)
    assert err.severity is R and err.http_status == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: clamped
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("1e9999", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_445_412_470.0) == (
        pytest.approx(expected) if expected is not None else None
    )


def test_parse_retry_after_uses_wall_clock_by_default() -> None:
    future = email.utils.formatdate(usegmt=True, timeval=__import__("time").time() + 3600)
    seconds = parse_retry_after(future)
    assert seconds is not None and 3500 < seconds <= 3600


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


def test_voice_error_passes_through_unchanged() -> None:
    err = VoiceError(F, "x", "y", ErrorSource.CONFIG)
    assert classify_exception(err) is err
    assert classify(err) is err


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "econnrefused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "econnreset"),
        (ConnectionError("gone"), "ConnectionError"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "enetunreach"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "ehostunreach"),
        (OSError(errno.ETIMEDOUT, "timed out"), "timeout"),  # OSError(ETIMEDOUT) is TimeoutError
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns_error"),
        (aiohttp.ServerDisconnectedError(), "ServerDisconnectedError"),
        (aiohttp.ClientConnectionError("x"), "ClientConnectionError"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), "econnreset"),
        (anyio.BrokenResourceError(), "BrokenResourceError"),
    ],
)
def test_network_exceptions_are_transient(exc: BaseException, code: str) -> None:
    err = classify_exception(exc)
    assert err.severity is T
    assert err.source is ErrorSource.NETWORK
    assert err.code == code


def test_anyio_fail_after_timeout_is_transient() -> None:
    async def main() -> None:
        with anyio.fail_after(0.001):
            await anyio.sleep(1)

    with pytest.raises(TimeoutError) as info:
        anyio.run(main)
    assert classify_exception(info.value).severity is T


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PermissionError(errno.EACCES, "microphone"), "permission_denied"),
        (FileNotFoundError(errno.ENOENT, "No such file", "hello.wav"), "file_not_found"),
    ],
)
def test_media_exceptions_are_fatal(exc: BaseException, code: str) -> None:
    err = classify_exception(exc)
    assert (err.severity, err.source, err.code) == (F, ErrorSource.MEDIA, code)


def test_pyav_errors_are_fatal_media() -> None:
    av = pytest.importorskip("av")
    with pytest.raises(av.error.FFmpegError) as info:
        av.open("/nonexistent/definitely/missing.wav")
    err = classify_exception(info.value)
    assert err.severity is F
    assert err.source is ErrorSource.MEDIA


@pytest.mark.parametrize("exc", [ValueError("bad sample rate"), TypeError("not a str")])
def test_value_and_type_errors_are_fatal_config(exc: BaseException) -> None:
    err = classify_exception(exc)
    assert (err.severity, err.source, err.code) == (F, ErrorSource.CONFIG, type(exc).__name__)


def test_config_error() -> None:
    exc = ConfigError.invalid("RetryPolicy.factor", 0.5, "a number in [1, 10]")
    assert isinstance(exc, ValueError)
    assert exc.field == "RetryPolicy.factor"
    assert str(exc) == "RetryPolicy.factor=0.5 is invalid: expected a number in [1, 10]"
    err = classify_exception(exc)
    assert (err.severity, err.source, err.code) == (F, ErrorSource.CONFIG, "invalid_config")


def test_decoding_received_data_is_not_a_config_error() -> None:
    with pytest.raises(ValueError) as info:
        __import__("json").loads("{oops")
    assert classify_exception(info.value).severity is R
    assert classify_exception(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")).severity is R


def test_other_exceptions_are_recoverable_with_class_name() -> None:
    class Weird(Exception):
        pass

    err = classify_exception(Weird("sk-proj-1234567890abcdef"))
    assert (err.severity, err.code, err.source) == (R, "Weird", ErrorSource.CLIENT)
    assert "1234567890abcdef" not in err.message
    assert classify_exception(RuntimeError()).message == "RuntimeError"


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)])
def test_cancellation_is_never_retried(exc: BaseException) -> None:
    err = classify_exception(exc)
    assert err.severity is F and err.code == "cancelled"


def test_exception_group_takes_most_severe_member() -> None:
    group = ExceptionGroup("tg", [TimeoutError(), RuntimeError("x"), ValueError("cfg")])
    assert classify_exception(group).code == "ValueError"
    group = ExceptionGroup("tg", [TimeoutError(), ExceptionGroup("inner", [RuntimeError("x")])])
    assert classify_exception(group).severity is R


def test_aiohttp_response_error_classified_by_status() -> None:
    exc = aiohttp.ClientResponseError(
        request_info=None,  # type: ignore[arg-type]
        history=(),
        status=429,
        message="Too Many Requests",
        headers={"Retry-After": "4"},  # type: ignore[arg-type]
    )
    err = classify_exception(exc)
    assert (err.severity, err.http_status, err.retry_after) == (R, 429, 4.0)


# --------------------------------------------------------------------------------------------
# classify()
# --------------------------------------------------------------------------------------------


def test_classify_dispatches_on_type() -> None:
    assert classify(server_event("session_expired")).code == "session_expired"
    assert classify(server_event("session_expired")).source is ErrorSource.SERVER
    http_err = classify(401)
    assert http_err.source is ErrorSource.SIGNALING and http_err.severity is F
    assert classify(ConnectionResetError()).source is ErrorSource.NETWORK
    other = classify("what")
    assert (other.code, other.severity) == ("unknown_error", R)
    assert classify(True).code == "unknown_error"  # a bool is not an HTTP status
