"""Path liveness from active probes, sans-IO: tell *remote silent, path alive* from *path dead*.

Inbound packets (RTP, RTCP, SCTP, data-channel messages) prove the path alive. When they stop
for :attr:`ProbeTiming.probe_after` s - a dead path, or just a remote that stopped sending (a
Chromium ``replaceTrack(null)`` mute, DTX, a server pausing audio) - the transport sends a STUN
binding request on the nominated ICE pair every :attr:`ProbeTiming.interval` s (the remote ICE
agent answers it whatever its media does, as it answers consent checks). An answer is evidence
too: a silent remote never raises a signal. No evidence at all (no inbound packet, no answer)
for the *dead* threshold, with at least two probes unanswered -> ``ICE_DISCONNECTED`` (the path is
dead); still none at the *fail* threshold -> ``FAILED`` (the machine restarts the transport now
instead of waiting for its ICE grace period); evidence in between -> ``ICE_RECOVERED``.

The thresholds grow with the measured probe round-trip time (a slow path is not a dead one):
dead = max(:attr:`~ProbeTiming.dead_after`, probe_after + interval + 2 x RTT), fail = dead +
(fail_after - dead_after). Probes are trusted only once one has been answered on the connection:
a calibration probe goes out as soon as it is connected (again every
:attr:`~ProbeTiming.calibrate_every` s until one is answered, which measures the RTT); until then
a remote that never answers STUN cannot get a healthy but muted call restarted - the stall rule
below applies.

Without probes (:attr:`PathLiveness.probing` False: the ``path_probe`` capability of
:mod:`fsm_voice.transport._private` lost, or disabled) it is the stall detector of old:
``ICE_DISCONNECTED`` after ``stall`` s without inbound packets, ``ICE_RECOVERED`` when they return,
never ``FAILED`` (the machine's grace period decides).
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

from fsm_voice.errors import ConfigError
from fsm_voice.ports import TransportSignal

__all__ = ["LivenessStats", "PathLiveness", "ProbeTiming", "Step"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= 600):
        raise ConfigError.invalid(attribute.name, value, "seconds in (0, 600]")


@attrs.frozen
class ProbeTiming:
    """Timing of probe-based liveness (seconds)."""

    interval: float = attrs.field(default=0.1, validator=_positive)
    """Sampling period of the inbound counters, and spacing of probes while silent."""
    probe_after: float = attrs.field(default=0.2, validator=_positive)
    """Inbound silence before probing starts."""
    dead_after: float = attrs.field(default=0.5, validator=_positive)
    """No evidence (inbound packet or probe answer) this long -> ``ICE_DISCONNECTED``."""
    fail_after: float = attrs.field(default=0.85, validator=_positive)
    """No evidence this long -> ``FAILED`` (restart now)."""
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    """How long one probe waits for its answer."""
    calibrate_every: float = attrs.field(default=1.0, validator=_positive)
    """Spacing of calibration probes until the first answer."""

    def __attrs_post_init__(self) -> None:
        if not self.interval <= self.probe_after < self.dead_after < self.fail_after:
            raise ConfigError.invalid(
                "ProbeTiming",
                self,
                "interval <= probe_after < dead_after < fail_after",
            )


State = Literal["up", "dead", "failed"]


@attrs.frozen
class Step:
    """What the transport must do after an input: send a probe, report a signal."""

    probe: bool = False
    signal: TransportSignal | None = None
    detail: str = ""


@attrs.frozen
class LivenessStats:
    """Counters of one connection's liveness (for tests, benchmarks and logs)."""

    state: State
    probing: bool
    probes_sent: int
    probes_answered: int
    silent_alive: int
    """Probe answers received while no inbound packet had come for ``probe_after`` s: each is
    one *remote silent, path alive* verdict."""
    rtt: float | None
    signals: tuple[str, ...]


