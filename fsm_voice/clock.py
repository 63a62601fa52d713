"""Clocks: the runtime's only source of time, so every timing is testable without sleeping.

Timers are callbacks (``call_later``), not tasks: arming one costs a heap push, cancelling it a
flag, so a host running many sessions pays nothing per timer beyond that. The session owns every
handle and cancels them all when it stops. :func:`fail_after` bounds a wait on a clock (a real or a
virtual one), like ``anyio.fail_after`` does on the event loop's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import anyio


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, delay: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (non-blocking) after ``delay`` seconds unless cancelled first."""
        ...


class RealClock:
    """Monotonic wall time; timers on the running asyncio loop (aiortc needs asyncio anyway)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, delay: float) -> None:
        await anyio.sleep(delay)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


@contextlib.contextmanager
def fail_after(clock: Clock, delay: float | None) -> Iterator[anyio.CancelScope]:
    """Cancel the body after ``delay`` seconds of ``clock`` and raise :class:`TimeoutError`
    (``None``: no limit). The expiry is a clock callback, so a virtual clock decides when."""
    if delay is not None and (not isinstance(delay, int | float) or math.isnan(delay)):
        raise ValueError(f"a timeout is a number of seconds or None, got {delay!r}")
    with anyio.CancelScope() as scope:
        handle: TimerHandle | None = None
        if delay is not None and delay <= 0:
            scope.cancel()
        elif delay is not None and delay != math.inf:
            handle = clock.call_later(delay, scope.cancel)
        try:
            yield scope
        finally:
            if handle is not None:
                handle.cancel()
    if scope.cancelled_caught:
        raise TimeoutError(f"not done within {delay} s")


class _VirtualHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time that moves only when a test calls :meth:`advance` (or :meth:`run_until_idle`).

    Sleepers wake in deadline order; after each wake-up the clock lets every task run until all
    are blocked again, so a whole session's reaction to a timer happens inside one ``advance``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._calls: list[tuple[float, int, _VirtualHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = _VirtualHandle()
        heapq.heappush(self._calls, (self._now + max(0.0, delay), next(self._seq), handle,
                                     callback))
        return handle

    def _next(self) -> float | None:
        while self._calls and self._calls[0][2].cancelled:
            heapq.heappop(self._calls)
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)
        times = [q[0][0] for q in (self._calls, self._sleepers) if q]
        return min(times) if times else None

    def now(self) -> float:
        return self._now

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await anyio.sleep(0)
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + delay, next(self._seq), event))
        await event.wait()

    @property
    def next_deadline(self) -> float | None:
        return self._next()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running every timer and waking every sleeper due on
        the way, in deadline order, letting all tasks settle after each."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        target = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while (deadline := self._next()) is not None and deadline <= target:
            self._now = max(self._now, deadline)
            if self._calls and self._calls[0][0] == deadline:
                _, _, handle, callback = heapq.heappop(self._calls)
                handle.cancelled = True
                callback()
            else:
                heapq.heappop(self._sleepers)[2].set()
            await anyio.wait_all_tasks_blocked()
        self._now = target
        await anyio.wait_all_tasks_blocked()

    async def settle(self) -> None:
        """Let every task run until all are blocked (time does not move)."""
        await anyio.wait_all_tasks_blocked()
