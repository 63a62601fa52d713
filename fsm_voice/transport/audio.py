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
import contextlib
import fractions
import functools
import math
import os
import queue
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, runtime_checkable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from fsm_voice.errors import FsmVoiceError

__all__ = [
    "FRAME_SAMPLES",
    "PTIME",
    "SAMPLE_RATE",
    "AudioDeviceError",
    "AudioFileError",
    "AudioInput",
    "AudioSink",
    "AudioSinkFactory",
    "AudioSourceFactory",
    "ConversationRecorder",
    "DeviceInput",
    "DeviceOutput",
    "GeneratedInput",
    "NullSink",
    "PacedAudioSource",
    "SilenceSource",
    "TapSink",
    "ToneSource",
    "UtteranceSource",
    "WavFileSource",
    "WavInput",
    "WavRecorder",
    "device_spec",
    "open_input",
    "open_output",
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


# --------------------------------------------------------------------------------------------
# Session-wide inputs and outputs (the terminal client's --input / --output / --record)
# --------------------------------------------------------------------------------------------


class AudioDeviceError(FsmVoiceError, ValueError):
    """An audio device cannot be used (no FFmpeg support for it here, or it cannot be opened)."""


def device_spec(spec: str) -> tuple[str, str] | None:
    """``"alsa:default"`` -> ``("alsa", "default")``: an FFmpeg format and a device (or other
    name) it opens; None for anything else (a file path)."""
    fmt, sep, name = spec.partition(":")
    if not sep or not name or not fmt.replace("_", "").isalnum() or os.path.exists(spec):
        return None
    return fmt, name


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collects what C libraries (ALSA) print on file descriptor 2 meanwhile, instead of letting
    it reach the terminal; the lines are in the yielded list afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(4096).decode("utf-8", "replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())


def _device_failure(kind: str, spec: str, exc: BaseException, noise: list[str]) -> str:
    detail = str(exc)
    if noise:  # the library's own reason, e.g. "ALSA lib pcm.c:2722:(...) Unknown PCM default"
        detail += f" ({noise[-1].rpartition(') ')[2] or noise[-1]})"
    return f"cannot open audio {kind} {spec!r}: {detail}"


def _device(kind: str, spec: str) -> tuple[str, str]:
    """``(format, device)`` of a ``FORMAT:DEVICE`` spec this FFmpeg build can open as audio
    ``kind`` (``input``/``output``); :class:`AudioDeviceError` otherwise."""
    parsed = device_spec(spec)
    if parsed is None:
        raise AudioDeviceError(f"not a device: {spec!r} (expected FORMAT:DEVICE, e.g. "
                               "alsa:default)")
    fmt, name = parsed
    _check_format(kind, spec, fmt)
    return fmt, name


def _check_format(kind: str, spec: str, fmt: str) -> None:
    if fmt not in av.formats_available:
        have = ", ".join(d for d in ("alsa", "pulse", "oss", "jack", "lavfi")
                         if d in av.formats_available)
        raise AudioDeviceError(f"audio {kind} {spec!r}: this FFmpeg build has no {fmt!r} "
                               f"support (devices it has: {have or 'none'})")


class AudioInput:
    """What the user says, for the whole session: :meth:`track` builds each connection's
    outbound track, which continues where the previous connection stopped (a restart does not
    replay a file). ``tap`` (if set) sees every frame sent."""

    tap: Callable[[av.AudioFrame], None] | None = None

    def track(self) -> MediaStreamTrack:
        return _InputTrack(self)

    def _next(self) -> array.array[int]:
        """The next 20 ms of samples (silence when there is nothing to say)."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """True once everything there was to say has been sent (a file's end)."""
        return False

    def close(self) -> None:
        """Release the input (idempotent)."""


class _InputTrack(PacedAudioSource):
    def __init__(self, source: AudioInput) -> None:
        super().__init__()
        self._source = source

    def _samples(self, start: int) -> array.array[int]:
        return self._source._next()

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        if self._source.tap is not None:
            self._source.tap(frame)
        return frame


class WavInput(AudioInput):
    """A WAV file said once (then silence), carried across reconnects."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._pcm = _read_wav_48k_mono(self.path)
        self.position = 0
        self.duration = len(self._pcm) / SAMPLE_RATE

    def _next(self) -> array.array[int]:
        chunk = self._pcm[self.position : self.position + FRAME_SAMPLES]
        self.position += len(chunk)
        if len(chunk) < FRAME_SAMPLES:
            chunk.extend(_SILENT_FRAME[: FRAME_SAMPLES - len(chunk)])
        return chunk

    @property
    def finished(self) -> bool:
        return self.position >= len(self._pcm)


class GeneratedInput(AudioInput):
    """A synthetic utterance (:class:`UtteranceSource`'s signal), carried across reconnects."""

    def __init__(self, **utterance: float | bool) -> None:
        self._source = UtteranceSource(**utterance)  # type: ignore[arg-type]
        self._pos = 0

    def _next(self) -> array.array[int]:
        samples = self._source._samples(self._pos)
        self._pos += FRAME_SAMPLES
        return samples


class DeviceInput(AudioInput):
    """A capture device opened through PyAV/FFmpeg (``alsa:default``, ``pulse:default`` where
    FFmpeg has it; ``lavfi:sine`` makes a test signal). A reader thread decodes into a bounded
    buffer (about 1 s); each 20 ms frame takes from it, or is silence when it runs dry."""

    def __init__(self, spec: str) -> None:
        fmt, name = _device("input", spec)
        self.spec = spec
        failure: Exception | None = None
        with _captured_stderr() as noise:
            try:
                self._container = av.open(name, format=fmt)
            except (av.FFmpegError, OSError, ValueError) as exc:
                failure = exc
        if failure is not None:  # raised after the with: ``noise`` is filled on its exit
            raise AudioDeviceError(_device_failure("input", spec, failure, noise))
        if not self._container.streams.audio:
            self._container.close()
            raise AudioDeviceError(f"audio input {spec!r} has no audio stream")
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=50)
        self._buffer = bytearray()
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._read, name=f"fsm_voice input {spec}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in self._container.decode(audio=0):
                for f in resampler.resample(frame):
                    pcm = bytes(f.planes[0])[: f.samples * 2]
                    while not self._stop.is_set():
                        try:
                            self._queue.put(pcm, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                if self._stop.is_set():
                    return
        except Exception as exc:  # the device went away: say so once, then silence
            if not self._stop.is_set():
                self.error = f"audio input {self.spec!r} stopped: {exc}"

    def _next(self) -> array.array[int]:
        need = 2 * FRAME_SAMPLES
        while len(self._buffer) < need:
            try:
                self._buffer += self._queue.get_nowait()
            except queue.Empty:
                return _SILENT_FRAME  # underrun: keep time with silence
        out = array.array("h")
        out.frombytes(bytes(self._buffer[:need]))
        del self._buffer[:need]
        if sys.byteorder != "little":  # pragma: no cover
            out.byteswap()
        return out

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._container.close()


def open_input(spec: str) -> AudioInput:
    """``--input``: a WAV file or ``FORMAT:DEVICE`` (a typed error, one line, if unusable)."""
    return DeviceInput(spec) if device_spec(spec) is not None else WavInput(spec)


class DeviceOutput:
    """An :class:`AudioSink` playing through PyAV/FFmpeg (``alsa:default``, or any FFmpeg
    output format, e.g. ``wav:/tmp/x.wav``). Opened and its header written at construction, so
    a missing device fails at once; a writer thread keeps the event loop free of blocking I/O
    (frames beyond about 1 s of backlog are dropped)."""

    def __init__(self, spec: str) -> None:
        fmt, name = _device("output", spec)
        self.spec = spec
        self.frames = 0
        self.dropped = 0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        failure: Exception | None = None
        with _captured_stderr() as noise:
            try:
                self._container = av.open(name, mode="w", format=fmt)
                self._stream = self._container.add_stream("pcm_s16le", rate=SAMPLE_RATE,
                                                          layout="mono")
                self._container.start_encoding()
            except (av.FFmpegError, OSError, ValueError) as exc:
                failure = exc
                if hasattr(self, "_container"):
                    with contextlib.suppress(av.FFmpegError, OSError):
                        self._container.close()
        if failure is not None:
            raise AudioDeviceError(_device_failure("output", spec, failure, noise))
        self._queue: queue.Queue[av.AudioFrame | None] = queue.Queue(maxsize=50)
        self._closed = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._write, name=f"fsm_voice output {spec}",
                                        daemon=True)
        self._thread.start()

    def _write(self) -> None:
        try:
            while (frame := self._queue.get()) is not None:
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except Exception as exc:
            self.error = f"audio output {self.spec!r} stopped: {exc}"

    async def write(self, frame: av.AudioFrame) -> None:
        if self._closed:
            return
        for f in self._resampler.resample(frame):
            f.pts = None
            try:
                self._queue.put_nowait(f)
                self.frames += 1
            except queue.Full:
                self.dropped += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while True:  # make room for the end marker: never block the caller on a stuck device
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(av.FFmpegError, OSError):
            self._container.close()


def open_output(spec: str) -> AudioSink:
    """``--output``: a WAV file (:class:`WavRecorder`) or ``FORMAT:DEVICE``."""
    return DeviceOutput(spec) if device_spec(spec) is not None else WavRecorder(spec)


class ConversationRecorder:
    """Both sides of a conversation in one stereo 48 kHz WAV: left what was sent, right what was
    received, placed by arrival time (``clock``), gaps as silence. Streams to disk: at most
    about :attr:`MAX_SKEW` seconds are held in memory."""

    SLACK = 0.1
    """A side more than this far behind the clock is padded with silence."""
    MAX_SKEW = 0.5

    def __init__(self, path: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._t0: float | None = None
        try:
            self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise AudioFileError(f"cannot create WAV file {self.path!r}: {exc}") from None
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._resamplers = [av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                            for _ in range(2)]
        self._pending = [array.array("h"), array.array("h")]
        self._written = 0  # stereo frames on disk
        self.voiced = [0, 0]
        """Samples per side (sent, received) whose 20 ms frame was not digital silence."""

    @property
    def seconds(self) -> float:
        return (self._written + max(map(len, self._pending))) / SAMPLE_RATE

    def sent(self, frame: av.AudioFrame) -> None:
        self._add(0, frame)

    def received(self, frame: av.AudioFrame) -> None:
        self._add(1, frame)

    def _cursor(self, side: int) -> int:
        return self._written + len(self._pending[side])

    def _pad_to(self, side: int, position: int) -> None:
        gap = position - self._cursor(side)
        if gap > 0:
            self._pending[side].extend(array.array("h", bytes(2 * gap)))

    def _add(self, side: int, frame: av.AudioFrame) -> None:
        if self._wav is None:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        samples = array.array("h")
        for f in self._resamplers[side].resample(frame):
            samples.frombytes(bytes(f.planes[0])[: f.samples * 2])
        if sys.byteorder != "little":  # pragma: no cover
            samples.byteswap()
        at = int((now - self._t0) * SAMPLE_RATE) - len(samples)
        if at - self._cursor(side) > self.SLACK * SAMPLE_RATE:
            self._pad_to(side, at)
        if any(samples):
            self.voiced[side] += len(samples)
        self._pending[side].extend(samples)
        self._pad_to(1 - side, at - int(self.MAX_SKEW * SAMPLE_RATE))
        self._flush(min(map(len, self._pending)))

    def _flush(self, n: int) -> None:
        if n <= 0 or self._wav is None:
            return
        out = array.array("h", bytes(4 * n))
        out[0::2] = self._pending[0][:n]
        out[1::2] = self._pending[1][:n]
        for side in (0, 1):
            del self._pending[side][:n]
        self._wav.writeframesraw(_to_bytes(out))
        self._written += n

    def close(self) -> None:
        """Pad the shorter side, write the rest and finalise the file (idempotent)."""
        if self._wav is not None:
            longest = max(map(self._cursor, (0, 1)))
            for side in (0, 1):
                self._pad_to(side, longest)
            self._flush(longest - self._written)
        wav, self._wav = self._wav, None
        file, self._file = self._file, None
        try:
            if wav is not None:
                wav.close()
        finally:
            if file is not None:
                file.close()


class TapSink:
    """An :class:`AudioSink` view writing to ``inner`` (if any) and showing every frame to
    ``tap``; closing it leaves ``inner`` open (it lives for the whole session, like
    :class:`KeepOpen`)."""

    def __init__(self, inner: AudioSink | None, tap: Callable[[av.AudioFrame], None] | None
                 ) -> None:
        self.inner = inner
        self.tap = tap
        self.frames = 0

    async def write(self, frame: av.AudioFrame) -> None:
        self.frames += 1
        if self.tap is not None:
            self.tap(frame)
        if self.inner is not None:
            await self.inner.write(frame)

    def close(self) -> None:
        pass
