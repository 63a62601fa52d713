"""Who is talking, from the audio itself (OpenAI Live sends no VAD or playback events).

Two energy gates per connection, fed by the aiortc transport (:class:`AiortcTransport
<fsm_voice.transport.aiortc_transport.AiortcTransport>` with ``activity=ActivityPolicy()``):

* the **microphone** (the outbound track, measured as the RTP sender pulls each frame):
  :attr:`~fsm_voice.ports.TransportSignal.SPEECH_STARTED` / ``SPEECH_STOPPED`` -> the machine's
  ``listening``;
* the **received** track (the assistant's audio as it is played out of the jitter buffer):
  :attr:`~fsm_voice.ports.TransportSignal.AUDIO_STARTED` / ``AUDIO_STOPPED`` -> ``speaking``.

A gate opens once the frame level (RMS, dBFS) has stayed at or above ``threshold_dbfs`` for
``attack`` seconds of audio, and closes after ``hangover`` seconds of audio below it (pauses
between words keep it open). Time is counted in audio (the frames' sample counts), not on a
clock, so the decisions are the same however the frames are scheduled; the one exception: while
the received gate is open, each 0.1 s without any received frame (a remote that stopped sending,
e.g. muted) is fed as 0.1 s of silence, so its turn still ends after the hangover. Signals are
reported only once the data channel is open (a gate already open then is reported at that
moment).

Limits: an energy gate hears noise as speech (use a quiet input or raise the threshold) and
cannot tell the assistant's voice from silence it pads with comfort noise above the threshold.
"""

from __future__ import annotations

import array
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import attrs
import av
from aiortc import MediaStreamTrack

from fsm_voice.errors import ConfigError
from fsm_voice.ports import TransportSignal

__all__ = ["SILENCE_DBFS", "ActivityPolicy", "ActivityTap", "EnergyGate", "frame_level",
           "frame_seconds"]

log = logging.getLogger(__name__)

SILENCE_DBFS = -120.0
"""Level of digital silence (and of an empty frame)."""
_POINTS = 480
"""Samples per frame the level is computed from (evenly spread): plenty for an RMS level."""


def _seconds(name: str, upper: float) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 <= value <= upper):
            raise ConfigError.invalid(f"ActivityPolicy.{name}", value,
                                      f"a number of seconds in [0, {upper:g}]")

    return check


def _dbfs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not -100 < value < 0:
        raise ConfigError.invalid(f"ActivityPolicy.{attribute.name}", value,
                                  "a level in dBFS within (-100, 0)")


@attrs.frozen
class ActivityPolicy:
    """Tuning of the activity gates (see the module docstring).

    ``mic``/``received`` switch the two sides on or off.
    """

    threshold_dbfs: float = attrs.field(default=-45.0, validator=_dbfs)
    attack: float = attrs.field(default=0.06, validator=_seconds("attack", 5.0))
    hangover: float = attrs.field(default=0.6, validator=_seconds("hangover", 10.0))
    mic: bool = True
    received: bool = True


class EnergyGate:
    """One side's open/closed decision from frame levels (sans-IO: no clock, no I/O).

    :meth:`feed` returns ``started``/``stopped`` on the frame where the gate changes, else None.
    """

    def __init__(self, policy: ActivityPolicy, started: TransportSignal,
                 stopped: TransportSignal) -> None:
        self.policy = policy
        self.started = started
        self.stopped = stopped
        self.open = False
        self.position = 0.0
        """Seconds of audio fed so far."""
        self._run = 0.0

    def feed(self, level_dbfs: float, duration: float) -> TransportSignal | None:
        self.position += duration
        loud = level_dbfs >= self.policy.threshold_dbfs
        if loud != self.open:
            self._run += duration
            limit = self.policy.attack if loud else self.policy.hangover
            if self._run >= limit:
                self.open = loud
                self._run = 0.0
                return self.started if loud else self.stopped
        else:
            self._run = 0.0
        return None


def frame_level(frame: av.AudioFrame) -> float:
    """RMS level in dBFS of a signed 16-bit frame (packed or planar; other sample formats are
    converted first); :data:`SILENCE_DBFS` for silence."""
    if frame.format.name not in ("s16", "s16p"):
        converted = av.AudioResampler(format="s16", layout="mono",
                                      rate=frame.sample_rate).resample(frame)
        if not converted:
            return SILENCE_DBFS
        frame = converted[0]
    samples = array.array("h")
    data = bytes(frame.planes[0])
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder != "little":  # pragma: no cover - PyAV frames are little-endian
        samples.byteswap()
    if not samples:
        return SILENCE_DBFS
    step = max(1, len(samples) // _POINTS)
    picked = samples[::step]
    mean = math.fsum(s * s for s in picked) / len(picked)
    if mean <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean / (32768.0 * 32768.0)))


def frame_seconds(frame: av.AudioFrame) -> float:
    """Duration of ``frame`` (20 ms when the rate is unknown)."""
    rate = frame.sample_rate or 0
    return frame.samples / rate if rate > 0 else 0.020


class ActivityTap(MediaStreamTrack):
    """An outbound audio track passing ``inner``'s frames through unchanged, each shown to
    ``on_frame`` first (a failing ``on_frame`` never breaks the audio). Stopping it stops
    ``inner``."""

    kind = "audio"

    def __init__(self, inner: MediaStreamTrack, on_frame: Callable[[av.AudioFrame], None]) -> None:
        super().__init__()
        self.inner = inner
        self._on_frame: Callable[[av.AudioFrame], None] | None = on_frame

    async def recv(self) -> Any:
        frame = await self.inner.recv()
        if self._on_frame is not None and isinstance(frame, av.AudioFrame):
            try:
                self._on_frame(frame)
            except Exception:  # measuring must never cost the call its audio
                self._on_frame = None
                log.exception("activity tap failed; measuring stopped")
        return frame

    def stop(self) -> None:
        super().stop()
        self.inner.stop()
