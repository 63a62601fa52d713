"""Policies: small frozen value objects, validated at construction.

Every invalid value raises :class:`fsm_voice.errors.ConfigError` whose message names the field,
the bad value and the allowed range, e.g.
``RetryPolicy.factor=0.5 is invalid: expected a number in [1, 10]``.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from fsm_voice.errors import ConfigError
from fsm_voice.ports import ConnectionMetrics

if TYPE_CHECKING:
    from aiortc import RTCIceServer

__all__ = [
    "IcePolicy",
    "IceServer",
    "IceUrl",
    "MonitorPolicy",
    "QualityAlert",
    "QualityThresholds",
    "RetryPolicy",
    "RolloverPolicy",
    "SessionPolicy",
    "parse_ice_url",
]


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _field_name(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _to_float(value: float) -> float:
    """Converter: ints become floats; anything else is left for the validator to judge."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _number(
    low: float, high: float, *, low_open: bool = False
) -> Any:  # attrs validator: (instance, attribute, value) -> None
    """A float in ``[low, high]`` (``(low, high]`` when ``low_open``); rejects NaN, inf, bool."""
    expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        ok = (
            isinstance(value, float)
            and math.isfinite(value)
            and (value > low if low_open else value >= low)
            and value <= high
        )
        if not ok:
            raise ConfigError.invalid(_field_name(instance, attribute), value, expected)

    return check


