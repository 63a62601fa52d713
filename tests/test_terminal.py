"""``fsm-voice connect`` as a person uses it: an espeak-ng sentence spoken through the installed
command against ``fsm-voice peer`` (both subprocesses on 127.0.0.1); the reply audio measured
with sox; the human view read from a pseudo-terminal; ``--json`` unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.test_cli import FSM_VOICE, TOKEN, connect, control, finish, peer, start

__all__ = ["peer"]  # the fixture, shared with test_cli

pytestmark = pytest.mark.anyio

SENTENCE = "hello there how are you today"  # six words, spoken with clear gaps (-g 15)
BOUND = 120.0  # generous bound on a loaded 2-core machine, not a speed claim
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([_need("espeak-ng"), "-g", "15", "-w", str(wav), SENTENCE], check=True)
    return wav


def _seconds(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True,
                                text=True).stdout)


def sound_span(path: Path, channel: int | None = None) -> tuple[float, float]:
    """(onset, end) in seconds of the audible part (above 1 % of full scale), by sox."""
    sox = _need("sox")
    work = path.with_suffix(f".ch{channel}.wav")
    subprocess.run([sox, str(path), str(work), *(["remix", str(channel)] if channel else [])],
                   check=True)
    total = _seconds(work)
    spans = []
    for effect in (["silence", "1", "0.02", "1%"],
                   ["reverse", "silence", "1", "0.02", "1%", "reverse"]):
        trimmed = work.with_suffix(".trim.wav")
        subprocess.run([sox, str(work), str(trimmed), *effect], check=True)
        spans.append(total - _seconds(trimmed))
        trimmed.unlink()
    work.unlink()
    return spans[0], total - spans[1]


def rms(path: Path) -> float:
    out = subprocess.run([_need("sox"), str(path), "-n", "stat"], capture_output=True,
                         text=True, check=True).stderr
    return float(re.search(r"RMS\s+amplitude:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


# ---------------------------------------------------------------------- the audio path


async def test_speech_in_reply_out_recorded_and_json_lines_unchanged(
    peer: str, speech: Path, tmp_path: Path
) -> None:
    reply, both = tmp_path / "reply.wav", tmp_path / "both.wav"
    proc = await start(*connect(peer, "--input", str(speech), "--output", str(reply),
                                "--record", str(both), "--responses", "1",
                                "--duration", str(BOUND)), env=TOKEN)
    out, err = await finish(proc, timeout=BOUND + 30)
    assert proc.returncode == 0, (out, err)
    assert not err.strip(), err
    # --json (the default off a terminal): today's lines, nothing else
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert all(set(x) == {"t", "status", "state", "event"} for x in lines[:-1]), lines
    assert lines[-1] == {"stopped": "responses", "status": "idle"}
    statuses = [x["status"] for x in lines[:-1]]
    assert statuses[:2] == ["connecting", "active"] and statuses[-1] == "idle", statuses
    assert "listening" in statuses and "speaking" in statuses, statuses  # heard, then answered
    # the peer heard the words and answered once
    (call,) = (await control(peer, "calls"))["calls"]
    assert call["responses_completed"] == 1 and call["close_reason"] == "hangup", call
    # the reply (the peer echoes the utterance it heard) is in --output, as long as the speech
    said_on, said_off = sound_span(speech)
    reply_on, reply_off = sound_span(reply)
    assert abs((reply_off - reply_on) - (said_off - said_on)) < 0.5, (
        (reply_on, reply_off), (said_on, said_off))
    assert rms(reply) > 0.01
    # --record: left what we said, right what came back, after it, on one time line
    left_on, left_off = sound_span(both, 1)
    right_on, right_off = sound_span(both, 2)
    assert abs((left_off - left_on) - (said_off - said_on)) < 0.1, (left_on, left_off)
    assert left_off < right_on, ((left_on, left_off), (right_on, right_off))
    assert abs((right_off - right_on) - (reply_off - reply_on)) < 0.2


# ------------------------------------------------------------------------ pseudo-terminal


class Pty:
    """A child process on a pseudo-terminal (``cols`` x ``rows``); ``screen`` is everything it
    wrote, escape sequences removed."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc, self.master = proc, master
        self.raw = bytearray()
        self.closed = anyio.Event()
        self.changed = anyio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def spawn(cls, *argv: str, env: dict[str, str], cols: int = 120,
                    rows: int = 40) -> Pty:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        proc = await asyncio.create_subprocess_exec(
            FSM_VOICE, *argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), **env})
        os.close(slave)
        return cls(proc, master)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self.closed.set()
        self.raw += data
        self.changed.set()

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    async def wait_for(self, pattern: str) -> re.Match[str]:
        with anyio.fail_after(BOUND):
            while (m := re.search(pattern, self.screen)) is None:
                assert not self.closed.is_set(), f"exited before {pattern!r}:\n{self.screen}"
                self.changed = anyio.Event()
                await self.changed.wait()
        return m

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def exit_code(self) -> int:
        with anyio.fail_after(BOUND):
            await self.closed.wait()
            return await self.proc.wait()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.returncode is None:
            self.proc.kill()
        os.close(self.master)


