"""metrics_from_stats: unit conversions pinned with hand-built aiortc stats objects."""

from __future__ import annotations

import datetime

import pytest
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCStatsReport,
    RTCTransportStats,
)

from fsm_voice.ports import ConnectionMetrics
from fsm_voice.transport.stats import metrics_from_stats

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def inbound(*, jitter: int, lost: int, received: int, ssrc: int = 1) -> RTCInboundRtpStreamStats:
    return RTCInboundRtpStreamStats(
        timestamp=NOW,
        type="inbound-rtp",
        id=f"inbound-rtp_{ssrc}",
        ssrc=ssrc,
        kind="audio",
        transportId="t",
        packetsReceived=received,
        packetsLost=lost,
        jitter=jitter,
    )


def remote_inbound(rtt: float) -> RTCRemoteInboundRtpStreamStats:
    return RTCRemoteInboundRtpStreamStats(
        timestamp=NOW,
        type="remote-inbound-rtp",
        id="remote-inbound-rtp_1",
        ssrc=2,
        kind="audio",
        transportId="t",
        packetsReceived=0,
        packetsLost=3,
        jitter=0,
        roundTripTime=rtt,
        fractionLost=0.0,
    )


def report(*stats: object) -> RTCStatsReport:
    r = RTCStatsReport()
    for s in stats:
        r.add(s)  # type: ignore[arg-type]
    return r


def test_jitter_480_units_at_48khz_is_10ms() -> None:
    m = metrics_from_stats(
        report(inbound(jitter=480, lost=0, received=100)), clock_rate=48000, now=5.0
    )
    assert m.jitter_ms == pytest.approx(10.0)
    assert m.timestamp == 5.0


def test_jitter_at_8khz_pcmu() -> None:
    m = metrics_from_stats(report(inbound(jitter=80, lost=0, received=1)), clock_rate=8000, now=0)
    assert m.jitter_ms == pytest.approx(10.0)


def test_rtt_seconds_to_ms() -> None:
    m = metrics_from_stats(
        report(inbound(jitter=0, lost=0, received=1), remote_inbound(0.0425)),
        clock_rate=48000,
        now=0,
    )
    assert m.latency_ms == pytest.approx(42.5)


def test_loss_counts_and_fraction() -> None:
    m = metrics_from_stats(report(inbound(jitter=0, lost=5, received=95)), clock_rate=48000, now=0)
    assert (m.packets_lost, m.packets_received) == (5, 95)
    assert m.loss_fraction == pytest.approx(0.05)


def test_negative_loss_clamped() -> None:
    # RFC 3550 cumulative loss can go negative with duplicates
    m = metrics_from_stats(report(inbound(jitter=0, lost=-2, received=10)), clock_rate=48000, now=0)
    assert m.packets_lost == 0
    assert m.loss_fraction == 0.0


def test_empty_report() -> None:
    m = metrics_from_stats(RTCStatsReport(), clock_rate=48000, now=1.0)
    assert m == ConnectionMetrics(
        latency_ms=None, packets_lost=0, jitter_ms=None, timestamp=1.0, packets_received=0
    )
    assert m.loss_fraction == 0.0


def test_other_stats_ignored() -> None:
    transport = RTCTransportStats(
        timestamp=NOW,
        type="transport",
        id="t",
        packetsSent=9,
        packetsReceived=9,
        bytesSent=9,
        bytesReceived=9,
        iceRole="controlling",
        dtlsState="connected",
    )
    outbound = RTCOutboundRtpStreamStats(
        timestamp=NOW,
        type="outbound-rtp",
        id="o",
        ssrc=3,
        kind="audio",
        transportId="t",
        packetsSent=10,
        bytesSent=100,
        trackId="x",
    )
    m = metrics_from_stats(report(transport, outbound), clock_rate=48000, now=0)
    assert m.packets_received == 0 and m.latency_ms is None


def test_several_inbound_streams_summed_worst_jitter() -> None:
    m = metrics_from_stats(
        report(
            inbound(jitter=480, lost=1, received=10, ssrc=1),
            inbound(jitter=960, lost=1, received=20, ssrc=2),
        ),
        clock_rate=48000,
        now=0,
    )
    assert (m.packets_lost, m.packets_received) == (2, 30)
    assert m.jitter_ms == pytest.approx(20.0)


def test_previous_fills_missing_rtt() -> None:
    first = metrics_from_stats(
        report(inbound(jitter=0, lost=0, received=1), remote_inbound(0.1)),
        clock_rate=48000,
        now=0,
    )
    second = metrics_from_stats(
        report(inbound(jitter=48, lost=0, received=2)), clock_rate=48000, now=1, previous=first
    )
    assert second.latency_ms == pytest.approx(100.0)
    assert second.jitter_ms == pytest.approx(1.0)


def test_bad_clock_rate() -> None:
    with pytest.raises(ValueError, match="clock_rate"):
        metrics_from_stats(RTCStatsReport(), clock_rate=0, now=0)
