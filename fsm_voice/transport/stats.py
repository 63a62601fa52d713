"""Conversion of an aiortc ``RTCStatsReport`` into :class:`~fsm_voice.ports.ConnectionMetrics`.

Pure functions, no I/O: the aiortc adapter calls ``pc.getStats()`` and hands the report here.

Units (verified against aiortc 1.16):

* ``remote-inbound-rtp.roundTripTime`` is in **seconds** -> ``latency_ms`` = value * 1000.
* ``inbound-rtp.jitter`` is in **RTP clock units** of the negotiated codec (48000 Hz for Opus,
  8000 Hz for PCMU/PCMA) -> ``jitter_ms`` = value / clock_rate * 1000.
* ``inbound-rtp.packetsLost`` / ``packetsReceived`` are cumulative counters; with several inbound
  streams (SSRC changes) they are summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fsm_voice.ports import ConnectionMetrics

__all__ = ["DEFAULT_CLOCK_RATE", "metrics_from_stats"]

DEFAULT_CLOCK_RATE = 48000
"""Opus RTP clock rate (RFC 7587): used when the negotiated codec is not known."""


def _of_type(report: Mapping[str, Any], kind: str) -> Iterable[Any]:
    return (s for s in report.values() if getattr(s, "type", None) == kind)


def _audio(stats: Any) -> bool:
    return getattr(stats, "kind", "audio") == "audio"


def metrics_from_stats(
    report: Mapping[str, Any],
    *,
    clock_rate: int,
    now: float,
    previous: ConnectionMetrics | None = None,
) -> ConnectionMetrics:
    """Build one metrics sample from ``report`` (an aiortc ``RTCStatsReport`` or any mapping of
    stats objects carrying ``.type``).

    ``clock_rate`` is the RTP clock rate of the inbound codec (Hz, > 0). ``now`` becomes the
    sample timestamp. ``previous`` supplies the last known RTT / jitter when this report lacks
    them (aiortc only produces ``remote-inbound-rtp`` after the first RTCP receiver report), so a
    value, once known, does not flicker back to None.
    """
    if clock_rate <= 0:
        raise ValueError(f"clock_rate must be a positive number of Hz, got {clock_rate!r}")

    rtts = [
        float(s.roundTripTime)
        for s in _of_type(report, "remote-inbound-rtp")
        if _audio(s) and getattr(s, "roundTripTime", None) is not None
    ]
    latency_ms: float | None = max(rtts) * 1000.0 if rtts else None

    lost = 0
    received = 0
    jitters: list[float] = []
    for s in _of_type(report, "inbound-rtp"):
        if not _audio(s):
            continue
        lost += max(0, int(getattr(s, "packetsLost", 0) or 0))
        received += max(0, int(getattr(s, "packetsReceived", 0) or 0))
        jitter = getattr(s, "jitter", None)
        if jitter is not None:
            jitters.append(float(jitter) / clock_rate * 1000.0)
    jitter_ms: float | None = max(jitters) if jitters else None

    if previous is not None:
        if latency_ms is None:
            latency_ms = previous.latency_ms
        if jitter_ms is None:
            jitter_ms = previous.jitter_ms

    total = lost + received
    loss_fraction = lost / total if total > 0 else 0.0
    return ConnectionMetrics(
        latency_ms=latency_ms,
        packets_lost=lost,
        jitter_ms=jitter_ms,
        timestamp=now,
        packets_received=received,
        loss_fraction=loss_fraction,
    )