@contextlib.contextmanager
def closing(pty: Pty) -> Iterator[Pty]:
    try:
        yield pty
    finally:
        pty.close()


async def test_terminal_shows_transcripts_status_line_typed_text_and_summary(
    peer: str, speech: Path, tmp_path: Path
) -> None:
    pty = await Pty.spawn(*connect(peer, "--input", str(speech), "--responses", "2",
                                   "--output", str(tmp_path / "reply.wav")), env=TOKEN)
    with closing(pty):
        # the words as they arrive: the peer's stand-in for recognition is a word count
        heard = await pty.wait_for(r"you: \((\d+) words, ([\d.]+) s\)")
        assert heard.group(1) == "6", pty.screen
        await pty.wait_for(r"\ds  assistant: I heard 6 words\.")  # done, not partial
        pty.type("hello there peer")
        await pty.wait_for(r"> hello there peer")  # the line being typed, in the status area
        pty.type("\r")
        await pty.wait_for(r"you \(typed\): hello there peer")
        await pty.wait_for(r"\ds  assistant: You wrote 3 words\.")
        code = await pty.exit_code()
        screen = pty.screen
    assert code == 0, screen
    # status changes interleaved with the words, in order
    order = [screen.index(s) for s in ("status connecting", "status active", "you: (6 words",
                                       "status speaking", "assistant: I heard 6 words.",
                                       "you (typed): hello there peer",
                                       "assistant: You wrote 3 words.", "status idle")]
    assert order == sorted(order), screen
    # the live status line: status, state, attempt, quality, who speaks, age, rollover
    status_line = re.compile(
        r"(active|listening|speaking) +state=\w+ attempt=0 rtt=([\d]+ms|-) "
        r"jitter=([\d.]+ms|-) loss=(\d+%|-) speaking=(you|assistant|nobody) age=\d+:\d\d "
        r"rollover=(\d+:)?\d+:\d\d")
    assert status_line.search(screen), screen
    assert "speaking=assistant" in screen and re.search(r"rtt=\d+ms", screen), screen
    assert "fsm-voice connect summary" in screen and "responses; cleanly (idle): True" in screen
    assert "{" not in screen.split("fsm-voice connect summary")[0], screen  # no JSON lines
    assert "Traceback" not in screen


