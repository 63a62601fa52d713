"""``fsm-voice`` as a user runs it: the installed command in a subprocess, against
``fsm-voice peer`` (also a subprocess) on 127.0.0.1. Exit statuses, signals, user mistakes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from fsm_voice.cli import EXIT_CODES
from fsm_voice.peer.control import CONTROL_TOKEN_HEADER

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FSM_VOICE = str(Path(sys.executable).parent / "fsm-voice")
SLOW_START = 30.0  # generous bound for a subprocess to come up on a loaded 2-core machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def start(*argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        FSM_VOICE, *argv, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> tuple[str, str]:
    """Wait for the exit (a bound against hanging, not a speed claim); stdout, stderr."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"no exit within {timeout:.0f} s; stdout {out.decode()!r}, stderr {err.decode()!r}"
        ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(), err.decode()


async def lines_until(
    proc: asyncio.subprocess.Process, done: Callable[[str], bool]
) -> list[str]:
    """stdout lines up to the first one ``done`` accepts."""
    assert proc.stdout is not None
    seen: list[str] = []
    with anyio.fail_after(SLOW_START):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"exited early ({await finish(proc)}); stdout so far: {seen}"
            seen.append(line)
            if done(line):
                return seen


def status_is(*statuses: str) -> Callable[[str], bool]:
    return lambda line: json.loads(line).get("status") in statuses


@pytest.fixture
async def peer() -> AsyncIterator[str]:
    """``fsm-voice peer --port 0``; its base URL. Stopped by SIGTERM: exit 0, no traceback."""
    proc = await start("peer", "--port", "0")
    try:
        line = (await lines_until(proc, lambda s: "listening on" in s))[-1]
        base = re.findall(r"http://[\d.:]+", line)[0]
        _CONTROL_TOKENS[base] = line.rsplit(f"{CONTROL_TOKEN_HEADER}: ", 1)[1].rstrip(")\n")
        yield base
        proc.send_signal(signal.SIGTERM)
        _, err = await finish(proc)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


_CONTROL_TOKENS: dict[str, str] = {}
"""The control token each ``fsm-voice peer`` printed, by base URL."""


