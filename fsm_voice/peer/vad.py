"""A small energy voice-activity detector (pure: no I/O, no clock).

Audio is measured as RMS level in dBFS per frame (normally 20 ms). Speech *starts* once the level
has stayed at or above ``threshold_dbfs`` for at least ``start_ms``; it *stops* once the level has
stayed below ``threshold_dbfs - hysteresis_db`` for at least ``stop_ms``. The hysteresis keeps a
talker whose level dips a little from being cut into pieces.
"""

from __future__ import annotations

import array
import enum
import math
import sys

SILENCE_DBFS = -120.0
"""Level reported for digital silence (the log of zero is not a number)."""


def rms_dbfs(pcm: bytes) -> float:
    """RMS level of signed 16-bit native-endian PCM in dB relative to full scale.

    A full-scale square wave is 0 dBFS; a full-scale sine about -3 dBFS. Empty or silent input
    gives :data:`SILENCE_DBFS`.
    """
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - (len(pcm) % 2)])
    if sys.byteorder != "little":  # pragma: no cover - PCM on the wire is little-endian
        samples.byteswap()
    if not samples:
        return SILENCE_DBFS
    total = math.fsum(float(s) * s for s in samples)
    rms = math.sqrt(total / len(samples))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / 32768.0))


class VadEvent(enum.Enum):
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"


class EnergyVad:
    """Speech start/stop decisions from a stream of frame levels.

    Feed :meth:`process` one frame level and duration at a time; it returns a :class:`VadEvent`
    on the frame where a decision is made, else None. ``position_ms`` counts all audio fed so far.
    """

    def __init__(
        self,
        threshold_dbfs: float = -40.0,
        *,
        start_ms: float = 100.0,
        stop_ms: float = 500.0,
        hysteresis_db: float = 6.0,
    ) -> None:
        if not -120.0 < threshold_dbfs < 0.0:
            raise ValueError(f"threshold_dbfs must be in (-120, 0), got {threshold_dbfs!r}")
        if start_ms <= 0 or stop_ms <= 0:
            raise ValueError("start_ms and stop_ms must be positive")
        if hysteresis_db < 0:
            raise ValueError("hysteresis_db must not be negative")
        self.threshold_dbfs = threshold_dbfs
        self.start_ms = start_ms
        self.stop_ms = stop_ms
        self.hysteresis_db = hysteresis_db
        self.speaking = False
        self.position_ms = 0.0
        self._run_ms = 0.0  # duration of the current run of frames pointing to a change
        self._run_start_ms = 0.0
        self.last_start_ms = 0.0
        """Position where the speech run that triggered the last start began."""
        self.last_voiced_end_ms = 0.0
        """Position at the end of the last voiced frame."""

    def reset(self) -> None:
        self.speaking = False
        self._run_ms = 0.0

    def process(self, level_dbfs: float, duration_ms: float) -> VadEvent | None:
        start_pos = self.position_ms
        self.position_ms += duration_ms
        if not self.speaking:
            if level_dbfs >= self.threshold_dbfs:
                if self._run_ms == 0.0:
                    self._run_start_ms = start_pos
                self._run_ms += duration_ms
                self.last_voiced_end_ms = self.position_ms
                if self._run_ms >= self.start_ms:
                    self.speaking = True
                    self._run_ms = 0.0
                    self.last_start_ms = self._run_start_ms
                    return VadEvent.SPEECH_STARTED
            else:
                self._run_ms = 0.0
            return None
        if level_dbfs < self.threshold_dbfs - self.hysteresis_db:
            self._run_ms += duration_ms
            if self._run_ms >= self.stop_ms:
                self.speaking = False
                self._run_ms = 0.0
                return VadEvent.SPEECH_STOPPED
        else:
            self._run_ms = 0.0
            self.last_voiced_end_ms = self.position_ms
        return None


def count_words(
    pcm: bytes,
    threshold_dbfs: float = -40.0,
    *,
    frame_ms: float = 20.0,
    min_word_ms: float = 60.0,
    min_gap_ms: float = 100.0,
) -> int:
    """Stand-in "recognition": the number of energy segments in s16 mono 48k PCM.

    A segment is a run of frames at or above ``threshold_dbfs`` lasting at least ``min_word_ms``;
    runs separated by less than ``min_gap_ms`` of quieter frames count as one. Deterministic:
    speech synthesised with clear pauses between words (``espeak-ng -g 15``) counts its words.
    """
    step = int(48 * frame_ms) * 2
    words = 0
    run = gap = 0.0
    for i in range(0, len(pcm) - step + 1, step):
        if rms_dbfs(pcm[i : i + step]) >= threshold_dbfs:
            if gap >= min_gap_ms and run >= min_word_ms:
                words += 1
                run = 0.0
            run += frame_ms
            gap = 0.0
        else:
            gap += frame_ms
            if gap >= min_gap_ms and run < min_word_ms:
                run = 0.0  # a click, not a word
    return words + (1 if run >= min_word_ms else 0)
