"""Policies (fsm_voice.policy): defaults, arithmetic, validation."""

from __future__ import annotations

import math
import random
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_voice.errors import ConfigError
from fsm_voice.policy import (
    IcePolicy,
    IceServer,
    IceUrl,
    MonitorPolicy,
    QualityAlert,
    QualityThresholds,
    RetryPolicy,
    RolloverPolicy,
    SessionPolicy,
    parse_ice_url,
)
from fsm_voice.ports import ConnectionMetrics

# --------------------------------------------------------------------------------------------
# RetryPolicy
# --------------------------------------------------------------------------------------------


def test_retry_defaults() -> None:
    p = RetryPolicy()
    assert (p.base_delay, p.factor, p.max_attempts, p.max_delay, p.jitter, p.stable_after,
            p.max_retry_after) == (2.0, 2.0, 3, 30.0, 0.2, 10.0, 60.0)
    assert p.delays() == (2.0, 4.0, 8.0)
    exact = RetryPolicy(jitter=0)
    assert [exact.delay(n) for n in range(3)] == [2.0, 4.0, 8.0]


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 4.0), (1.0, 4.0), (5.0, 5.0)])
def test_backoff_honours_retry_after(retry_after: float | None, expected: float) -> None:
    assert RetryPolicy(jitter=0).backoff(1, retry_after) == expected


@pytest.mark.parametrize(("retry_after", "too_long"), [(None, False), (60.0, False),
                                                       (60.5, True), (math.inf, True),
                                                       (math.nan, True)])
def test_retry_after_too_long(retry_after: float | None, too_long: bool) -> None:
    assert RetryPolicy().retry_after_too_long(retry_after) is too_long


@pytest.mark.parametrize(("expires_in", "delay"), [
    (1800.0, 1770.0), (10.0, 60.0), (90.0, 60.0), (91, 61.0), (0.0, None), (-1.0, None),
    (math.nan, None), (math.inf, None), (-math.inf, None), (1e12, None), (None, None),
    (True, None), ("60", None)])
def test_rollover_delay_is_sanitised(expires_in: Any, delay: float | None) -> None:
    assert RolloverPolicy().delay(expires_in) == delay


@pytest.mark.parametrize("kwargs", [{"margin": -1}, {"min_interval": 0},
                                    {"max_expires_in": math.inf}, {"margin": math.nan}])
def test_rollover_policy_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RolloverPolicy(**kwargs)


def test_retry_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RetryPolicy().factor = 3.0  # type: ignore[misc]


def test_max_delay_clamps() -> None:
    p = RetryPolicy(base_delay=1, factor=3, max_attempts=6, max_delay=20, jitter=0)
    assert p.delays() == (1.0, 3.0, 9.0, 20.0, 20.0, 20.0)
    assert p.delay(10_000) == 20.0  # no overflow for absurd attempts


def test_zero_attempts_has_no_delays() -> None:
    assert RetryPolicy(max_attempts=0).delays() == ()


def test_factor_one_is_constant() -> None:
    assert RetryPolicy(base_delay=0.5, factor=1, max_attempts=4).delays() == (0.5,) * 4


def test_ints_are_accepted_for_floats() -> None:
    p = RetryPolicy(base_delay=1, max_delay=10)
    assert isinstance(p.base_delay, float) and isinstance(p.delay(0), float)


@pytest.mark.parametrize("attempt", [-1, 1.5, True, "0"])
def test_delay_rejects_bad_attempt(attempt: Any) -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(attempt)


def test_jitter_is_deterministic_with_seeded_rng() -> None:
    p = RetryPolicy(jitter=0.5)
    a = [p.delay(n, random.Random(42)) for n in range(3)]
    b = [p.delay(n, random.Random(42)) for n in range(3)]
    assert a == b
    assert a != [2.0, 4.0, 8.0]