class PathLiveness:
    """The liveness decision for one connection; fed with plain calls, no I/O, no clock."""

    def __init__(
        self, timing: ProbeTiming, *, now: float, probing: bool = True, stall: float = 0.75
    ) -> None:
        self.timing = timing
        self.probing = probing
        self.stall = stall
        self.state: State = "up"
        self._evidence_at = now
        self._inbound: int | None = None
        self._last_probe_at = -math.inf
        self._unanswered = 0
        self.probes_sent = 0
        self.probes_answered = 0
        self.silent_alive = 0
        self.rtt: float | None = None
        self.signals: list[str] = []

    @property
    def interval(self) -> float:
        return self.timing.interval

    def stats(self) -> LivenessStats:
        return LivenessStats(
            self.state,
            self.probing,
            self.probes_sent,
            self.probes_answered,
            self.silent_alive,
            self.rtt,
            tuple(self.signals),
        )

    def thresholds(self) -> tuple[float, float]:
        """(dead, fail) silences in seconds, adapted to the measured RTT."""
        t = self.timing
        rtt = self.rtt or 0.0
        dead = max(t.dead_after, t.probe_after + t.interval + 2 * rtt)
        return dead, dead + (t.fail_after - t.dead_after)

    def restart(self, now: float) -> None:
        """Not connected (yet): silence does not count."""
        self._evidence_at = now
        self._inbound = None

    def stop_probing(self) -> None:
        """No probe can be sent on this connection: stall detection from now on."""
        self.probing = False

    def tick(self, now: float, inbound: int) -> Step:
        """A sample of the inbound packet counter (any monotonic count of received things)."""
        if self.state == "failed":
            return Step()
        if self._inbound is None:
            self._inbound = inbound
        elif inbound != self._inbound:
            self._inbound = inbound
            step = self._evidence(now, "inbound packets flow again")
            if step.signal is not None:
                return step
        silence = now - self._evidence_at
        if not self.probing or self.rtt is None:  # probes off, or not proven to be answered
            calibrate = self.probing and now - self._last_probe_at >= self.timing.calibrate_every
            if self.state == "up" and silence >= self.stall:
                return self._signal(
                    "dead", f"no inbound packets for {silence:.2f}s", probe=calibrate
                )
            return Step(probe=calibrate)
        dead, fail = self.thresholds()
        if self.state == "dead" and silence >= fail:
            return self._signal(
                "failed",
                f"path dead: no inbound packet and {self._unanswered} STUN probe(s) "
                f"unanswered for {silence:.2f}s",
            )
        if self.state == "up" and silence >= dead and self._unanswered >= 2:
            return self._signal(
                "dead",
                f"no inbound packet and {self._unanswered} STUN probe(s) unanswered for "
                f"{silence:.2f}s",
                probe=True,
            )
        probe = (
            silence >= self.timing.probe_after
            and now - self._last_probe_at >= self.timing.interval * 0.999
        )
        return Step(probe=probe)

    def probe_sent(self, now: float) -> None:
        self._last_probe_at = now
        self._unanswered += 1
        self.probes_sent += 1

    def probe_answered(self, now: float, rtt: float) -> Step:
        """A probe sent ``rtt`` s ago was answered at ``now``."""
        if self.state == "failed":
            return Step()
        self.probes_answered += 1
        self.rtt = rtt if self.rtt is None else max(rtt, 0.875 * self.rtt + 0.125 * rtt)
        if now - self._evidence_at >= self.timing.probe_after:
            self.silent_alive += 1
        return self._evidence(now, "STUN probe answered: path alive")

    def _evidence(self, now: float, detail: str) -> Step:
        self._evidence_at = now
        self._unanswered = 0
        if self.state == "dead":
            return self._signal("up", detail)
        return Step()

    def _signal(self, state: State, detail: str, *, probe: bool = False) -> Step:
        signal = {
            "dead": TransportSignal.ICE_DISCONNECTED,
            "up": TransportSignal.ICE_RECOVERED,
            "failed": TransportSignal.FAILED,
        }[state]
        self.state = state
        self.signals.append(signal.value)
        return Step(probe=probe, signal=signal, detail=detail)
