"""The terminal client's parts: transcripts from server events, the status area, the line
editor, session-wide audio inputs, FFmpeg devices, the two-sided recorder and the local peer's
stand-in transcripts (real espeak-ng speech through a real session)."""

from __future__ import annotations

import array
import io
import math
import os
import subprocess
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import av
import pytest

from fsm_voice import RealtimeConfig, realtime_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.peer.vad import count_words, rms_dbfs
from fsm_voice.terminal import Activity, HumanView, LineEditor, TextInput, Transcripts
from fsm_voice.transport.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioDeviceError,
    ConversationRecorder,
    DeviceInput,
    DeviceOutput,
    WavInput,
    device_spec,
    open_output,
)
from tests.test_terminal import SENTENCE, _need

HOSTILE = "\x1b[2J\x1b]0;pwned\x07evil\u202e"


def espeak(tmp_path: Path, text: str) -> Path:
    wav = tmp_path / f"{len(text)}.wav"
    subprocess.run([_need("espeak-ng"), "-g", "15", "-w", str(wav), text], check=True)
    return wav


def pcm_of(path: Path) -> bytes:
    return WavInput(path)._pcm.tobytes()


def frame(samples: array.array[int]) -> av.AudioFrame:
    f = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
    f.planes[0].update(samples.tobytes())
    f.sample_rate = SAMPLE_RATE
    f.pts = 0
    return f


def tone_frame(amplitude: int = 8000) -> av.AudioFrame:
    return frame(array.array("h", (int(amplitude * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE))
                                   for i in range(FRAME_SAMPLES))))


# ------------------------------------------------------------------- the peer's "hearing"


@pytest.mark.parametrize(("text", "words"), [("one two three", 3), (SENTENCE, 6)])
def test_word_count_of_synthesised_speech(tmp_path: Path, text: str, words: int) -> None:
    assert count_words(pcm_of(espeak(tmp_path, text))) == words