def test_jitter_spreads_within_bounds() -> None:
    p = RetryPolicy(jitter=0.25, max_attempts=3)
    rng = random.Random(7)
    samples = [p.delay(2, rng) for _ in range(2000)]
    assert all(6.0 <= s <= 10.0 for s in samples)  # 8 * (1 ± 0.25)
    assert min(samples) < 6.2 and max(samples) > 9.8  # really spreads over the whole band
    assert 7.8 < sum(samples) / len(samples) < 8.2  # centred on the nominal delay


def test_jitter_does_not_change_nominal_delays() -> None:
    assert RetryPolicy(jitter=1.0).delays() == (2.0, 4.0, 8.0)


def test_without_jitter_rng_is_not_consumed() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    RetryPolicy(jitter=0).delay(1, rng)
    assert rng.getstate() == state


@given(
    base=st.floats(0.01, 300),
    factor=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempt=st.integers(0, 50),
    seed=st.integers(0, 2**32),
)
def test_delay_bounds_property(
    base: float, factor: float, jitter: float, attempt: int, seed: int
) -> None:
    p = RetryPolicy(base_delay=base, factor=factor, max_delay=max(base, 60.0), jitter=jitter)
    nominal = min(p.max_delay, base * factor**attempt) if attempt < 400 else p.max_delay
    d = p.delay(attempt, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-9 <= d <= nominal * (1 + jitter) + 1e-9
    assert math.isfinite(d) and d >= 0


# Every invalid value: (class, kwargs, field named in the message)
INVALID: list[tuple[type, dict[str, Any], str]] = [
    (RetryPolicy, {"base_delay": 0}, "RetryPolicy.base_delay"),
    (RetryPolicy, {"base_delay": -1.0}, "RetryPolicy.base_delay"),
    (RetryPolicy, {"base_delay": 301, "max_delay": 400}, "RetryPolicy.base_delay"),
    (RetryPolicy, {"base_delay": math.nan}, "RetryPolicy.base_delay"),
    (RetryPolicy, {"base_delay": "2"}, "RetryPolicy.base_delay"),
    (RetryPolicy, {"factor": 0.99}, "RetryPolicy.factor"),
    (RetryPolicy, {"factor": 10.5}, "RetryPolicy.factor"),
    (RetryPolicy, {"factor": math.inf}, "RetryPolicy.factor"),
    (RetryPolicy, {"max_attempts": -1}, "RetryPolicy.max_attempts"),
    (RetryPolicy, {"max_attempts": 21}, "RetryPolicy.max_attempts"),
    (RetryPolicy, {"max_attempts": 2.0}, "RetryPolicy.max_attempts"),
    (RetryPolicy, {"max_attempts": True}, "RetryPolicy.max_attempts"),
    (RetryPolicy, {"max_delay": 1.0}, "RetryPolicy.max_delay"),
    (RetryPolicy, {"max_delay": 4000}, "RetryPolicy.max_delay"),
    (RetryPolicy, {"jitter": -0.1}, "RetryPolicy.jitter"),
    (RetryPolicy, {"jitter": 1.5}, "RetryPolicy.jitter"),
    (IcePolicy, {"disconnected_grace": 0}, "IcePolicy.disconnected_grace"),
    (IcePolicy, {"disconnected_grace": 601}, "IcePolicy.disconnected_grace"),
    (IcePolicy, {"connect_timeout": -5}, "IcePolicy.connect_timeout"),
    (IcePolicy, {"restart_timeout": math.inf}, "IcePolicy.restart_timeout"),
    (IcePolicy, {"liveness_interval": 0}, "IcePolicy.liveness_interval"),
    (IcePolicy, {"liveness_stall": 0.1}, "IcePolicy.liveness_stall"),  # < interval 0.25
    (QualityThresholds, {"max_rtt_ms": 0}, "QualityThresholds.max_rtt_ms"),
    (QualityThresholds, {"max_jitter_ms": -1}, "QualityThresholds.max_jitter_ms"),
    (QualityThresholds, {"max_packets_lost": -1}, "QualityThresholds.max_packets_lost"),
    (QualityThresholds, {"max_packets_lost": 1.5}, "QualityThresholds.max_packets_lost"),
    (QualityThresholds, {"max_loss_fraction": 1.01}, "QualityThresholds.max_loss_fraction"),
    (MonitorPolicy, {"metrics_interval": 0}, "MonitorPolicy.metrics_interval"),
    (MonitorPolicy, {"health_interval": 3601}, "MonitorPolicy.health_interval"),
    (SessionPolicy, {"event_queue_limit": 0}, "SessionPolicy.event_queue_limit"),
    (SessionPolicy, {"event_queue_limit": 100_001}, "SessionPolicy.event_queue_limit"),
    (SessionPolicy, {"retry": "fast"}, "SessionPolicy.retry"),
    (SessionPolicy, {"ice": RetryPolicy()}, "SessionPolicy.ice"),
    (SessionPolicy, {"quality": None}, "SessionPolicy.quality"),
    (SessionPolicy, {"monitor": {}}, "SessionPolicy.monitor"),
    (SessionPolicy, {"ice_servers": ("stun:example.org",)}, "SessionPolicy.ice_servers"),
    (SessionPolicy, {"relay_only": 1}, "SessionPolicy.relay_only"),
    (SessionPolicy, {"relay_only": True}, "SessionPolicy.relay_only"),  # no TURN server
]


@pytest.mark.parametrize(("cls", "kwargs", "field"), INVALID)
def test_invalid_values_raise_config_error_naming_field(
    cls: type, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert message.startswith(field)
    assert info.value.field == field
    assert "expected" in message  # says what is allowed


def test_config_error_message_shows_value_and_range() -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(factor=0.5)
    assert str(info.value) == "RetryPolicy.factor=0.5 is invalid: expected a number in [1, 10]"
    with pytest.raises(ConfigError) as info:
        RetryPolicy(base_delay=10, max_delay=5)
    assert "max_delay=5.0" in str(info.value) and "base_delay (10)" in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (RetryPolicy, {"base_delay": 300, "max_delay": 300, "factor": 10, "max_attempts": 20}),
        (RetryPolicy, {"base_delay": 0.001, "factor": 1, "max_attempts": 0, "jitter": 1}),
        (IcePolicy, {"liveness_interval": 0.5, "liveness_stall": 0.5}),
        (IcePolicy, {"disconnected_grace": 600}),
        (QualityThresholds, {"max_packets_lost": 0, "max_loss_fraction": 0}),
        (SessionPolicy, {"event_queue_limit": 1}),
        (SessionPolicy, {"event_queue_limit": 100_000}),
    ],
)
def test_boundary_values_are_accepted(cls: type, kwargs: dict[str, Any]) -> None:
    obj = cls(**kwargs)
    for name, value in kwargs.items():
        assert getattr(obj, name) == value


