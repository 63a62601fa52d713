"""Audio for the local peer: an outgoing track that plays queued PCM (else silence), tone synthesis,
and conversion of received frames to one PCM format.

All PCM here is signed 16-bit little-endian, mono, 48 kHz ("s16 mono 48k").
"""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import sys
import time
from collections import deque

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 48_000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000  # 960
BYTES_PER_FRAME = SAMPLES_PER_FRAME * 2
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_SILENT_FRAME = bytes(BYTES_PER_FRAME)


def pcm_ms(pcm: bytes | bytearray) -> float:
    """Duration of s16 mono 48k PCM in milliseconds."""
    return len(pcm) / 2 / SAMPLE_RATE * 1000.0


def tone(
    duration_s: float = 1.0,
    *,
    f0: float = 220.0,
    harmonics: tuple[float, ...] = (1.0, 0.5, 0.33, 0.25),
    peak: float = 0.35,
    vibrato_hz: float = 5.0,
) -> bytes:
    """A voiced-sounding tone: ``f0`` with harmonics, light vibrato, 20 ms fade in/out."""
    n = int(duration_s * SAMPLE_RATE)
    fade = max(1, SAMPLE_RATE * 20 // 1000)
    norm = sum(harmonics) or 1.0
    out = array.array("h", bytes(2 * n))
    phase = 0.0
    for i in range(n):
        t = i / SAMPLE_RATE
        f = f0 * (1.0 + 0.01 * math.sin(2 * math.pi * vibrato_hz * t))
        phase += 2 * math.pi * f / SAMPLE_RATE
        v = sum(a * math.sin((k + 1) * phase) for k, a in enumerate(harmonics)) / norm
        env = min(1.0, i / fade, (n - 1 - i) / fade)
        out[i] = int(max(-1.0, min(1.0, peak * env * v)) * 32767)
    if sys.byteorder != "little":  # pragma: no cover
        out.byteswap()
    return out.tobytes()


class FrameConverter:
    """Converts whatever aiortc decodes (normally s16 stereo 48 kHz) into s16 mono 48k PCM."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def convert(self, frame: av.AudioFrame) -> bytes:
        chunks: list[bytes] = []
        for out in self._resampler.resample(frame):
            data = bytes(out.planes[0])
            chunks.append(data[: out.samples * 2])
        return b"".join(chunks)


class _Playback:
    __slots__ = ("done", "pcm", "pos")

    def __init__(self, pcm: bytes, done: asyncio.Future[bool]) -> None:
        self.pcm = pcm
        self.pos = 0
        self.done = done


class PcmPlayerTrack(MediaStreamTrack):
    """Outgoing audio: plays queued PCM clips in order, silence otherwise, paced in real time.

    It never pauses: a frame every 20 ms, so the remote side always sees inbound RTP (liveness).
    :meth:`play` returns a future that becomes True once the clip's last sample went out, or
    False if the clip was dropped by :meth:`clear` or :meth:`stop`.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[_Playback] = deque()
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.voiced_frames_sent = 0

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    def play(self, pcm: bytes) -> asyncio.Future[bool]:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if not pcm or self.readyState != "live":
            done.set_result(self.readyState == "live")
            return done
        self._queue.append(_Playback(pcm, done))
        return done

    def clear(self) -> None:
        """Drop everything queued (the clips' futures resolve False)."""
        while self._queue:
            item = self._queue.popleft()
            if not item.done.done():
                item.done.set_result(False)

    def stop(self) -> None:
        self.clear()
        super().stop()

    def _next_pcm(self) -> bytes:
        need = BYTES_PER_FRAME
        parts: list[bytes] = []
        while need and self._queue:
            item = self._queue[0]
            chunk = item.pcm[item.pos : item.pos + need]
            item.pos += len(chunk)
            need -= len(chunk)
            parts.append(chunk)
            if item.pos >= len(item.pcm):
                self._queue.popleft()
                if not item.done.done():
                    item.done.set_result(True)
        if not parts:
            return _SILENT_FRAME
        self.voiced_frames_sent += 1
        if need:
            parts.append(bytes(need))
        return b"".join(parts)

    async def recv(self) -> av.AudioFrame:
        pcm = await self._tick()
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(pcm)
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts - SAMPLES_PER_FRAME
        self.frames_sent += 1
        return frame

    async def play_out_unsent(self) -> None:
        """Consume the queued clips in real time without sending them, until cancelled (a
        muted sender: the server's output still plays out, so each clip still ends)."""
        while True:
            await self._tick()

    async def _tick(self) -> bytes:
        """Wait until the next 20 ms frame is due; its PCM (the queue advances)."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._pts / SAMPLE_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.5:  # fell far behind (loop stalled): resynchronise, no burst
                self._start = now - self._pts / SAMPLE_RATE
        if self.readyState != "live":
            raise MediaStreamError
        self._pts += SAMPLES_PER_FRAME
        return self._next_pcm()
