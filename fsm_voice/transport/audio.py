"""Audio sources (what we send) and sinks (what we do with what we receive).

Sources are aiortc :class:`~aiortc.MediaStreamTrack` objects of kind ``audio`` producing
48 kHz mono signed-16-bit frames of 20 ms, paced in real time (``recv`` sleeps until the frame is
due, like a microphone). Pure Python (``array`` + ``math``): no numpy needed.

Sinks implement :class:`AudioSink`: ``await sink.write(frame)`` for every received
:class:`av.AudioFrame` and ``sink.close()`` once at the end. The transport always drains the
remote track into a sink (a :class:`NullSink` when none is configured), because an unread aiortc
track buffers frames without bound.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import functools
import math
import os
import sys
import time
import wave
from collections.abc import Callable
from typing import BinaryIO, Protocol, runtime_checkable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fsm_voice.errors import FsmVoiceError

__all__ = [
    "FRAME_SAMPLES",
    "PTIME",
    "SAMPLE_RATE",
    "AudioFileError",
    "AudioSink",
    "AudioSinkFactory",
    "AudioSourceFactory",
    "NullSink",
    "PacedAudioSource",
    "SilenceSource",
    "ToneSource",
    "UtteranceSource",
    "WavFileSource",
    "WavRecorder",
]

SAMPLE_RATE = 48000
PTIME = 0.020
FRAME_SAMPLES = int(SAMPLE_RATE * PTIME)  # 960
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_FULL_SCALE = 32767


class AudioFileError(FsmVoiceError, ValueError):
    """An audio file cannot be read or written (missing, not a WAV, unsupported format)."""


def _dbfs_to_amplitude(dbfs: float) -> float:
    return float(10.0 ** (dbfs / 20.0))


def _clip(value: float) -> int:
    v = round(value)
    return -32768 if v < -32768 else _FULL_SCALE if v > _FULL_SCALE else v


def _to_bytes(samples: array.array[int]) -> bytes:
    if sys.byteorder != "little":  # pragma: no cover - s16 frames are little-endian
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class PacedAudioSource(MediaStreamTrack):
    """Base class: a live audio track producing 20 ms frames of 48 kHz mono s16 in real time.

    Subclasses implement :meth:`_samples`, returning exactly ``FRAME_SAMPLES`` samples for the
    frame starting at sample index ``start``. ``clock`` (monotonic seconds) is injectable.
    """

    kind = "audio"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0

    def _samples(self, start: int) -> array.array[int]:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self._clock()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / SAMPLE_RATE - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(_to_bytes(self._samples(self._pts)))
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = _TIME_BASE
        self.frames_sent += 1
        return frame


_SILENT_FRAME = array.array("h", bytes(2 * FRAME_SAMPLES))


class SilenceSource(PacedAudioSource):
    """Digital silence, forever (keeps RTP flowing without sending sound)."""

    def _samples(self, start: int) -> array.array[int]:
        return _SILENT_FRAME


class ToneSource(PacedAudioSource):
    """A sine tone of ``freq`` Hz at ``level_dbfs`` (peak); after ``seconds`` (if given) silence."""

    def __init__(
        self,
        freq: float = 440.0,
        seconds: float | None = None,
        *,
        level_dbfs: float = -12.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < freq < SAMPLE_RATE / 2:
            raise ValueError(f"tone frequency must be within (0, {SAMPLE_RATE // 2}) Hz: {freq!r}")
        if seconds is not None and seconds < 0:
            raise ValueError(f"tone duration must be >= 0 seconds or None: {seconds!r}")
        if level_dbfs > 0:
            raise ValueError(f"level_dbfs must be <= 0 dBFS: {level_dbfs!r}")
        super().__init__(clock=clock)
        self.freq = float(freq)
        self.seconds = seconds
        self._amp = _dbfs_to_amplitude(level_dbfs) * _FULL_SCALE
        self._end = None if seconds is None else int(seconds * SAMPLE_RATE)

    def _samples(self, start: int) -> array.array[int]:
        w = 2.0 * math.pi * self.freq / SAMPLE_RATE
        amp = self._amp
        end = self._end
        out = array.array("h", bytes(2 * FRAME_SAMPLES))
        for i in range(FRAME_SAMPLES):
            n = start + i
            if end is not None and n >= end:
                break
            out[i] = _clip(amp * math.sin(w * n))
        return out


class UtteranceSource(PacedAudioSource):
    """Synthetic speech-like audio: ``lead_silence`` s of silence, ``speech_seconds`` of a voiced
    signal, ``trail_silence`` s of silence; the cycle repeats when ``repeat`` is true, otherwise
    silence follows forever.

    The voiced part is a harmonic series (fundamental ``f0`` Hz with a slow pitch glide, harmonics
    falling at 6 dB/octave) under a syllable-rate (~4 Hz) amplitude envelope with 30 ms
    attack/release, normalised to an RMS of ``level_dbfs`` (default -20 dBFS): well above the
    threshold of a simple energy VAD.
    """

    def __init__(
        self,
        *,
        lead_silence: float = 1.0,
        speech_seconds: float = 1.5,
        trail_silence: float = 1.0,
        repeat: bool = False,
        f0: float = 140.0,
        level_dbfs: float = -20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lead_silence < 0 or trail_silence < 0 or speech_seconds <= 0:
            raise ValueError(
                "UtteranceSource needs lead/trail silence >= 0 s and speech_seconds > 0 s, got "
                f"{lead_silence!r}/{speech_seconds!r}/{trail_silence!r}"
            )
        if not 50.0 <= f0 <= 400.0:
            raise ValueError(f"f0 must be a voice pitch within [50, 400] Hz: {f0!r}")
        if level_dbfs > -3:
            raise ValueError(f"level_dbfs must be <= -3 dBFS (RMS): {level_dbfs!r}")
        super().__init__(clock=clock)
        self.lead_silence = lead_silence
        self.speech_seconds = speech_seconds
        self.trail_silence = trail_silence
        self.repeat = repeat
        self._speech_start = int(lead_silence * SAMPLE_RATE)
        self._speech_end = self._speech_start + int(speech_seconds * SAMPLE_RATE)
        self._cycle = self._speech_end + int(trail_silence * SAMPLE_RATE)
        self._speech = _render_voiced(self._speech_end - self._speech_start, f0, level_dbfs)

    def _samples(self, start: int) -> array.array[int]:
        out = array.array("h", bytes(2 * FRAME_SAMPLES))
        for i in range(FRAME_SAMPLES):
            n = start + i
            if self.repeat:
                n %= self._cycle
            elif n >= self._cycle:
                break
            if self._speech_start <= n < self._speech_end:
                out[i] = self._speech[n - self._speech_start]
        return out

    @property
    def voiced_interval(self) -> tuple[float, float]:
        """(start, end) of the voiced part within one cycle, in seconds."""
        return (self._speech_start / SAMPLE_RATE, self._speech_end / SAMPLE_RATE)


@functools.lru_cache(maxsize=8)
def _render_voiced(length: int, f0: float, level_dbfs: float) -> array.array[int]:
    """``length`` samples of a harmonic, enveloped, RMS-normalised voiced signal.

    Cached (read-only use): a source built per connection, inside the event loop, renders once
    (~0.2 s of CPU per second of speech) and then reuses the samples.
    """
    table_size = 4096
    harmonics = [(k, 1.0 / k) for k in range(1, 11) if k * f0 * 1.1 < SAMPLE_RATE / 2]
    table = [
        sum(a * math.sin(2 * math.pi * k * j / table_size) for k, a in harmonics)
        for j in range(table_size)
    ]
    attack = int(0.030 * SAMPLE_RATE)
    raw: list[float] = []
    phase = 0.0
    for n in range(length):
        t = n / SAMPLE_RATE
        freq = f0 * (1.0 + 0.08 * math.sin(2 * math.pi * 0.7 * t))  # slow intonation glide
        phase = (phase + freq * table_size / SAMPLE_RATE) % table_size
        syllable = 0.55 + 0.45 * math.sin(2 * math.pi * 4.0 * t) ** 2
        edge = min(1.0, n / attack, (length - 1 - n) / attack) if attack > 0 else 1.0
        raw.append(table[int(phase)] * syllable * max(0.0, edge))
    rms = math.sqrt(sum(v * v for v in raw) / max(1, len(raw))) or 1.0
    gain = _dbfs_to_amplitude(level_dbfs) * _FULL_SCALE / rms
    return array.array("h", (_clip(v * gain) for v in raw))


class WavFileSource(PacedAudioSource):
    """Plays a WAV file (any rate, mono/stereo, 8/16/24/32-bit PCM), converted to 48 kHz mono.

    At the end of the file it starts again when ``loop`` is true, otherwise it continues with
    silence. The file is read and converted at construction: a missing, non-WAV or unsupported
    file raises :class:`AudioFileError` right away.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.path = os.fspath(path)
        self.loop = loop
        self._pcm = _read_wav_48k_mono(self.path)
        self.duration = len(self._pcm) / SAMPLE_RATE

    def _samples(self, start: int) -> array.array[int]:
        pcm = self._pcm
        total = len(pcm)
        if total == 0:
            return _SILENT_FRAME
        if not self.loop:
            if start >= total:
                return _SILENT_FRAME
            chunk = pcm[start : start + FRAME_SAMPLES]
            if len(chunk) < FRAME_SAMPLES:
                chunk.extend(_SILENT_FRAME[: FRAME_SAMPLES - len(chunk)])
            return chunk
        out = array.array("h")
        pos = start % total
        while len(out) < FRAME_SAMPLES:
            take = min(FRAME_SAMPLES - len(out), total - pos)
            out.extend(pcm[pos : pos + take])
            pos = (pos + take) % total
        return out


