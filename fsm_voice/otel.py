"""OpenTelemetry export (the ``otel`` extra: ``pip install 'fsm-voice[otel]'``).

:class:`OtelSink` watches a :class:`~fsm_voice.telemetry.Hub` and gives:

* a span per session (``realtime {model}``, from tracking to the session's exit) and, inside it,
  a span per connection attempt (``realtime.connect {kind}``: start, restart, reconnect), ended
  ``OK`` when the status comes up, ``ERROR`` when the attempt is closed or superseded first;
  status changes (except turns among active/listening/speaking), errors and quality alerts are
  span events of the session span;
* the metrics of :mod:`fsm_voice.metrics` as OTel instruments (below).

Names: the OpenTelemetry GenAI semantic conventions (development status) define no realtime or
voice-session metrics and no ``realtime`` operation; where an attribute exists it is used
(``gen_ai.operation.name`` = ``realtime``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.conversation.id``, ``error.type``, span names ``{operation} {model}``), and the
session-level duration is also recorded as ``gen_ai.client.operation.duration`` (unit ``s``). The
rest live under ``fsm_voice.*`` with UCUM units: ``fsm_voice.sessions`` ({session}, up-down by
status), ``fsm_voice.transitions`` ({transition}), ``fsm_voice.connection.attempts``
({attempt}), ``fsm_voice.errors`` ({error}), ``fsm_voice.quality.alerts`` ({alert}),
``fsm_voice.{connect,detection,outage,recovery}.duration`` (s), ``fsm_voice.rtt`` (s),
``fsm_voice.jitter`` (s), ``fsm_voice.packet_loss`` (1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fsm_voice.dispatcher import StatusChange
from fsm_voice.effects import OpenTransport
from fsm_voice.errors import VoiceError
from fsm_voice.machine import STATUSES
from fsm_voice.policy import QualityAlert
from fsm_voice.ports import ConnectionMetrics
from fsm_voice.telemetry import (
    DURATIONS,
    UP_STATUSES,
    BaseSink,
    BoundedLabel,
    Hub,
    SessionTap,
    merge_counts,
    split_counts,
    statuses,
)

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("OpenTelemetry export needs the 'otel' extra: "
                      "pip install 'fsm-voice[otel]'") from exc

__all__ = ["OtelSink"]

SCOPE = "fsm_voice"


class OtelSink(BaseSink):
    """Spans and metrics for every session of ``hub``; providers default to the global ones."""

    def __init__(self, hub: Hub, *, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None,
                 model: str = "gpt-realtime", provider_name: str = "openai") -> None:
        self.hub = hub
        self.model = model
        self.provider_name = provider_name
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._retired: dict[tuple[str, str, str, str], int] = {}
        meter.create_observable_up_down_counter(
            "fsm_voice.sessions", [self._observe_sessions], unit="{session}",
            description="Tracked sessions by status")
        meter.create_observable_counter(
            "fsm_voice.transitions", [self._observe_transitions], unit="{transition}",
            description="Machine transitions taken")
        self.attempts = meter.create_counter(
            "fsm_voice.connection.attempts", unit="{attempt}",
            description="Transport opens by kind and the event that caused them")
        self.errors = meter.create_counter("fsm_voice.errors", unit="{error}",
                                           description="Errors reported by sessions")
        self.alerts = meter.create_counter("fsm_voice.quality.alerts", unit="{alert}",
                                           description="Quality alerts by kind")
        self.durations = {
            kind: meter.create_histogram(f"fsm_voice.{kind}.duration", unit="s",
                                         description=f"{kind} time (see fsm_voice.telemetry)")
            for kind in DURATIONS
        }
        self.operation = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration")
        self.rtt = meter.create_histogram("fsm_voice.rtt", unit="s",
                                          description="Round-trip time per quality sample")
        self.jitter = meter.create_histogram("fsm_voice.jitter", unit="s",
                                             description="Jitter per quality sample")
        self.loss = meter.create_histogram("fsm_voice.packet_loss", unit="1",
                                           description="Packet loss fraction per sample")
        self._code = BoundedLabel(100)
        self._spans: dict[int, Span] = {}
        self._attempts: dict[int, Span] = {}
        self._started: dict[int, float] = {}
        hub.add_sink(self)

    def close(self) -> None:
        """End every open span and stop watching the hub."""
        if self in self.hub.sinks:
            self.hub.remove_sink(self)

    def _observe_sessions(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = statuses(self.hub)
        return [Observation(counts.get(status, 0), {"status": status}) for status in STATUSES]

    def _observe_transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        taken, _ = split_counts(self._retired, self.hub)
        return [Observation(n, {"event": e, "source": src, "target": tgt})
                for (e, src, tgt), n in sorted(taken.items())]

    def _attrs(self, **extra: Any) -> dict[str, Any]:
        return {"gen_ai.operation.name": "realtime", "gen_ai.provider.name": self.provider_name,
                "gen_ai.request.model": self.model, **extra}

    # -- sink ---------------------------------------------------------------------------------
    def added(self, tap: SessionTap) -> None:
        span = self.tracer.start_span(
            f"realtime {self.model}", kind=SpanKind.CLIENT,
            attributes=self._attrs(**{"gen_ai.conversation.id": tap.name,
                                      "fsm_voice.session.engine":
                                          type(tap.session.machine).__name__}))
        self._spans[tap.id] = span
        self._started[tap.id] = tap.now

    def removed(self, tap: SessionTap) -> None:
        merge_counts(self._retired, tap.counts)
        self._end_attempt(tap, False, "session ended")
        started = self._started.pop(tap.id, None)
        span = self._spans.pop(tap.id, None)
        failed = tap.session.status == "error"
        if started is not None:
            extra = {"error.type": "session_error"} if failed else {}
            self.operation.record(max(0.0, tap.now - started), self._attrs(**extra))
        if span is not None:
            span.set_attribute("fsm_voice.attempts", tap.session.attempts)
            if failed:
                last = tap.recent_errors[-1][1].code if tap.recent_errors else "session_error"
                span.set_attribute("error.type", last)
                span.set_status(Status(StatusCode.ERROR, last))
            span.end()

    def status(self, tap: SessionTap, change: StatusChange) -> None:
        if change.status in UP_STATUSES and change.previous in UP_STATUSES:
            return  # active/listening/speaking turns: counted, not span events
        span = self._spans.get(tap.id)
        if span is not None:
            span.add_event("status", {"fsm_voice.status": change.status,
                                      "fsm_voice.previous": change.previous,
                                      "fsm_voice.state": change.state,
                                      "fsm_voice.event": change.event})

    def attempt(self, tap: SessionTap, effect: OpenTransport, cause: str) -> None:
        kind = str(effect.reason)
        self.attempts.add(1, {"kind": kind, "reason": cause})
        parent = self._spans.get(tap.id)
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        self._attempts[tap.id] = self.tracer.start_span(
            f"realtime.connect {kind}", context=ctx, kind=SpanKind.CLIENT,
            attributes={"fsm_voice.attempt.kind": kind, "fsm_voice.attempt.reason": cause,
                        "fsm_voice.attempt.number": effect.attempt,
                        "gen_ai.request.model": self.model})

    def attempt_end(self, tap: SessionTap, ok: bool, detail: str) -> None:
        self._end_attempt(tap, ok, detail)

    def _end_attempt(self, tap: SessionTap, ok: bool, detail: str) -> None:
        span = self._attempts.pop(tap.id, None)
        if span is None:
            return
        if ok:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_attribute("error.type", detail)
            span.set_status(Status(StatusCode.ERROR, detail))
        span.end()

    def duration(self, tap: SessionTap, kind: str, seconds: float) -> None:
        self.durations[kind].record(seconds)

    def error(self, tap: SessionTap, err: VoiceError) -> None:
        self.errors.add(1, {"error.type": self._code(err.code),
                            "fsm_voice.severity": str(err.severity)})
        span = self._spans.get(tap.id)
        if span is not None:
            span.add_event("error", {"error.type": err.code,
                                     "fsm_voice.severity": str(err.severity),
                                     "fsm_voice.source": str(err.source)})

    def sample(self, tap: SessionTap, m: ConnectionMetrics) -> None:
        if m.latency_ms is not None:
            self.rtt.record(m.latency_ms / 1000.0)
        if m.jitter_ms is not None:
            self.jitter.record(m.jitter_ms / 1000.0)
        self.loss.record(m.loss_fraction)

    def alert(self, tap: SessionTap, alert: QualityAlert) -> None:
        self.alerts.add(1, {"kind": alert.kind})
        span = self._spans.get(tap.id)
        if span is not None:
            span.add_event("quality_alert", {"fsm_voice.kind": alert.kind,
                                             "fsm_voice.value": alert.value,
                                             "fsm_voice.threshold": alert.threshold})