# --------------------------------------------------------------------------------------------
# IcePolicy / MonitorPolicy
# --------------------------------------------------------------------------------------------


def test_ice_and_monitor_defaults() -> None:
    ice = IcePolicy()
    assert (
        ice.disconnected_grace,
        ice.connect_timeout,
        ice.restart_timeout,
        ice.liveness_interval,
        ice.liveness_stall,
    ) == (5.0, 15.0, 10.0, 0.25, 0.75)
    mon = MonitorPolicy()
    assert (mon.metrics_interval, mon.health_interval) == (5.0, 30.0)


# --------------------------------------------------------------------------------------------
# QualityThresholds
# --------------------------------------------------------------------------------------------


def metrics(
    latency: float | None = 100.0,
    lost: int = 0,
    jitter: float | None = 10.0,
    loss_fraction: float = 0.0,
) -> ConnectionMetrics:
    return ConnectionMetrics(
        latency_ms=latency,
        packets_lost=lost,
        jitter_ms=jitter,
        timestamp=0.0,
        loss_fraction=loss_fraction,
    )


def test_quality_defaults() -> None:
    q = QualityThresholds()
    assert (q.max_rtt_ms, q.max_jitter_ms, q.max_packets_lost, q.max_loss_fraction) == (
        300.0,
        50.0,
        100,
        0.05,
    )