async def test_typing_interrupts_the_assistant_and_quit_ends_the_call(
    peer: str, tmp_path: Path
) -> None:
    long = tmp_path / "long.wav"  # twelve words: a reply long enough to talk over
    subprocess.run([_need("espeak-ng"), "-g", "15", "-w", str(long), f"{SENTENCE} {SENTENCE}"],
                   check=True)
    pty = await Pty.spawn(*connect(peer, "--input", str(long)), env=TOKEN)
    with closing(pty):
        await pty.wait_for(r"you: \(12 words")
        await pty.wait_for(r"  assistant: I")  # the reply has begun: its first words
        pty.type("stop please\r")
        await pty.wait_for(r"\ds  assistant: I[^\n]*… \(interrupted\)")
        await pty.wait_for(r"\ds  assistant: You wrote 2 words\.")
        pty.type("/quit\r")
        code = await pty.exit_code()
        screen = pty.screen
    assert code == 0, screen
    assert not re.search(r"\ds  assistant: I heard 12 words\.(?! …)", screen), screen  # cut
    assert "quit; cleanly (idle): True" in screen, screen
    (call,) = (await control(peer, "calls"))["calls"]
    assert call["responses_cancelled"] == 1 and call["responses_completed"] == 1, call
    assert call["events_received"].get("response.cancel") == 1, call


async def test_json_flag_on_a_terminal_keeps_the_json_lines(peer: str) -> None:
    pty = await Pty.spawn(*connect(peer, "--json", "--duration", "3", "--turn-detection", "none"),
                          env=TOKEN)
    with closing(pty):
        code = await pty.exit_code()
        screen = pty.screen
    assert code == 0, screen
    lines = [json.loads(ln) for ln in screen.splitlines() if ln.strip()]
    assert all(set(x) == {"t", "status", "state", "event"} for x in lines[:-1]), lines
    assert [x["status"] for x in lines[:2]] == ["connecting", "active"]
    assert lines[-1] == {"stopped": "duration", "status": "idle"}


# --------------------------------------------------------------------- one-line mistakes


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "alsa:fsm_voice_no_such_device"],
     "cannot open audio input 'alsa:fsm_voice_no_such_device': "),
    (["--output", "alsa:fsm_voice_no_such_device"],
     "cannot open audio output 'alsa:fsm_voice_no_such_device': "),
    (["--input", "nosuchformat:default"],
     "audio input 'nosuchformat:default': this FFmpeg build has no 'nosuchformat' support"),
    (["--input", "/nonexistent-dir/speech.wav"], "audio file not found"),
    (["--record", "/nonexistent-dir/both.wav"], "cannot create WAV file"),
    (["--responses", "0"], "--responses must be at least 1"),
])
async def test_bad_audio_ends_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = await start(*connect("http://127.0.0.1:9", *args), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fsm-voice connect: {message}"), err
    assert not out


async def test_sigint_on_a_terminal_stops_cleanly_and_restores_the_terminal(peer: str) -> None:
    pty = await Pty.spawn(*connect(peer, "--duration", "inf"), env=TOKEN)
    with closing(pty):
        before = termios.tcgetattr(pty.master)
        await pty.wait_for(r"status active")
        await pty.wait_for(r"> ▏")  # typing enabled: the terminal is in cbreak mode now
        typing = termios.tcgetattr(pty.master)
        pty.proc.send_signal(signal.SIGINT)
        code = await pty.exit_code()
        after = termios.tcgetattr(pty.master)
        screen = pty.screen
    assert code == 130, screen
    assert not typing[3] & (termios.ECHO | termios.ICANON)
    assert after[3] == before[3], "terminal modes not restored"
    assert "SIGINT; cleanly (idle): True" in screen and "Traceback" not in screen, screen
    calls = (await control(peer, "calls"))["calls"]
    assert [c["close_reason"] for c in calls] == ["hangup"]


@pytest.mark.parametrize("flag", ["--output", "--record"])
async def test_connect_refuses_to_overwrite_its_input_wav(tmp_path: Path, flag: str) -> None:
    import wave

    q = tmp_path / "q.wav"
    with wave.open(str(q), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(b"\x01\x00" * 2400)
    before = q.read_bytes()
    proc = await start(*connect("http://127.0.0.1:9", "--input", str(q), flag,
                                str(tmp_path / "." / "q.wav")), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--input and {flag} are the same file" in err
    assert q.read_bytes() == before