_WAV_FORMATS = {1: "u8", 2: "s16", 4: "s32"}


def _read_wav_48k_mono(path: str) -> array.array[int]:
    try:
        with wave.open(path, "rb") as wf:
            channels = wf.getnchannels()
            width = wf.getsampwidth()
            rate = wf.getframerate()
            data = wf.readframes(wf.getnframes())
    except FileNotFoundError:
        raise AudioFileError(f"audio file not found: {path!r}") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioFileError(
            f"cannot read {path!r} as a PCM WAV file ({exc}); convert it to 16-bit PCM WAV"
        ) from None
    if channels not in (1, 2):
        raise AudioFileError(f"{path!r}: {channels} channels not supported (mono or stereo only)")
    if width == 3:  # 24-bit: widen to 32-bit little-endian
        data = b"".join(b"\x00" + data[i : i + 3] for i in range(0, len(data), 3))
        width = 4
    fmt = _WAV_FORMATS.get(width)
    if fmt is None:
        raise AudioFileError(f"{path!r}: {8 * width}-bit samples not supported")
    nsamples = len(data) // (width * channels)
    if nsamples == 0:
        return array.array("h")
    if channels == 1 and width == 2 and rate == SAMPLE_RATE:
        out = array.array("h")
        out.frombytes(data[: nsamples * 2])
        if sys.byteorder != "little":  # pragma: no cover
            out.byteswap()
        return out
    frame = av.AudioFrame(
        format=fmt, layout="mono" if channels == 1 else "stereo", samples=nsamples
    )
    frame.planes[0].update(data[: nsamples * width * channels])
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, rate)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = array.array("h")
    for f in [*resampler.resample(frame), *resampler.resample(None)]:
        out.frombytes(bytes(f.planes[0])[: f.samples * 2])
    if sys.byteorder != "little":  # pragma: no cover
        out.byteswap()
    return out


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