async def control(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {CONTROL_TOKEN_HEADER: _CONTROL_TOKENS[base]}
    async with aiohttp.ClientSession(headers=headers) as http:
        if body is None:
            async with http.get(f"{base}/control/{path}") as r:
                return await r.json()
        async with http.post(f"{base}/control/{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()


def connect(base: str, *args: str) -> list[str]:
    return ["connect", "--base-url", base, *args]


TOKEN = {"FSM_VOICE_TOKEN": "ek_cli_test"}


# ---------------------------------------------------------------------------- connect


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_connect_stops_cleanly_on_signal(peer: str, signum: signal.Signals) -> None:
    proc = await start(*connect(peer, "--duration", "inf"), env=TOKEN)
    await lines_until(proc, status_is("active", "listening", "speaking"))
    proc.send_signal(signum)
    out, err = await finish(proc)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and not err.strip(), err
    assert json.loads(out.strip().splitlines()[-1]) == {"stopped": signum.name, "status": "idle"}
    calls = (await control(peer, "calls"))["calls"]
    assert [c["close_reason"] for c in calls] == ["hangup"]  # the server saw the call end


async def test_connect_exits_at_once_on_error(peer: str) -> None:
    proc = await start(*connect(peer, "--duration", "3600"), env=TOKEN)
    await lines_until(proc, status_is("active", "listening", "speaking"))
    sent = await control(peer, "send_error", {"type": "invalid_request_error",
                                              "code": "invalid_api_key", "message": "bad key"})
    assert sent == {"sent": 1}
    out, err = await finish(proc, timeout=60)  # not the 3600 s --duration
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "fsm-voice connect: the session ended in error: "
        "[fatal] invalid_api_key (server): bad key"), err
    statuses = [json.loads(ln).get("status") for ln in out.splitlines()]
    assert "error" in statuses and statuses[-1] == "idle", out
    assert json.loads(out.splitlines()[-1]) == {"stopped": "error", "status": "idle"}


async def test_connect_exits_0_after_a_clean_duration(peer: str) -> None:
    proc = await start(*connect(peer, "--duration", "4", "--turn-detection", "none"), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert json.loads(out.splitlines()[-1]) == {"stopped": "duration", "status": "idle"}
    calls = (await control(peer, "calls"))["calls"]
    assert [c["close_reason"] for c in calls] == ["hangup"]


async def test_connect_exits_3_when_not_connected_at_the_end(peer: str) -> None:
    await control(peer, "delay_answers", {"seconds": 20})
    proc = await start(*connect(peer, "--duration", "1"), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 3, (out, err)
    assert "Traceback" not in err
    assert json.loads(out.splitlines()[-1]) == {"stopped": "duration", "status": "idle"}


# ------------------------------------------------------------------ servers and the demo


def _broker_env(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    digest = "sha256:" + "0" * 64
    argv = ["broker", "--port", "0", "--client", f"app={digest}",
            "--audit-db", str(tmp_path / "audit.sqlite3")]
    return argv, {"OPENAI_API_KEY": "sk-cli-test"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["peer", "broker"])
async def test_servers_stop_with_0_on_signal(
    command: str, signum: signal.Signals, tmp_path: Path
) -> None:
    argv, env = _broker_env(tmp_path) if command == "broker" else (["peer", "--port", "0"], {})
    proc = await start(*argv, env=env)
    await lines_until(proc, lambda s: "listening on" in s)
    proc.send_signal(signum)
    _, err = await finish(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err


async def test_server_that_cannot_listen_says_so_in_one_line(peer: str) -> None:
    taken = peer.rsplit(":", 1)[1]
    proc = await start("peer", "--port", taken)
    out, err = await finish(proc)
    assert proc.returncode == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and "cannot listen" in err, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_demo_stops_cleanly_on_signal(signum: signal.Signals) -> None:
    proc = await start("demo", "--duration", "60")
    await lines_until(proc, lambda s: "local peer on" in s)
    proc.send_signal(signum)
    out, err = await finish(proc)
    assert proc.returncode == 128 + signum, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert f"\nfsm-voice demo: stopped by {signum.name}; session idle" in out, out


# ------------------------------------------------------------------------ user mistakes


MISTAKES = [
    connect("nope"),
    connect("http://127.0.0.1:9", "--duration", "-1"),
    connect("http://127.0.0.1:9", "--duration", "nan"),
    connect("http://127.0.0.1:9", "--duration", "0"),
    connect("ftp://127.0.0.1:9"),
    connect("http://127.0.0.1:9", "--token-url", "http://127.0.0.1:9/t"),  # no --client-id
    ["peer", "--host", "bad"],
    ["peer", "--host", "10.0.0.1"],
    ["peer", "--port", "70000"],
    ["broker", "--host", "bad"],
    ["broker", "--audit-db", "/nonexistent-dir/audit.sqlite3"],
    ["demo", "--duration", "inf"],
    ["demo", "--record", "/nonexistent-dir/out.wav"],
    ["diagram", "--root", "/nonexistent-dir"],
    ["check", "--show", "-1"],
    ["no-such-command"],
    [],
]


@pytest.mark.parametrize("argv", MISTAKES, ids=lambda a: " ".join(a) or "(none)")
async def test_user_mistake_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    env = {"FSM_VOICE_TOKEN": "ek_x", "FSM_VOICE_CLIENT_SECRET": "s"}
    if argv[:1] == ["broker"]:
        argv = [*argv, "--port", "0", "--client", "app=sha256:" + "0" * 64]
        if "--audit-db" not in argv:
            argv += ["--audit-db", str(tmp_path / "audit.sqlite3")]
        env["OPENAI_API_KEY"] = "sk-cli-test"
    proc = await start(*argv, env=env)
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fsm-voice"), err
    assert not out


async def test_exit_codes_are_documented_in_help_and_readme() -> None:
    proc = await start("connect", "--help")
    out, _ = await finish(proc)
    assert proc.returncode == 0
    codes = re.findall(r"^  (\d+) ", EXIT_CODES, re.M)
    assert codes == ["0", "1", "2", "3", "130", "141", "143"]
    readme = (ROOT / "README.md").read_text()
    for code in codes:
        assert re.search(rf"^  {code} ", out, re.M), f"--help lacks exit status {code}"
        assert re.search(rf"^\| {code} \|", readme, re.M), f"README lacks exit status {code}"


async def test_connect_stops_cleanly_when_its_reader_goes_away(peer: str) -> None:
    script = (f'"{FSM_VOICE}" connect --base-url {peer} --duration inf | head -n 2; '
              'echo "exit=${PIPESTATUS[0]}" >&2')
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, env={**os.environ, **TOKEN},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await finish(proc)
    assert len(out.splitlines()) == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "exit=141", err
    calls = (await control(peer, "calls"))["calls"]
    assert [c["close_reason"] for c in calls] == ["hangup"]


@pytest.mark.parametrize("url", [
    "http://alice:QPASSWORD@127.0.0.1:8799/?api_key=QSECRET",
    "http://127.0.0.1:8799/?api_key=QSECRET",
    "http://127.0.0.1:8799/#QSECRET",
    "ftp://alice:QPASSWORD@127.0.0.1:8799/",
    "http://alice:QPASSWORD@127.0.0.1:notaport/",
])
async def test_a_refused_base_url_never_echoes_its_credentials_or_query(url: str) -> None:
    proc = await start(*connect(url), env={"FSM_VOICE_TOKEN": "ek_x"})
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert "<redacted>" in err and len(err.strip().splitlines()) == 1, err
    assert "QSECRET" not in out + err and "QPASSWORD" not in out + err


async def test_connect_json_shows_retried_signaling_failures(peer: str) -> None:
    await control(peer, "reject_offers", {"count": 1, "status": 503, "retry_after": 1})
    await control(peer, "reject_offers", {"count": 1, "status": 429, "retry_after": 1})
    proc = await start(*connect(peer, "--duration", "8", "--turn-detection", "none"), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 0, (out, err)
    lines = [json.loads(ln) for ln in out.splitlines()]
    errors = [x for x in lines if "error" in x]
    assert len(errors) == 2, lines
    assert all(x["severity"] and x["code"] and x["retrying"] for x in errors), errors
    assert "active" in [x.get("status") for x in lines]
