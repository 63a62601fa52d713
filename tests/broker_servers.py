"""Real redis-server and PostgreSQL for the broker tests and benchmark, on unix sockets in a
private temporary directory (no TCP port at all). Never mocked.

Binaries come from Debian's ``redis-server`` and ``postgresql`` packages (``scripts/setup``
installs them as root); without them the tests that need them skip, saying so. PostgreSQL refuses
to run as root: as root it runs as the ``postgres`` user the package creates (``runuser``).
Readiness is the servers' own signal (redis's "Ready to accept connections" line, ``pg_ctl -w``),
never a sleep.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["PostgresServer", "RedisServer", "postgres_missing", "redis_missing"]

WRITER_ROLE = "fsm_broker"


def redis_missing() -> str | None:
    """Why a real Redis cannot run here (None when it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (scripts/setup installs it as root)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is missing (pip install -e '.[broker-scale]')"
    return None


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def postgres_missing() -> str | None:
    """Why a real PostgreSQL cannot run here (None when it can)."""
    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        return "PostgreSQL is not installed (scripts/setup installs postgresql as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg package is missing (pip install -e '.[broker-scale]')"
    return None


class RedisServer:
    """``redis-server`` on a unix socket, no persistence. :meth:`kill` (SIGKILL) and
    :meth:`start` again to test an outage."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="fsm-redis-"))
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server is not None
        self.proc = subprocess.Popen(
            [
                redis_server,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--loglevel", "notice",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # the server's own readiness line
            seen.append(line)
            if "ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(seen[-20:]))
        # keep draining its log so the server never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def pause(self, paused: bool = True) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the server: a hung Redis, not a dead one."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresServer:
    """A throw-away PostgreSQL cluster listening only on a unix socket. The superuser
    ``postgres`` owns the audit table (:meth:`install`); the broker connects as
    :data:`WRITER_ROLE` (SELECT and INSERT only)."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fsm-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.fsync = fsync
        self._as_postgres = os.geteuid() == 0
        self._databases = 0
        self.sockets.mkdir()
        os.chmod(self.root, 0o755)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(
            _pg_bin("initdb") or "initdb",
            "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
        )

    def _run(self, *argv: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")

    def dsn(self, user: str = WRITER_ROLE, dbname: str = "postgres") -> str:
        return f"host={self.sockets} port=5432 dbname={dbname} user={user}"

    @property
    def owner_dsn(self) -> str:
        return self.dsn("postgres")

    def _pg_ctl(self, *args: str) -> None:
        options = (
            f"-c listen_addresses='' -k {self.sockets} -c fsync={'on' if self.fsync else 'off'} "
            "-c max_connections=50"
        )
        self._run(
            _pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-w", "-t", "60",
            "-l", str(self.root / "log"), "-o", options, *args,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def new_database(self) -> str:
        """A fresh database with the audit table, owned by the superuser, the writer role
        granted SELECT and INSERT (the same steps as ``fsm-voice broker audit-setup``);
        returns its name. Call it outside a running event loop."""
        import asyncio

        import psycopg

        from fsm_voice.broker.audit_pg import install_schema

        self._databases += 1
        name = f"audit_{self._databases}"
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WRITER_ROLE,))
            if role.fetchone() is None:
                conn.execute(f"CREATE ROLE {WRITER_ROLE} LOGIN")
            conn.execute(f"CREATE DATABASE {name}")
        asyncio.run(install_schema(self.dsn("postgres", name), WRITER_ROLE))
        return name

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