@runtime_checkable
class AudioSink(Protocol):
    """Consumer of received audio frames."""

    async def write(self, frame: av.AudioFrame) -> None: ...

    def close(self) -> None:
        """Release resources (idempotent)."""
        ...


AudioSourceFactory = Callable[[], MediaStreamTrack]
"""Builds a fresh outbound track for each connection (tracks are stopped on close)."""
AudioSinkFactory = Callable[[], AudioSink]
"""Builds a fresh sink for each connection (closed on close)."""


class KeepOpen:
    """A per-connection view of a sink that lives for the whole session: every connection
    (restarts included) writes to the same sink, and closing the view leaves it open, e.g.
    ``rec = WavRecorder("a.wav"); audio_sink=lambda: KeepOpen(rec)``; close ``rec`` yourself."""

    def __init__(self, inner: AudioSink) -> None:
        self.inner = inner

    async def write(self, frame: av.AudioFrame) -> None:
        await self.inner.write(frame)

    def close(self) -> None:
        pass


class NullSink:
    """Discards audio, counting frames and seconds received."""

    def __init__(self) -> None:
        self.frames = 0
        self.seconds = 0.0
        self.closed = False

    async def write(self, frame: av.AudioFrame) -> None:
        self.frames += 1
        if frame.sample_rate:
            self.seconds += frame.samples / frame.sample_rate

    def close(self) -> None:
        self.closed = True


class WavRecorder:
    """Writes received audio to a 16-bit mono 48 kHz WAV file (frames converted as needed).

    The file is created on construction (a bad path raises :class:`AudioFileError` at once) and
    finalised by :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.frames = 0
        self.samples = 0
        try:
            self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise AudioFileError(f"cannot create WAV file {self.path!r}: {exc}") from None
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    async def write(self, frame: av.AudioFrame) -> None:
        if self._wav is None:
            return
        self.frames += 1
        for f in self._resampler.resample(frame):
            pcm = bytes(f.planes[0])[: f.samples * 2]
            self._wav.writeframesraw(pcm)
            self.samples += f.samples

    def close(self) -> None:
        wav, self._wav = self._wav, None
        file, self._file = self._file, None
        try:
            if wav is not None:
                wav.close()
        finally:
            if file is not None:
                file.close()
