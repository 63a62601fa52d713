"""Real coturn STUN/TURN servers on 127.0.0.1 for tests and benchmarks.

``with coturn_server() as turn:`` starts ``turnserver`` on free ports (UDP+TCP listener, and a TLS
listener when given a certificate), waits until it answers a STUN binding request, and always
stops it (SIGTERM, then SIGKILL) on exit - also at interpreter exit if a test was killed half-way.
Nothing listens or relays anywhere but 127.0.0.1 (``--listening-ip``/``--relay-ip``); loopback
peers are allowed (``--allow-loopback-peers``) so a relay can reach a local peer. Without the
``turnserver`` binary, :func:`require_turnserver` skips the calling test with the reason.

Each server uses long-term credentials ``fsm:voice`` in realm ``fsm-voice``, its own temporary
directory (pid file, SQLite user db, log) and a random relay port block in 20000-32000, below
Linux's ephemeral range.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from fsm_voice.policy import IceServer
from fsm_voice.transport._private import stun

HOST = "127.0.0.1"
USERNAME = "fsm"
PASSWORD = "voice"
REALM = "fsm-voice"
_START_TIMEOUT = 10.0
_live: set[subprocess.Popen[bytes]] = set()


def turnserver_path() -> str | None:
    return shutil.which("turnserver")


def require_turnserver() -> str:
    """The ``turnserver`` binary, or skip the test saying how to get it."""
    path = turnserver_path()
    if path is None:
        pytest.skip("coturn's `turnserver` is not installed (apt-get install -y coturn)")
    return path


def require_openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the `openssl` CLI is not installed: cannot make a certificate for turns:")
    return path


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 (and localhost): ``(cert.pem, key.pem)``.
    Trust it for a client with ``SSL_CERT_FILE=cert.pem``."""
    openssl = require_openssl()
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def free_port(kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free on 127.0.0.1 for every socket kind in ``kinds`` (at the time of the call)."""
    for _ in range(100):
        socks: list[socket.socket] = []
        try:
            first = socket.socket(socket.AF_INET, kinds[0])
            socks.append(first)
            first.bind((HOST, 0))
            port = int(first.getsockname()[1])
            for kind in kinds[1:]:
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((HOST, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port found")


def stun_binding(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether a STUN binding request to ``host:port`` over UDP is answered in time."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(bytes(request), (host, port))
            data, _ = s.recvfrom(2048)
            return stun.parse_message(data).transaction_id == request.transaction_id
        except (OSError, ValueError):
            return False


@dataclass
class Coturn:
    """One running ``turnserver``."""

    process: subprocess.Popen[bytes]
    port: int
    """UDP and TCP listening port (STUN and TURN)."""
    tls_port: int | None
    workdir: Path
    log_path: Path
    killed: bool = field(default=False)

    @property
    def stun_url(self) -> str:
        return f"stun:{HOST}:{self.port}"

    def stun(self) -> IceServer:
        return IceServer(self.stun_url)

    def turn(self, transport: Literal["udp", "tcp", "tls"] = "udp") -> IceServer:
        """The TURN entry for ``transport`` (``tls`` is ``turns:...?transport=tcp``)."""
        if transport == "tls":
            if self.tls_port is None:
                raise ValueError("this coturn was started without a certificate (no TLS port)")
            url = f"turns:{HOST}:{self.tls_port}?transport=tcp"
        else:
            url = f"turn:{HOST}:{self.port}?transport={transport}"
        return IceServer(url, username=USERNAME, credential=PASSWORD)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would (no goodbye to clients); waits until it is gone."""
        self.killed = True
        _stop(self.process, graceful=False)

    def stop(self) -> None:
        _stop(self.process, graceful=True)


def _stop(process: subprocess.Popen[bytes], *, graceful: bool) -> None:
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                process.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=3.0)
    finally:
        _live.discard(process)


@atexit.register
def _stop_all() -> None:  # a test run interrupted between start and stop
    for process in list(_live):
        with contextlib.suppress(Exception):
            _stop(process, graceful=False)


@contextlib.contextmanager
def coturn_server(*, cert: tuple[Path, Path] | None = None) -> Iterator[Coturn]:
    """Start coturn on 127.0.0.1 (TLS too when ``cert=(cert.pem, key.pem)``); always stopped."""
    binary = require_turnserver()
    with tempfile.TemporaryDirectory(prefix="fsm-voice-coturn-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "turnserver.log"
        for _attempt in range(3):  # a port grabbed between free_port() and coturn's bind
            port = free_port()
            tls_port = free_port((socket.SOCK_STREAM,)) if cert is not None else None
            relay_low = random.randrange(20000, 31800, 2)
            args = [
                binary, "-n",
                f"--listening-ip={HOST}", f"--relay-ip={HOST}",
                f"--listening-port={port}",
                "--no-dtls", "--no-cli", "--no-rfc5780", "--no-software-attribute",
                "--lt-cred-mech", f"--user={USERNAME}:{PASSWORD}", f"--realm={REALM}",
                "--allow-loopback-peers",
                f"--min-port={relay_low}", f"--max-port={relay_low + 199}",
                f"--pidfile={workdir / 'turnserver.pid'}",
                f"--userdb={workdir / 'turndb'}",
                "--log-file=stdout", "--simple-log",
            ]  # fmt: skip
            if cert is None:
                args.append("--no-tls")
            else:
                args += [f"--tls-listening-port={tls_port}"]
                args += [f"--cert={cert[0]}", f"--pkey={cert[1]}"]
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    start_new_session=True,
                )
            _live.add(process)
            server = Coturn(process, port, tls_port, workdir, log_path)
            try:
                if _wait_ready(server):
                    break
            except BaseException:
                _stop(process, graceful=False)
                raise
            _stop(process, graceful=False)
        else:
            raise RuntimeError(f"coturn did not start; its log:\n{server.log()[-3000:]}")
        try:
            yield server
        finally:
            _stop(process, graceful=True)


def _wait_ready(server: Coturn) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        if stun_binding(server.port) and (server.tls_port is None or _tcp_accepts(server.tls_port)):
            return True
        time.sleep(0.05)
    return False


def _tcp_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def dead_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that is bound (so no ICMP "port unreachable") but never answers:
    what an unreachable STUN server looks like to a client."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        yield int(s.getsockname()[1])
    finally:
        s.close()


__all__ = [
    "PASSWORD",
    "REALM",
    "USERNAME",
    "Coturn",
    "coturn_server",
    "dead_udp_port",
    "free_port",
    "require_openssl",
    "require_turnserver",
    "self_signed_cert",
    "stun_binding",
    "turnserver_path",
]
