"""Append-only audit log of the token broker in SQLite (stdlib ``sqlite3``).

One row per token request: when, which (known) client, from where, the outcome, the HTTP status,
the latency, and for issued keys the session id and a short non-secret fingerprint of the key
(:func:`fsm_voice.tokens.key_fingerprint`). Never a secret: the row fields are typed and short,
``detail`` is limited to an error-code-like token.

Append-only is enforced by the database itself: triggers ``RAISE(ABORT)`` on any ``UPDATE`` or
``DELETE`` of the table, and on any ``INSERT`` that names a row id (ids are the log's; SQLite
shows an automatic one as -1 to a BEFORE trigger) or lands before the last row. So ``INSERT OR
REPLACE`` / ``REPLACE`` cannot delete-and-rewrite a row (SQLite fires no DELETE trigger for a
REPLACE unless ``recursive_triggers`` is on, which another connection need not set), and ``ON
CONFLICT DO UPDATE`` hits the UPDATE trigger. Dropping the table or editing the file are outside
what SQLite can refuse: protect the file with permissions and ship it elsewhere for tamper
evidence.

All SQLite work runs on one dedicated thread (the connection never crosses threads); rows are
written by one writer task with group commit: concurrent requests share a transaction, and
:meth:`AuditLog.record` returns once its row is committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import attrs

from fsm_voice.errors import FsmVoiceError

__all__ = ["OUTCOMES", "SCHEMA", "AuditEntry", "AuditLog", "AuditLogClosed"]

OUTCOMES: Final = frozenset(
    {
        "issued",
        "denied_auth",
        "rate_limited",
        "upstream_error",
        "bad_request",
        "overloaded",
        "internal_error",
    }
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL    NOT NULL,
    client_id   TEXT,
    remote_addr TEXT,
    outcome     TEXT    NOT NULL,
    http_status INTEGER NOT NULL,
    latency_ms  REAL    NOT NULL,
    session_id  TEXT,
    key_id      TEXT,
    detail      TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_insert_id BEFORE INSERT ON audit
WHEN NEW.id <> -1
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: row ids are assigned by the log');
END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_insert_last AFTER INSERT ON audit
WHEN NEW.id < (SELECT MAX(id) FROM audit)
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: only new rows at the end');
END;
"""

_COLUMNS: Final = (
    "ts",
    "client_id",
    "remote_addr",
    "outcome",
    "http_status",
    "latency_ms",
    "session_id",
    "key_id",
    "detail",
)
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _token_or_none(value: str | None) -> str | None:
    """Only short identifier-like strings go into the log; anything else becomes '?'."""
    if value is None:
        return None
    return value if _TOKEN.match(value) else "?"


def _check_outcome(instance: object, attribute: object, value: str) -> None:
    if value not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {value!r}; expected one of {sorted(OUTCOMES)}")


@attrs.frozen
class AuditEntry:
    """One audit row (before it has an id)."""

    outcome: str = attrs.field(validator=_check_outcome)
    http_status: int
    latency_ms: float
    client_id: str | None = attrs.field(default=None, converter=_token_or_none)
    remote_addr: str | None = attrs.field(default=None, converter=_token_or_none)
    session_id: str | None = attrs.field(default=None, converter=_token_or_none)
    key_id: str | None = attrs.field(default=None, converter=_token_or_none)
    detail: str | None = attrs.field(default=None, converter=_token_or_none)
    ts: float = attrs.field(factory=time.time)

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in _COLUMNS)


class AuditLogClosed(FsmVoiceError, RuntimeError):
    """The audit log is not open."""


class AuditLog:
    """The append-only audit table at ``path`` (``":memory:"`` for a throw-away log).

    ``async with AuditLog(path) as log:`` or :meth:`open` / :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[AuditEntry, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.rows_written = 0

    def __repr__(self) -> str:
        return f"AuditLog({self.path!r})"

    # -- thread side -------------------------------------------------------------------------

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        conn = self._conn
        if conn is None:
            raise AuditLogClosed("audit log is closed")
        sql = f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        ids: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                cur = conn.execute(sql, row)
                ids.append(int(cur.lastrowid or 0))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return ids

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        conn = self._conn
        if conn is None:
            raise AuditLogClosed("audit log is closed")
        cur = conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        conn = self._conn
        if conn is None:
            raise AuditLogClosed("audit log is closed")
        conn.execute(sql, tuple(params))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- event-loop side ---------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise AuditLogClosed("audit log is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError("audit log already open")
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-log")
        try:
            await self._run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._wakeup = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="audit")

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        # Shielded: once handed to the thread, the batch is committed even if we are cancelled.
        if self._executor is None:
            raise AuditLogClosed("audit log is closed")
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, self._insert, [e.row() for e, _ in batch]
        )
        try:
            ids = await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await job
            for _, fut in batch:
                if not fut.done():
                    fut.cancel()
            raise
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.rows_written += len(ids)
        for (_, fut), row_id in zip(batch, ids, strict=True):
            if not fut.done():
                fut.set_result(row_id)

    async def record(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its row id once committed."""
        if self._writer is None:
            raise AuditLogClosed("audit log is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, fut))
        self._wakeup.set()
        return await fut

    async def rows(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, oldest first (``where``: an optional SQL condition with ``?``)."""
        sql = "SELECT * FROM audit" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        result: list[dict[str, Any]] = await self._run(self._query, sql, params)
        return result

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one raw statement on the audit connection (tests use it to prove that UPDATE and
        DELETE are refused)."""
        await self._run(self._execute, sql, params)

    async def close(self) -> None:
        """Write what is pending, stop the writer, close the database (idempotent)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(Exception):
                await self._flush()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
            executor.shutdown(wait=True)

    async def __aenter__(self) -> AuditLog:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