def _integer(low: int, high: int) -> Any:
    """An int in ``[low, high]`` (bool refused)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise ConfigError.invalid(
                _field_name(instance, attribute), value, f"an integer in [{low}, {high}]"
            )

    return check


def _instance(kind: type) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise ConfigError.invalid(
                _field_name(instance, attribute), value, f"a {kind.__name__} instance"
            )

    return check


# --------------------------------------------------------------------------------------------
# Retry
# --------------------------------------------------------------------------------------------

_DEFAULT_RNG: Final = random.Random()


@attrs.frozen
class RetryPolicy:
    """Exponential backoff between reconnect attempts.

    Delay of attempt ``n`` (0-based): ``min(max_delay, base_delay * factor**n)``, then, with
    jitter, multiplied by ``1 + jitter * u`` with ``u`` uniform in ``[-1, 1)``: the result lies in
    ``[d * (1 - jitter), d * (1 + jitter)]`` (so it may exceed ``max_delay`` by ``jitter``).
    """

    base_delay: float = attrs.field(
        default=2.0, converter=_to_float, validator=_number(0, 300, low_open=True)
    )
    """Seconds before the first retry, in (0, 300]."""
    factor: float = attrs.field(default=2.0, converter=_to_float, validator=_number(1, 10))
    """Growth per attempt, in [1, 10]."""
    max_attempts: int = attrs.field(default=3, validator=_integer(0, 20))
    """Retries before giving up, in [0, 20] (0: never retry)."""
    max_delay: float = attrs.field(default=30.0, converter=_to_float, validator=_number(0, 3600))
    """Upper bound of the nominal delay, seconds; >= base_delay, <= 3600."""
    jitter: float = attrs.field(default=0.2, converter=_to_float, validator=_number(0, 1))
    """Fraction of random spread, in [0, 1]; on by default so that clients that lose the same
    server do not come back in lockstep (checks and exact-delay tests pass ``jitter=0``)."""
    stable_after: float = attrs.field(
        default=10.0, converter=_to_float, validator=_number(0, 3600, low_open=True)
    )
    """Seconds a connection must stay up before the failure episode ends (flap damping): until
    then, failures back off and count toward ``max_attempts``. In (0, 3600]."""
    max_retry_after: float = attrs.field(
        default=60.0, converter=_to_float, validator=_number(0, 3600)
    )
    """The longest server ``Retry-After`` honoured, seconds; a longer one ends the episode in
    ``error`` (``retry_after_too_long``). In [0, 3600]."""

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.base_delay:
            raise ConfigError(
                f"RetryPolicy.max_delay={self.max_delay!r} is invalid: expected a number "
                f">= base_delay ({self.base_delay:g}) and <= 3600",
                field="RetryPolicy.max_delay",
            )

    def _nominal(self, attempt: int) -> float:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ConfigError.invalid("attempt", attempt, "an integer >= 0 (0-based)")
        try:
            raw = self.base_delay * self.factor**attempt
        except OverflowError:
            raw = math.inf
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based). ``rng`` makes jitter
        deterministic; without jitter it is not used."""
        nominal = self._nominal(attempt)
        if self.jitter == 0.0:
            return nominal
        u = (rng or _DEFAULT_RNG).random() * 2.0 - 1.0
        return nominal * (1.0 + self.jitter * u)

    def backoff(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """The backoff before retry ``attempt``: the longer of :meth:`delay` and the server's
        ``retry_after`` (the machine ends the episode before a ``retry_after`` beyond
        ``max_retry_after`` gets here)."""
        d = self.delay(attempt, rng)
        return d if retry_after is None else max(d, float(retry_after))

    def retry_after_too_long(self, retry_after: float | None) -> bool:
        """Whether the server asks for a longer wait than this policy honours."""
        return retry_after is not None and not retry_after <= self.max_retry_after

    def delays(self) -> tuple[float, ...]:
        """The nominal (jitter-free) delay of every attempt: ``(2.0, 4.0, 8.0)`` by default."""
        return tuple(self._nominal(n) for n in range(self.max_attempts))


@attrs.frozen
class RolloverPolicy:
    """When the machine rolls a session over before the server's time limit (``session_info``)."""

    margin: float = attrs.field(default=30.0, converter=_to_float, validator=_number(0, 3600))
    """Roll over this many seconds before the session expires, in [0, 3600]."""
    min_interval: float = attrs.field(
        default=60.0, converter=_to_float, validator=_number(0, 86400, low_open=True)
    )
    """Never arm a rollover sooner than this (no rollover storm), in (0, 86400]."""
    max_expires_in: float = attrs.field(
        default=7 * 86400.0, converter=_to_float, validator=_number(0, 10**9, low_open=True)
    )
    """An ``expires_in`` beyond this is absurd: reported and ignored."""

    def delay(self, expires_in: float | None) -> float | None:
        """The rollover delay for ``expires_in`` seconds left, or None when the value is not
        usable (None, not a number, <= 0, nan, inf, beyond ``max_expires_in``)."""
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            return None
        left = float(expires_in)
        if not math.isfinite(left) or left <= 0.0 or left > self.max_expires_in:
            return None
        return max(left - self.margin, self.min_interval)


# --------------------------------------------------------------------------------------------
# ICE, quality, monitoring
# --------------------------------------------------------------------------------------------


def _seconds(default: float, high: float = 600.0) -> Any:
    return attrs.field(
        default=default, converter=_to_float, validator=_number(0, high, low_open=True)
    )


@attrs.frozen
class IcePolicy:
    """Timings of connection set-up and path-loss detection (seconds, each in (0, 600])."""

    disconnected_grace: float = _seconds(5.0)
    """How long a dead path may stay dead before the transport is restarted."""
    connect_timeout: float = _seconds(15.0)
    """Budget for one whole connection attempt (signaling + ICE + DTLS + channel open)."""
    restart_timeout: float = _seconds(10.0)
    """Budget for one transport restart."""
    liveness_interval: float = _seconds(0.25)
    """How often inbound packet counters are sampled."""
    liveness_stall: float = _seconds(0.75)
    """Counters flat for this long mean the path is dead; >= liveness_interval."""

    def __attrs_post_init__(self) -> None:
        if self.liveness_stall < self.liveness_interval:
            raise ConfigError(
                f"IcePolicy.liveness_stall={self.liveness_stall!r} is invalid: expected a number "
                f">= liveness_interval ({self.liveness_interval:g}) and <= 600",
                field="IcePolicy.liveness_stall",
            )


AlertKind = Literal["rtt", "jitter", "packets_lost", "loss_fraction"]


@attrs.frozen
class QualityAlert:
    """One metric above its threshold."""

    kind: AlertKind
    value: float
    threshold: float

    def __str__(self) -> str:
        return f"{self.kind} {self.value:g} > {self.threshold:g}"


@attrs.frozen
class QualityThresholds:
    """Limits above which a metrics sample raises a :class:`QualityAlert`."""

    max_rtt_ms: float = attrs.field(
        default=300.0, converter=_to_float, validator=_number(0, 60_000, low_open=True)
    )
    max_jitter_ms: float = attrs.field(
        default=50.0, converter=_to_float, validator=_number(0, 60_000, low_open=True)
    )
    max_packets_lost: int = attrs.field(default=100, validator=_integer(0, 1_000_000_000))
    max_loss_fraction: float = attrs.field(
        default=0.05, converter=_to_float, validator=_number(0, 1)
    )

    def violations(self, m: ConnectionMetrics) -> list[QualityAlert]:
        """Alerts for every metric strictly greater than its threshold (in the order rtt,
        jitter, packets_lost, loss_fraction). Unknown (None) or NaN metrics never alert."""
        checks: tuple[tuple[AlertKind, float | None, float], ...] = (
            ("rtt", m.latency_ms, self.max_rtt_ms),
            ("jitter", m.jitter_ms, self.max_jitter_ms),
            ("packets_lost", m.packets_lost, self.max_packets_lost),
            ("loss_fraction", m.loss_fraction, self.max_loss_fraction),
        )
        return [
            QualityAlert(kind, value, threshold)
            for kind, value, threshold in checks
            if value is not None and value > threshold
        ]


@attrs.frozen
class MonitorPolicy:
    """How often the runtime samples metrics and checks health (seconds, each in (0, 3600])."""

    metrics_interval: float = _seconds(5.0, 3600.0)
    health_interval: float = _seconds(30.0, 3600.0)


# --------------------------------------------------------------------------------------------
# ICE servers
# --------------------------------------------------------------------------------------------

_DEFAULT_PORTS: Final = {"stun": 3478, "turn": 3478, "turns": 5349}
_SCHEMES: Final[dict[str, Literal["stun", "turn", "turns"]]] = {
    "stun": "stun",
    "turn": "turn",
    "turns": "turns",
}
_HOSTNAME: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_ICE_URL_HELP: Final = (
    "stun:host[:port], turn:host[:port][?transport=udp|tcp] or turns:host[:port][?transport=...]"
)


@attrs.frozen
class IceUrl:
    """A parsed STUN/TURN URL (RFC 7064 / RFC 7065)."""

    scheme: Literal["stun", "turn", "turns"]
    host: str
    """Hostname, IPv4 address, or IPv6 address without brackets."""
    port: int
    transport: Literal["udp", "tcp"] | None = None

    @property
    def is_relay(self) -> bool:
        return self.scheme != "stun"


def parse_ice_url(url: str, *, field: str = "IceServer.urls") -> IceUrl:
    """Parse and validate one STUN/TURN URL without any DNS lookup; raise ConfigError."""

    def bad(why: str) -> ConfigError:
        shown = re.sub(r"^([^:]*:)(?://)?[^@]*@", r"\1***@", url) if isinstance(url, str) else url
        return ConfigError.invalid(field, shown, f"{_ICE_URL_HELP} ({why})")

    if not isinstance(url, str):
        raise bad("not a string")
    scheme_text, sep, rest = url.strip().partition(":")
    scheme = _SCHEMES.get(scheme_text.lower())
    if not sep or scheme is None:
        raise bad("scheme must be stun:, turn: or turns:")
    if rest.startswith("//"):
        raise bad("no '//' after the scheme")
    if "@" in rest:
        raise bad("put credentials in username/credential, not in the URL")
    address, qsep, query = rest.partition("?")
    transport: Literal["udp", "tcp"] | None = None
    if qsep:
        if scheme == "stun":
            raise bad("stun: URLs take no query")
        if query.lower() == "transport=udp":
            transport = "udp"
        elif query.lower() == "transport=tcp":
            transport = "tcp"
        else:
            raise bad("the only query allowed is transport=udp or transport=tcp")

    if address.startswith("["):  # [IPv6]:port
        host, bracket, port_text = address[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise bad("malformed [IPv6] address")
        port_text = port_text[1:] if port_text else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = address.partition(":")
        if colon and not port_text:
            raise bad("empty port")
        if ":" in port_text:
            raise bad("IPv6 addresses must be in brackets")
        if not _HOSTNAME.match(host):
            raise bad(f"{host!r} is not a valid host")
    port = _DEFAULT_PORTS[scheme]
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"port {port_text!r} not in 1..65535")
        port = int(port_text)
    return IceUrl(scheme, host, port, transport)


def _to_urls(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _secret_repr(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen
class IceServer:
    """One STUN/TURN server entry (one or more URLs sharing credentials).

    ``urls`` accepts a single string. TURN URLs need ``username`` and ``credential``. The
    credential never appears in ``repr``.
    """

    urls: tuple[str, ...] = attrs.field(converter=_to_urls)
    username: str | None = None
    credential: str | None = attrs.field(default=None, repr=_secret_repr)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.urls, tuple) or not self.urls:
            raise ConfigError.invalid(
                "IceServer.urls", self.urls, "a URL string or a non-empty tuple of them"
            )
        parsed = tuple(parse_ice_url(u) for u in self.urls)
        for name in ("username", "credential"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                shown = value if name == "username" else type(value).__name__
                raise ConfigError.invalid(f"IceServer.{name}", shown, "a string or None")
        if any(p.is_relay for p in parsed):
            if not self.username:
                raise ConfigError.invalid(
                    "IceServer.username",
                    self.username,
                    "a non-empty username for turn:/turns: URLs",
                )
            if not self.credential:
                raise ConfigError(
                    "IceServer.credential is missing: expected a non-empty credential "
                    "for turn:/turns: URLs",
                    field="IceServer.credential",
                )

    @property
    def parsed_urls(self) -> tuple[IceUrl, ...]:
        """Every URL, parsed (validated at construction, so this cannot fail)."""
        return tuple(parse_ice_url(u) for u in self.urls)

    @property
    def is_relay(self) -> bool:
        """Whether this entry offers at least one TURN relay."""
        return any(p.is_relay for p in self.parsed_urls)

    def to_aiortc(self) -> RTCIceServer:
        """The equivalent :class:`aiortc.RTCIceServer`."""
        from aiortc import RTCIceServer

        return RTCIceServer(
            urls=list(self.urls), username=self.username, credential=self.credential
        )


def _to_servers(value: tuple[IceServer, ...] | list[IceServer]) -> tuple[IceServer, ...]:
    return tuple(value) if isinstance(value, list | tuple) else value


def _check_servers(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(s, IceServer) for s in value):
        raise ConfigError.invalid(_field_name(instance, attribute), value, "a tuple of IceServer")


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


@attrs.frozen
class SessionPolicy:
    """All the knobs of one voice session."""

    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=_instance(RetryPolicy))
    ice: IcePolicy = attrs.field(factory=IcePolicy, validator=_instance(IcePolicy))
    rollover: RolloverPolicy = attrs.field(
        factory=RolloverPolicy, validator=_instance(RolloverPolicy)
    )
    quality: QualityThresholds = attrs.field(
        factory=QualityThresholds, validator=_instance(QualityThresholds)
    )
    monitor: MonitorPolicy = attrs.field(factory=MonitorPolicy, validator=_instance(MonitorPolicy))
    ice_servers: tuple[IceServer, ...] = attrs.field(
        default=(), converter=_to_servers, validator=_check_servers
    )
    """STUN/TURN servers; empty means host candidates only (no public STUN by default)."""
    relay_only: bool = attrs.field(default=False, validator=_instance(bool))
    """Use TURN relay candidates only (``iceTransportPolicy: relay``); needs a TURN server."""
    event_queue_limit: int = attrs.field(default=256, validator=_integer(1, 100_000))
    """Capacity of the runtime's event queue, in [1, 100000]."""

    def __attrs_post_init__(self) -> None:
        if self.relay_only and not any(s.is_relay for s in self.ice_servers):
            raise ConfigError(
                "SessionPolicy.relay_only=True is invalid: expected at least one turn:/turns: "
                "server in ice_servers (relay-only ICE has no candidates without one)",
                field="SessionPolicy.relay_only",
            )