def test_silence_and_clicks_are_no_words() -> None:
    silence = bytes(2 * SAMPLE_RATE)
    click = array.array("h", [12000, -12000] * (FRAME_SAMPLES // 2)).tobytes()  # one 20 ms frame
    assert count_words(silence) == 0
    assert count_words(silence + click + silence) == 0
    assert count_words(silence + click * 5 + silence + click * 5 + silence) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("transcribe", [True, False])
async def test_peer_transcribes_only_when_asked(tmp_path: Path, transcribe: bool) -> None:
    """Like the real service: input transcription events only with ``audio.input.transcription``;
    the reply's transcript always."""
    speech = WavInput(espeak(tmp_path, SENTENCE))
    config = RealtimeConfig().to_session()
    if transcribe:
        config["audio"]["input"]["transcription"] = {"model": "gpt-4o-mini-transcribe"}
    events: list[Mapping[str, Any]] = []
    done = anyio.Event()

    def seen(e: Mapping[str, Any]) -> None:
        events.append(e)
        if e.get("type") == "response.done":
            done.set()

    async with RealtimePeer() as peer:
        session = realtime_session(peer.base_url, "ek_x", session_config=config,
                                   audio_source=speech.track)
        session.on_server_event(seen)
        async with session:
            await session.start()
            with anyio.fail_after(60):
                await done.wait()
    types = [e["type"] for e in events]
    completed = [e for e in events
                 if e["type"] == "conversation.item.input_audio_transcription.completed"]
    if transcribe:
        assert [e["transcript"] for e in completed] == [
            f"(6 words, {completed[0]['transcript'].split(', ')[1]}"]
        assert types.index("input_audio_buffer.committed") < types.index(
            "conversation.item.input_audio_transcription.completed")
    else:
        assert not [t for t in types if "input_audio_transcription" in t], types
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.output_audio_transcript.delta")
    (final,) = [e for e in events if e["type"] == "response.output_audio_transcript.done"]
    assert deltas == final["transcript"] == "I heard 6 words."


# -------------------------------------------------------------------------- transcripts


def test_transcripts_assemble_by_item_and_finish_in_order() -> None:
    shown: list[tuple[str, str]] = []
    t = Transcripts(on_line=lambda _, role, text: shown.append((role, text)))
    t.event({"type": "response.output_audio_transcript.delta", "response_id": "r1",
             "item_id": "a", "content_index": 0, "delta": "Hel"})
    t.event({"type": "conversation.item.input_audio_transcription.delta", "item_id": "u",
             "content_index": 0, "delta": "hi"})
    t.event({"type": "response.output_audio_transcript.delta", "response_id": "r1",
             "item_id": "a", "content_index": 0, "delta": "lo"})
    assert sorted(t.partial.values()) == ["Hello", "hi"]
    t.event({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u",
             "content_index": 0, "transcript": "hi there"})
    t.event({"type": "response.output_audio_transcript.done", "response_id": "r1",
             "item_id": "a", "content_index": 0})  # no transcript field: what arrived
    t.event({"type": "response.text.done", "response_id": "r2", "item_id": "b",
             "content_index": 0, "text": "beta text"})
    t.event({"type": "conversation.item.input_audio_transcription.failed", "item_id": "v",
             "error": {"message": "too quiet"}})
    assert shown == [("you", "hi there"), ("assistant", "Hello"), ("assistant", "beta text"),
                     ("you", "(transcription failed: too quiet)")]
    assert t.partial == {}


def test_server_text_is_shown_escaped_never_interpreted() -> None:
    from rich.console import Console

    t = Transcripts()
    t.event({"type": "response.output_text.delta", "item_id": "a", "delta": HOSTILE})
    t.event({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u",
             "transcript": HOSTILE + "[bold]x[/bold]"})
    assert t.lines[0][2] == "\\x1b[2J\\x1b]0;pwned\\x07evil\\u202e[bold]x[/bold]"
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=False, color_system=None)
    session: Any = type("S", (), {"status": "active", "state": "active", "attempts": 0})()
    view = HumanView(console, session, t, Activity(), 0.0)
    view.print_line(*t.lines[0])
    console.print(view.render())
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text
    assert "you: \\x1b[2J" in text and "[bold]x[/bold]" in text  # not rich markup either
    assert "assistant: \\x1b[2J\\x1b]0;pwned\\x07evil\\u202e …" in text


def test_activity_tracks_who_speaks_session_age_and_rollover() -> None:
    a = Activity(margin=30.0)
    assert a.speaking == "nobody" and a.rollover_in() is None
    a.event({"type": "session.created", "session": {"expires_at": 4_000_000_000}})
    a.event({"type": "input_audio_buffer.speech_started"})
    a.event({"type": "output_audio_buffer.started"})
    assert a.speaking == "you + assistant" and a.session_since is not None
    rollover = a.rollover_in()
    assert rollover is not None and rollover > 0
    a.event({"type": "session.updated", "session": {"expires_at": 4_000_000_100}})
    assert a.rollover_in() == pytest.approx(rollover + 100, abs=1)
    a.event({"type": "input_audio_buffer.speech_stopped"})
    a.event({"type": "response.done"})
    assert a.speaking == "assistant" and a.responses == 1
    a.link_down()
    assert a.speaking == "nobody"


def test_line_editor() -> None:
    ed = LineEditor()
    assert ed.feed(b"hel") == [] and ed.buffer == "hel"
    assert ed.feed(b"x\x7f\x1b[Dlo w\xc3") == [] and ed.buffer == "hello w"  # arrow ignored
    assert ed.feed(b"\xa4rld\r") == ["hello wärld"] and ed.buffer == ""
    assert ed.feed(b"junk\x15ok\n\x04") == ["ok", None]
    assert ed.feed(b"a\x04\x01") == [] and ed.buffer == "a"  # Ctrl-D on a non-empty line


# ------------------------------------------------------------------------------- audio


@pytest.mark.anyio
async def test_wav_input_continues_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "ramp.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(array.array("h", range(-8 * FRAME_SAMPLES, 8 * FRAME_SAMPLES)).tobytes())
    source = WavInput(path)
    sent: list[av.AudioFrame] = []
    source.tap = sent.append
    first = source.track()
    for _ in range(5):
        await first.recv()
    first.stop()
    second = source.track()  # the next connection: goes on, does not start over
    for _ in range(13):
        await second.recv()
    second.stop()
    samples = [array.array("h", bytes(f.planes[0])[: 2 * f.samples]) for f in sent]
    assert samples[5][0] == -8 * FRAME_SAMPLES + 5 * FRAME_SAMPLES
    assert list(samples[15]) == list(range(7 * FRAME_SAMPLES, 8 * FRAME_SAMPLES))
    assert not any(samples[16]) and source.finished


@pytest.mark.anyio
async def test_ffmpeg_device_input_and_output(tmp_path: Path) -> None:
    """The device paths, with FFmpeg's test source (lavfi) and a muxer instead of hardware."""
    source = DeviceInput("lavfi:sine=frequency=440:sample_rate=48000")
    sink = DeviceOutput(f"wav:{tmp_path / 'played.wav'}")
    track = source.track()
    try:
        levels = []
        for _ in range(200):
            f = await track.recv()
            assert isinstance(f, av.AudioFrame)
            await sink.write(f)
            levels.append(rms_dbfs(bytes(f.planes[0])[: 2 * f.samples]))
    finally:
        track.stop()
        source.close()
        sink.close()
    voiced = [lv for lv in levels if lv > -100]  # the first frames may beat the reader thread
    assert len(voiced) > 150
    assert all(abs(lv - 20 * math.log10(0.125 / math.sqrt(2))) < 1.0 for lv in voiced[1:])
    with wave.open(str(tmp_path / "played.wav")) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnframes() == 200 * FRAME_SAMPLES


def test_missing_device_is_one_typed_line_and_nothing_on_stderr(
    capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AudioDeviceError) as err:
        open_output("alsa:fsm_voice_no_such_device")
    assert "\n" not in str(err.value) and "alsa:fsm_voice_no_such_device" in str(err.value)
    assert capfd.readouterr().err == ""  # ALSA's own complaints are folded into the message


def test_device_spec() -> None:
    assert device_spec("alsa:default") == ("alsa", "default")
    assert device_spec("lavfi:sine=f=1:d=2") == ("lavfi", "sine=f=1:d=2")
    assert device_spec("speech.wav") is None and device_spec("/tmp/a:b.wav") is None
    assert device_spec("alsa:") is None


def test_recorder_puts_both_sides_on_one_time_line(tmp_path: Path) -> None:
    now = [100.0]
    rec = ConversationRecorder(tmp_path / "both.wav", clock=lambda: now[0])
    for _ in range(50):  # 1 s said, from t=0
        now[0] += 0.02
        rec.sent(tone_frame())
    now[0] += 1.0  # 1 s of nothing on either side
    for _ in range(50):  # then 1 s of reply, from t=2
        now[0] += 0.02
        rec.received(tone_frame(4000))
    rec.close()
    with wave.open(str(tmp_path / "both.wav")) as w:
        assert w.getnchannels() == 2
        data = array.array("h", w.readframes(w.getnframes()))
    left, right = data[0::2], data[1::2]

    def voiced(samples: array.array[int]) -> list[int]:
        return [i for i in range(0, len(samples), FRAME_SAMPLES) if any(samples[i:i + 960])]

    assert voiced(left) == list(range(0, 50 * FRAME_SAMPLES, FRAME_SAMPLES))
    # a frame is placed to end when it arrived: the reply's first one arrived at t0 + 2.0 s
    assert voiced(right) == list(range(99 * FRAME_SAMPLES, 149 * FRAME_SAMPLES, FRAME_SAMPLES))
    assert rec.voiced == [50 * FRAME_SAMPLES, 50 * FRAME_SAMPLES]


@pytest.mark.anyio
async def test_typed_lines_from_a_pipe_a_file_and_dev_null(tmp_path: Path) -> None:
    got: list[str] = []
    read, write = os.pipe()
    try:
        os.write(write, "first\n  \nsecond wörd\nno newline".encode())
        os.close(write)
        with anyio.fail_after(10):
            await TextInput(got.append, fd=read).run()
    finally:
        os.close(read)
    assert got == ["first", "second wörd", "no newline"]
    (tmp_path / "msgs.txt").write_text("from a file\n")
    for path in (tmp_path / "msgs.txt", Path(os.devnull)):
        fd = os.open(path, os.O_RDONLY)
        try:
            with anyio.fail_after(10):
                await TextInput(got.append, fd=fd).run()
        finally:
            os.close(fd)
    assert got[3:] == ["from a file"]


def test_a_cancelled_reply_keeps_its_words_marked_interrupted() -> None:
    t = Transcripts()
    a = Activity()
    for e in ({"type": "response.created", "response": {"id": "r1"}},
              {"type": "output_audio_buffer.started", "response_id": "r1"},
              {"type": "response.output_audio_transcript.delta", "response_id": "r1",
               "item_id": "a", "content_index": 0, "delta": "Once upon"}):
        t.event(e)
        a.event(e)
    assert a.response_active and a.assistant_speaking
    done = {"type": "response.done", "response": {"id": "r1", "status": "cancelled"}}
    t.event(done)
    a.event(done)
    assert [line[1:] for line in t.lines] == [("assistant", "Once upon … (interrupted)")]
    assert t.partial == {} and not a.response_active
    assert a.responses == 0  # --responses N counts replies that played out, not cut ones
    a.event({"type": "response.done", "response": {"id": "r2", "status": "completed"}})
    assert a.responses == 1
