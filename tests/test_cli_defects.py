"""``fsm-voice`` defects an outside tester found, each pinned as a subprocess test: garbled HTTP
answers, ``diagram``/``check`` root and path mistakes, header-unsafe secrets, repeated stop
signals, SIGTERM with a live call."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from fsm_voice.broker import TOKEN_PATH
from tests.test_cli import (
    ROOT,
    TOKEN,
    _broker_env,
    anyio_backend,
    connect,
    control,
    finish,
    lines_until,
    peer,
    start,
    status_is,
)

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "peer"]

# ------------------------------------------------------------- 1: garbled HTTP answers

GARBAGE = {
    "status line": b"\x00\x01garbage\xff\r\n\r\n",
    "chunk size": (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                   b"Content-Type: application/sdp\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
}


async def garbage_server(answer: bytes) -> tuple[asyncio.Server, list[int]]:
    """A loopback server answering every request with ``answer``; the list counts requests."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            seen.append(1)
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


@pytest.mark.parametrize("where", ["calls", "token-url"])
@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbled_http_answer_is_a_transient_one_line_error(
    where: str, garbage: bytes
) -> None:
    server, seen = await garbage_server(garbage)
    async with server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        argv = connect(url, "--duration", "2")
        env = dict(TOKEN)
        if where == "token-url":
            argv += ["--token-url", f"{url}/token", "--client-id", "app"]
            env = {"FSM_VOICE_CLIENT_SECRET": "a-client-secret-0123456789"}
        proc = await start(*argv, env=env)
        out, err = await finish(proc)
    assert proc.returncode == 3, (out, err)  # never connected, but not an `error` ending
    statuses = [json.loads(ln).get("status") for ln in out.splitlines()]
    assert "reconnecting" in statuses and "error" not in statuses, out
    assert seen, "the server never saw a request"
    assert "[transient] bad_response (network)" in err and "http_bad_request" not in err, err
    for line in err.splitlines():  # one line per message: no caret dump
        assert line.startswith("fsm-voice connect: "), err
    assert "Traceback" not in err


# ------------------------------------------------------------------ 3: diagram and check


def project_copy(tmp_path: Path) -> Path:
    """A minimal project root: pyproject.toml and specs/connection.md."""
    root = tmp_path / "proj"
    (root / "specs").mkdir(parents=True)
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (root / "specs" / "connection.md").write_text((ROOT / "specs" / "connection.md").read_text())
    return root


async def run_cli(*argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "fsm-voice"), *argv, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await finish(proc)
    assert proc.returncode is not None
    return proc.returncode, out, err


