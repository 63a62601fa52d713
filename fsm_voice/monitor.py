"""The monitor: what a session tells the application besides its status.

Subscriber lists (:class:`Subscribers`), the error record, connection-quality sampling with its
alerts, and the periodic health log line. Every record is bounded (``deque(maxlen=...)``): a
session that lives for days, or a server that sends 200,000 errors, does not grow memory.
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from fsm_voice.clock import Clock
from fsm_voice.errors import VoiceError
from fsm_voice.policy import MonitorPolicy, QualityAlert, QualityThresholds
from fsm_voice.ports import ConnectionMetrics

log = logging.getLogger("fsm_voice.session")

T = TypeVar("T")

ERROR_LIMIT = 1_000
ALERT_LIMIT = 1_000
METRICS_LIMIT = 720


def _sync_callback(cb: Any) -> Any:
    if not callable(cb):
        raise TypeError(f"a subscriber must be callable, got {type(cb).__name__}")
    if inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(
        getattr(cb, "__call__", None)  # noqa: B004 - async callable objects too
    ):
        raise TypeError(
            f"{getattr(cb, '__name__', cb)!r} is async; subscribers are called synchronously "
            "from the dispatcher. Pass a plain function (e.g. one that puts the value on an "
            "anyio memory stream your own task reads)."
        )
    return cb


class Subscribers(Generic[T]):
    """Plain (non-async) callables, called in order; one that raises is logged and skipped."""

    __slots__ = ("_cbs",)

    def __init__(self) -> None:
        self._cbs: list[Callable[[T], object]] = []

    def add(self, cb: Callable[[T], object]) -> None:
        self._cbs.append(_sync_callback(cb))

    def __bool__(self) -> bool:
        return bool(self._cbs)

    def emit(self, value: T) -> None:
        for cb in self._cbs:
            try:
                cb(value)
            except Exception:
                log.exception("subscriber %r raised; ignored", cb)


class Monitor:
    """Errors, quality samples and alerts of one session, and their subscribers.

    ``record(event, detail)`` puts an observation into the session's trace; ``status()`` and
    ``active()`` read the machine (the monitor never changes it).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        monitor: MonitorPolicy,
        quality: QualityThresholds,
        status: Callable[[], str],
        active: Callable[[], bool],
        record: Callable[[str, str], None],
        error_limit: int = ERROR_LIMIT,
        alert_limit: int = ALERT_LIMIT,
    ) -> None:
        self.clock = clock
        self.policy = monitor
        self.quality = quality
        self._status = status
        self._active = active
        self._record = record
        self.errors: collections.deque[VoiceError] = collections.deque(maxlen=error_limit)
        """The most recent reported errors (``error_count`` counts all)."""
        self.error_count = 0
        self.alerts: collections.deque[QualityAlert] = collections.deque(maxlen=alert_limit)
        """The most recent quality alerts (``alert_count`` counts all)."""
        self.alert_count = 0
        self.metrics_history: collections.deque[ConnectionMetrics] = collections.deque(
            maxlen=METRICS_LIMIT)
        self.rate_limits: list[Any] = []
        """The last ``rate_limits.updated`` the server sent (OpenAI Realtime shape)."""
        self.on_error: Subscribers[VoiceError] = Subscribers()
        self.on_metrics: Subscribers[ConnectionMetrics] = Subscribers()
        self.on_alert: Subscribers[QualityAlert] = Subscribers()

    def report(self, err: VoiceError) -> None:
        """Record an error, log it, tell the subscribers."""
        self.errors.append(err)
        self.error_count += 1
        log.warning("session error: %s", err)
        self.on_error.emit(err)

    def sample(self, m: ConnectionMetrics, *, health: bool = False) -> None:
        """One quality sample: recorded, alerts raised on the policy's thresholds, and (when
        ``health``) the periodic health line logged."""
        self.metrics_history.append(m)
        status = self._status()
        self._record("metrics",
                     f"rtt_ms={m.latency_ms} jitter_ms={m.jitter_ms} lost={m.packets_lost}")
        self.on_metrics.emit(m)
        for alert in self.quality.violations(m):
            self.alerts.append(alert)
            self.alert_count += 1
            self._record("quality_alert",
                         f"{alert.kind}={alert.value:.1f} > {alert.threshold:.1f}")
            log.warning(
                "quality_alert kind=%s value=%.1f threshold=%.1f status=%s", alert.kind,
                alert.value, alert.threshold, status,
                extra={"fsm_voice": {"event": "quality_alert", "kind": alert.kind,
                                     "value": alert.value, "threshold": alert.threshold,
                                     "status": status}})
            self.on_alert.emit(alert)
        if health:
            log.info(
                "health status=%s rtt_ms=%s jitter_ms=%s packets_lost=%s loss=%.3f",
                status, m.latency_ms, m.jitter_ms, m.packets_lost, m.loss_fraction,
                extra={"fsm_voice": {"event": "health", "status": status,
                                     "rtt_ms": m.latency_ms, "jitter_ms": m.jitter_ms,
                                     "packets_lost": m.packets_lost,
                                     "loss_fraction": m.loss_fraction}})

    async def run(self, poll: Callable[[], Awaitable[ConnectionMetrics | None]]) -> None:
        """Poll quality every ``metrics_interval`` while a session is up (a task of the
        session's group; runs until cancelled)."""
        interval = self.policy.metrics_interval
        health_every = max(1, round(self.policy.health_interval / interval))
        n = 0
        while True:
            await self.clock.sleep(interval)
            if not self._active():
                continue
            n += 1
            try:
                m = await poll()
            except Exception as exc:
                log.warning("metrics poll failed: %r", exc)
                continue
            if m is not None:
                self.sample(m, health=n % health_every == 0)
