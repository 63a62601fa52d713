"""Clocks: the runtime's only source of time, so every timing is testable without sleeping."""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, delay: float) -> None: ...


class RealClock:
    """Monotonic wall time and :func:`anyio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, delay: float) -> None:
        await anyio.sleep(delay)


class VirtualClock:
    """Time that moves only when a test calls :meth:`advance` (or :meth:`run_until_idle`).

    Sleepers wake in deadline order; after each wake-up the clock lets every task run until all
    are blocked again, so a whole session's reaction to a timer happens inside one ``advance``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

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
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way, in order."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        target = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await anyio.wait_all_tasks_blocked()
        self._now = target
        await anyio.wait_all_tasks_blocked()

    async def settle(self) -> None:
        """Let every task run until all are blocked (time does not move)."""
        await anyio.wait_all_tasks_blocked()