def test_good_metrics_have_no_violations() -> None:
    assert QualityThresholds().violations(metrics()) == []


def test_each_violation_is_reported_in_order() -> None:
    alerts = QualityThresholds().violations(metrics(450.0, 101, 60.0, 0.2))
    assert alerts == [
        QualityAlert("rtt", 450.0, 300.0),
        QualityAlert("jitter", 60.0, 50.0),
        QualityAlert("packets_lost", 101, 100),
        QualityAlert("loss_fraction", 0.2, 0.05),
    ]
    assert str(alerts[0]) == "rtt 450 > 300"


def test_values_equal_to_threshold_do_not_alert() -> None:
    assert QualityThresholds().violations(metrics(300.0, 100, 50.0, 0.05)) == []


def test_single_violation() -> None:
    alerts = QualityThresholds(max_rtt_ms=50).violations(metrics(latency=50.5))
    assert [(a.kind, a.value, a.threshold) for a in alerts] == [("rtt", 50.5, 50.0)]


def test_unknown_metrics_never_alert() -> None:
    q = QualityThresholds(max_rtt_ms=1, max_jitter_ms=1)
    assert q.violations(metrics(latency=None, jitter=None)) == []
    assert q.violations(metrics(latency=math.nan, jitter=math.nan)) == []


# --------------------------------------------------------------------------------------------
# IceServer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stun:stun.example.org", IceUrl("stun", "stun.example.org", 3478)),
        ("stun:stun.example.org:19302", IceUrl("stun", "stun.example.org", 19302)),
        ("STUN:127.0.0.1:3478", IceUrl("stun", "127.0.0.1", 3478)),
        ("stun:[::1]:3478", IceUrl("stun", "::1", 3478)),
        ("stun:[2001:db8::1]", IceUrl("stun", "2001:db8::1", 3478)),
        ("turn:turn.example.org", IceUrl("turn", "turn.example.org", 3478)),
        ("turn:10.0.0.1:3479?transport=tcp", IceUrl("turn", "10.0.0.1", 3479, "tcp")),
        ("turn:turn.example.org?transport=udp", IceUrl("turn", "turn.example.org", 3478, "udp")),
        ("turns:turn.example.org", IceUrl("turns", "turn.example.org", 5349)),
        (
            "turns:turn.example.org:443?transport=tcp",
            IceUrl("turns", "turn.example.org", 443, "tcp"),
        ),
        ("turn:localhost", IceUrl("turn", "localhost", 3478)),
    ],
)
def test_parse_ice_url(url: str, expected: IceUrl) -> None:
    assert parse_ice_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.org", "scheme"),
        ("example.org", "scheme"),
        ("stuns:example.org", "scheme"),
        ("stun://example.org", "//"),
        ("stun:example.org?transport=udp", "no query"),
        ("turn:example.org?transport=sctp", "transport=udp or transport=tcp"),
        ("turn:example.org?foo=bar", "transport=udp or transport=tcp"),
        ("stun:example.org:0", "port"),
        ("stun:example.org:65536", "port"),
        ("stun:example.org:abc", "port"),
        ("stun:example.org:", "empty port"),
        ("stun:", "host"),
        ("stun:exa mple.org", "host"),
        ("stun:-bad-.org", "host"),
        ("stun:2001:db8::1", "brackets"),
        ("stun:[2001:db8::zz]", "IPv6"),
        ("stun:[::1", "IPv6"),
        ("stun:[::1]3478", "IPv6"),
        ("turn:user:pw@example.org", "credentials"),
    ],
)
def test_bad_ice_urls(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        IceServer(url, username="u", credential="c")
    assert info.value.field == "IceServer.urls"
    assert why in str(info.value)


def test_bad_url_message_hides_embedded_password() -> None:
    with pytest.raises(ConfigError) as info:
        IceServer("turn:user:hunter2@example.org", username="u", credential="c")
    assert "hunter2" not in str(info.value)


def test_ice_server_accepts_single_string_and_lists() -> None:
    assert IceServer("stun:a.example").urls == ("stun:a.example",)
    s = IceServer(["stun:a.example", "stun:b.example:1234"])
    assert s.urls == ("stun:a.example", "stun:b.example:1234")
    assert [u.port for u in s.parsed_urls] == [3478, 1234]
    assert not s.is_relay


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"urls": ()}, "IceServer.urls"),
        ({"urls": 42}, "IceServer.urls"),
        ({"urls": (42,)}, "IceServer.urls"),
        ({"urls": "turn:t.example"}, "IceServer.username"),
        ({"urls": "turn:t.example", "username": "u"}, "IceServer.credential"),
        ({"urls": "turns:t.example", "username": "", "credential": "c"}, "IceServer.username"),
        ({"urls": ("stun:s.example", "turn:t.example"), "credential": "c"}, "IceServer.username"),
        ({"urls": "stun:s.example", "username": 5}, "IceServer.username"),
        ({"urls": "stun:s.example", "credential": b"secret"}, "IceServer.credential"),
    ],
)
def test_ice_server_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        IceServer(**kwargs)
    assert info.value.field == field
    assert "secret" not in str(info.value)