def one_line_usage_error(code: int, err: str, command: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fsm-voice {command}: "), err


async def test_diagram_where_a_file_blocks_a_directory_is_one_line(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    (root / "diagrams").write_text("not a directory")
    code, _, err = await run_cli("diagram", "--root", str(root))
    one_line_usage_error(code, err, "diagram")
    assert "diagrams" in err


async def test_diagram_where_a_directory_blocks_a_file_is_one_line(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    (root / "specs" / "lifecycle.pml").mkdir()
    code, _, err = await run_cli("diagram", "--root", str(root))
    one_line_usage_error(code, err, "diagram")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
async def test_diagram_into_a_read_only_root_is_one_line(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    for d in (root / "specs", root):
        d.chmod(0o555)
    try:
        code, _, err = await run_cli("diagram", "--root", str(root))
    finally:
        for d in (root, root / "specs"):
            d.chmod(0o755)
    one_line_usage_error(code, err, "diagram")


@pytest.mark.parametrize("check", [[], ["--check"]], ids=["write", "check"])
async def test_diagram_outside_a_project_writes_nothing(check: list[str], tmp_path: Path) -> None:
    code, out, err = await run_cli("diagram", *check, cwd=tmp_path)
    one_line_usage_error(code, err, "diagram")
    assert "not a project root" in err and not out
    assert list(tmp_path.iterdir()) == []  # no diagrams/, no specs/


async def test_diagram_root_under_proc_is_one_line() -> None:
    code, _, err = await run_cli("diagram", "--root", "/proc/1")
    one_line_usage_error(code, err, "diagram")


async def test_diagram_in_a_project_copy_still_writes(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    code, out, err = await run_cli("diagram", "--root", str(root))
    assert code == 0, err
    assert (root / "diagrams" / "lifecycle.mmd").is_file() and "wrote" in out
    code, _, err = await run_cli("diagram", "--check", "--root", str(root))
    assert code == 0, err


async def test_check_with_a_missing_spec_is_a_usage_error(tmp_path: Path) -> None:
    code, out, err = await run_cli("check", "--no-spin", "--spec", str(tmp_path / "none.md"))
    one_line_usage_error(code, err, "check")
    assert not out  # refused before exploring


# ----------------------------------------------------- 5: header-unsafe secrets and ids


UNSAFE = {
    "token with CRLF": (["--token-env", "FSM_VOICE_TOKEN"], {"FSM_VOICE_TOKEN": "ek_a\r\nX: 1"}),
    "token with a space": ([], {"FSM_VOICE_TOKEN": "ek_a b"}),
    "client id with LF": (["--token-url", "http://127.0.0.1:9/t", "--client-id", "bad\nid"],
                          {"FSM_VOICE_CLIENT_SECRET": "a-client-secret-0123456789"}),
}


@pytest.mark.parametrize("case", UNSAFE.values(), ids=UNSAFE.keys())
async def test_header_unsafe_configuration_is_a_usage_error(
    case: tuple[list[str], dict[str, str]],
) -> None:
    argv, env = case
    proc = await start(*connect("http://127.0.0.1:9", "--duration", "1", *argv), env=env)
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fsm-voice connect: ") and not out, (out, err)


# ------------------------------------------------------------- 6: repeated stop signals


async def keep_signalling(proc: asyncio.subprocess.Process, signum: int) -> None:
    """Send ``signum`` over and over until ``proc`` has exited (every phase of its clean-up
    gets one, whatever its speed). Through a pidfd: ``Popen.send_signal`` polls, and a poll
    that reaps the child races asyncio's watcher (which then reports 255)."""
    fd = os.pidfd_open(proc.pid)
    try:
        while proc.returncode is None:
            try:
                signal.pidfd_send_signal(fd, signum)
            except ProcessLookupError:  # exited (a zombie until reaped)
                return
            await asyncio.sleep(0.01)
    finally:
        os.close(fd)


PAIRS = [(signal.SIGTERM, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT),
         (signal.SIGINT, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)]


@pytest.mark.parametrize("command", ["peer", "broker"])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].name}+{p[1].name}")
async def test_servers_absorb_later_signals(
    command: str, pair: tuple[signal.Signals, signal.Signals], tmp_path: Path
) -> None:
    argv, env = _broker_env(tmp_path) if command == "broker" else (["peer", "--port", "0"], {})
    proc = await start(*argv, env=env)
    await lines_until(proc, lambda s: "listening on" in s)
    proc.send_signal(pair[0])
    pest = asyncio.ensure_future(keep_signalling(proc, pair[1]))
    _, err = await finish(proc)
    await pest
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].name}+{p[1].name}")
async def test_connect_exit_follows_the_first_signal(
    peer: str, pair: tuple[signal.Signals, signal.Signals]
) -> None:
    proc = await start(*connect(peer, "--duration", "inf"), env=TOKEN)
    await lines_until(proc, status_is("active", "listening", "speaking"))
    proc.send_signal(pair[0])
    pest = asyncio.ensure_future(keep_signalling(proc, pair[1]))
    out, err = await finish(proc)
    await pest
    # Both may be pending together (the kernel then delivers the lower number first): the
    # one reported as the stop reason is the first the process saw, and the exit code follows it.
    last = json.loads(out.strip().splitlines()[-1])
    assert last["status"] == "idle" and last["stopped"] in (pair[0].name, pair[1].name), out
    assert proc.returncode == 128 + signal.Signals[last["stopped"]], (proc.returncode, out, err)
    assert not err.strip(), err
    calls = (await control(peer, "calls"))["calls"]
    assert [c["close_reason"] for c in calls] == ["hangup"]



# ------------------------------------------------------ 4: SIGTERM with a live call


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_peer_stopped_with_a_live_call_closes_it_cleanly(signum: signal.Signals) -> None:
    server = await start("peer", "--port", "0")
    client = None
    try:
        line = (await lines_until(server, lambda s: "listening on" in s))[-1]
        base = line.split("listening on ", 1)[1].split()[0]
        client = await start(*connect(base, "--duration", "inf"), env=TOKEN)
        await lines_until(client, status_is("active", "listening", "speaking"))
        server.send_signal(signum)
        _, err = await finish(server)
        assert server.returncode == 0, err
        assert not err.strip(), err  # no "Task was destroyed but it is pending!"
    finally:
        for proc in (server, client):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


# ---------------------------------------------------------------------- 7: cosmetics


async def test_broker_401_hint_reaches_the_client_ungarbled(tmp_path: Path) -> None:
    argv, env = _broker_env(tmp_path)
    broker = await start(*argv, env=env)
    try:
        line = (await lines_until(broker, lambda s: "listening on" in s))[-1]
        base = line.split("listening on ", 1)[1].split()[0].rstrip(",;")
        proc = await start(*connect("http://127.0.0.1:9", "--duration", "10",
                                    "--token-url", f"{base}{TOKEN_PATH}", "--client-id", "app"),
                           env={"FSM_VOICE_CLIENT_SECRET": "a-wrong-secret-0123456789"})
        out, err = await finish(proc)
    finally:
        broker.send_signal(signal.SIGTERM)
        await finish(broker)
    assert proc.returncode == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert "Bearer <client secret>" in last and "HTTP Basic auth" in last, last
    assert "a-wrong-secret" not in err + out


async def test_https_to_a_plain_http_port_is_a_tls_error(peer: str) -> None:
    https = peer.replace("http://", "https://")
    proc = await start(*connect(https, "--duration", "1"), env=TOKEN)
    out, err = await finish(proc)
    assert proc.returncode == 3, (out, err)
    assert "[transient] tls_error (network)" in err and "eperm" not in err, err


INTERRUPT_DURING_IMPORT = """
import os, signal, sys
# as from a terminal: a shell starting a job in the background (``cmd &``, e.g. a CI script)
# leaves SIGINT ignored, and that is inherited
signal.signal(signal.SIGINT, signal.default_int_handler)
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "anyio":  # imported by fsm_voice.cli, not by the entry point
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
from fsm_voice._entry import main
sys.exit(main())
"""


async def test_sigint_during_the_imports_is_quiet() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INTERRUPT_DURING_IMPORT, "peer",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await finish(proc)
    assert proc.returncode == 130, (out, err)
    assert not err.strip() and not out, err


def test_a_stop_inside_an_in_process_call_leaves_the_callers_signals_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``fsm_voice.cli.main`` called from Python and stopped by Ctrl-C returns 130 and puts
    the caller's handlers back. (It used to leave SIGINT/SIGTERM ignored in the caller's
    process, and every child started later inherited the ignored SIGINT.)"""
    import argparse
    import signal as sig

    from fsm_voice import cli

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=interrupted, command="test")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    before = (sig.getsignal(sig.SIGINT), sig.getsignal(sig.SIGTERM))
    assert cli.main([]) == 130
    assert (sig.getsignal(sig.SIGINT), sig.getsignal(sig.SIGTERM)) == before


def test_a_closed_stdout_is_exit_141_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Any command whose reader went away (``| head``) ends with 141, like ``connect``
    (``diagram --trace F | head -1`` printed a BrokenPipeError traceback)."""
    import argparse

    from fsm_voice import cli

    def writes_into_a_closed_pipe(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=writes_into_a_closed_pipe, command="test")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 141