def test_stun_needs_no_credentials() -> None:
    assert IceServer("stun:s.example").username is None


def test_repr_hides_credential() -> None:
    s = IceServer("turn:t.example", username="alice", credential="s3cr3t-value")
    text = repr(s)
    assert "s3cr3t-value" not in text
    assert "credential='***'" in text
    assert "alice" in text
    assert "s3cr3t-value" not in repr(SessionPolicy(ice_servers=(s,)))
    assert "credential=None" in repr(IceServer("stun:s.example"))


def test_to_aiortc() -> None:
    from aiortc import RTCIceServer

    s = IceServer(("turn:t.example?transport=tcp", "turns:t.example"), "alice", "pw")
    native = s.to_aiortc()
    assert isinstance(native, RTCIceServer)
    assert native.urls == ["turn:t.example?transport=tcp", "turns:t.example"]
    assert (native.username, native.credential) == ("alice", "pw")
    assert s.is_relay


# --------------------------------------------------------------------------------------------
# SessionPolicy
# --------------------------------------------------------------------------------------------


def test_session_defaults() -> None:
    p = SessionPolicy()
    assert p.retry == RetryPolicy()
    assert p.ice == IcePolicy()
    assert p.quality == QualityThresholds()
    assert p.monitor == MonitorPolicy()
    assert p.ice_servers == ()
    assert p.relay_only is False
    assert p.event_queue_limit == 256


def test_session_accepts_list_of_servers_and_relay_only_with_turn() -> None:
    turn = IceServer("turn:t.example", "u", "c")
    p = SessionPolicy(ice_servers=[IceServer("stun:s.example"), turn], relay_only=True)
    assert p.ice_servers[1] is turn
    assert p.relay_only


def test_relay_only_without_turn_is_refused_with_explanation() -> None:
    with pytest.raises(ConfigError, match="turn:/turns:"):
        SessionPolicy(ice_servers=(IceServer("stun:s.example"),), relay_only=True)


def test_policies_are_hashable_values() -> None:
    assert RetryPolicy(jitter=0.1) == RetryPolicy(jitter=0.1)
    assert len({SessionPolicy(), SessionPolicy()}) == 1
    assert attrs.evolve(RetryPolicy(), max_attempts=5).delays() == (2.0, 4.0, 8.0, 16.0, 30.0)
    with pytest.raises(ConfigError):
        attrs.evolve(RetryPolicy(), jitter=2)
