"""Append-only, hash-chained audit log of the token broker in SQLite (stdlib ``sqlite3``); the
same log in PostgreSQL is :mod:`fsm_voice.broker.audit_pg`.

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

Hash chain: each row carries ``prev_hash`` (the previous row's ``row_hash``; 64 zeros for the
first) and ``row_hash = sha256(canonical JSON of [prev_hash, the row's fields])``
(:func:`chain_hash`). A trigger refuses an insert whose ``prev_hash`` is not the last row's hash.
:func:`verify_rows` recomputes the chain and names the first row that does not match, so an
edit made around the triggers (the file edited, triggers dropped) is found at the edited row. A
chain alone cannot show rows cut off its end: keep the head (:attr:`VerifyResult.head`)
elsewhere and verify against it (``anchor``).

All SQLite work runs on one dedicated thread (the connection never crosses threads); rows are
written by one writer task with group commit: concurrent requests share a transaction, and
:meth:`AuditLog.record` returns once its row is committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

import attrs

from fsm_voice.errors import ConfigError, FsmVoiceError

__all__ = [
    "GENESIS",
    "OUTCOMES",
    "SCHEMA",
    "AuditEntry",
    "AuditLog",
    "AuditLogClosed",
    "AuditStore",
    "ChainBreak",
    "ChainVerifier",
    "VerifyResult",
    "chain_hash",
    "verify_rows",
    "verify_sqlite",
]

OUTCOMES: Final = frozenset(
    {
        "issued",
        "denied_auth",
        "rate_limited",
        "upstream_error",
        "bad_request",
        "overloaded",
        "internal_error",
        "limits_unavailable",
        "session_created",
        "session_enforced",
        "session_ended",
        "session_overdue",
        "session_abandoned",
    }
)
GENESIS: Final = "0" * 64

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
    detail      TEXT,
    prev_hash   TEXT    NOT NULL,
    row_hash    TEXT    NOT NULL
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
CREATE TRIGGER IF NOT EXISTS audit_chain_link BEFORE INSERT ON audit
WHEN NEW.prev_hash IS NOT COALESCE(
    (SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1),
    '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: prev_hash must be the last row''s hash');
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
_HASH: Final = re.compile(r"^[0-9a-fA-F]{64}$")


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
    http_status: int = attrs.field(converter=int)
    latency_ms: float = attrs.field(converter=float)
    client_id: str | None = attrs.field(default=None, converter=_token_or_none)
    remote_addr: str | None = attrs.field(default=None, converter=_token_or_none)
    session_id: str | None = attrs.field(default=None, converter=_token_or_none)
    key_id: str | None = attrs.field(default=None, converter=_token_or_none)
    detail: str | None = attrs.field(default=None, converter=_token_or_none)
    ts: float = attrs.field(factory=time.time, converter=float)

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in _COLUMNS)

    def fields(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in _COLUMNS}


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """``row_hash`` of a row with these fields after a row whose hash is ``prev_hash``."""
    values: list[Any] = [prev_hash]
    for column in _COLUMNS:
        value = row.get(column)
        if value is not None and column in ("ts", "latency_ms"):
            value = float(value)
        elif value is not None and column == "http_status":
            value = int(value)
        values.append(value)
    payload = json.dumps(values, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _chain(prev_hash: str, entries: Sequence[AuditEntry]) -> list[tuple[Any, ...]]:
    """The rows to insert after ``prev_hash``: the entry's fields, then prev_hash, row_hash."""
    rows = []
    for entry in entries:
        row_hash = chain_hash(prev_hash, entry.fields())
        rows.append((*entry.row(), prev_hash, row_hash))
        prev_hash = row_hash
    return rows


@attrs.frozen
class ChainBreak:
    """The first row that does not continue the chain, and why."""

    row_id: int
    reason: str


@attrs.frozen
class VerifyResult:
    """What :func:`verify_rows` found: ``rows`` checked, the ``head`` (last id and hash, keep
    it elsewhere to detect a cut-off tail) and the first bad row, if any."""

    rows: int
    head_id: int | None
    head: str
    first_bad: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def describe(self) -> str:
        if self.first_bad is not None:
            return (
                f"audit chain BROKEN at row id={self.first_bad.row_id}: {self.first_bad.reason} "
                f"({self.rows} row(s) checked)"
            )
        return f"audit chain ok: {self.rows} row(s), head id={self.head_id} hash={self.head}"


class ChainVerifier:
    """Checks a chain one row at a time (rows in id order, dicts with the table's columns);
    :meth:`feed` returns False from the first bad row on.

    ``anchor``: a head hash recorded earlier (:attr:`VerifyResult.head`); the chain must still
    contain it, else rows were cut off the end (what a chain alone cannot show)."""

    def __init__(self, anchor: str | None = None) -> None:
        if anchor is not None:
            if not _HASH.match(anchor):
                raise ConfigError.invalid("anchor", anchor[:80], "a head hash: 64 hex digits")
            anchor = anchor.lower()
        self._prev = GENESIS
        self._count = 0
        self._last_id: int | None = None
        self._anchor = anchor
        self._anchor_seen = anchor is None or anchor == GENESIS
        self.first_bad: ChainBreak | None = None

    def feed(self, row: Mapping[str, Any]) -> bool:
        if self.first_bad is not None:
            return False
        row_id = int(row["id"])
        if row.get("prev_hash") != self._prev:
            if self._last_id is None:
                reason = (
                    f"row {row_id}'s prev_hash is not the genesis hash (rows before it were "
                    "removed, or the link was changed)"
                )
            else:
                reason = (
                    f"row {row_id}'s prev_hash does not match the previous row {self._last_id} "
                    f"(row {self._last_id} or the link was changed, or rows between them were "
                    "removed)"
                )
            self.first_bad = ChainBreak(row_id, reason)
            return False
        if row.get("row_hash") != chain_hash(self._prev, row):
            self.first_bad = ChainBreak(
                row_id, "row_hash does not match the row's contents (the row was changed)"
            )
            return False
        self._prev, self._count, self._last_id = str(row["row_hash"]), self._count + 1, row_id
        self._anchor_seen = self._anchor_seen or self._prev == self._anchor
        return True

    def result(self) -> VerifyResult:
        bad = self.first_bad
        if bad is None and not self._anchor_seen:
            bad = ChainBreak(
                (self._last_id or 0) + 1,
                f"the anchored head {self._anchor} is not in the chain (rows removed after id "
                f"{self._last_id or 0}, or the chain rewritten)",
            )
        return VerifyResult(self._count, self._last_id, self._prev, bad)


def verify_rows(rows: Iterable[Mapping[str, Any]], anchor: str | None = None) -> VerifyResult:
    """Check a chain, rows in id order; stops at the first bad row (``anchor``: see
    :class:`ChainVerifier`)."""
    verifier = ChainVerifier(anchor)
    for row in rows:
        if not verifier.feed(row):
            break
    return verifier.result()


def verify_sqlite(path: str | Path, anchor: str | None = None) -> VerifyResult:
    """Verify the chain of the SQLite audit log at ``path``, opened read-only (raises
    ``sqlite3.Error`` when it cannot be read)."""
    if not Path(path).is_file():
        raise sqlite3.OperationalError(f"no audit log at {str(path)!r}")
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        cur = conn.execute("SELECT * FROM audit ORDER BY id")
        return verify_rows((dict(r) for r in cur), anchor)
    finally:
        conn.close()


class AuditStore(Protocol):
    """Where the broker's audit rows go (:class:`AuditLog` in SQLite,
    :class:`~fsm_voice.broker.audit_pg.PostgresAuditLog`)."""

    rows_written: int

    @property
    def path(self) -> str:
        """Where the log is, for logs (no secrets)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def record(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its row id once committed (raises when it could not be)."""
        ...

    async def rows(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        ...

    async def verify(self) -> VerifyResult: ...


class AuditLogClosed(FsmVoiceError, RuntimeError):
    """The audit log is not open."""


class GroupCommitLog:
    """The writer side shared by the audit stores: :meth:`record` queues a row, one writer task
    commits everything queued in one transaction (:meth:`_write_batch`), and each caller returns
    once its own row is committed. Once handed to the database a batch is finished even if the
    writer is cancelled."""

    def __init__(self) -> None:
        self._pending: list[tuple[AuditEntry, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.rows_written = 0

    async def _write_batch(self, entries: Sequence[AuditEntry]) -> list[int]:
        raise NotImplementedError

    def _start_writer(self) -> None:
        self._wakeup = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="audit")

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(Exception):
                await self._flush()

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        job = asyncio.get_running_loop().create_task(self._write_batch([e for e, _ in batch]))
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


class AuditLog(GroupCommitLog):
    """The append-only audit table at ``path`` (``":memory:"`` for a throw-away log).

    ``async with AuditLog(path) as log:`` or :meth:`open` / :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"AuditLog({self.path!r})"

    # -- thread side -------------------------------------------------------------------------

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            columns = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
            if columns and "row_hash" not in columns:
                raise sqlite3.OperationalError(
                    f"the audit log {self.path!r} predates the hash chain (no row_hash column): "
                    "move it aside and start a new one"
                )
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _insert(self, entries: Sequence[AuditEntry]) -> list[int]:
        conn = self._conn
        if conn is None:
            raise AuditLogClosed("audit log is closed")
        columns = (*_COLUMNS, "prev_hash", "row_hash")
        sql = f"INSERT INTO audit ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        ids: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            last = conn.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            for row in _chain(last[0] if last else GENESIS, entries):
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

    def _verify(self) -> VerifyResult:
        conn = self._conn
        if conn is None:
            raise AuditLogClosed("audit log is closed")
        cur = conn.execute("SELECT * FROM audit ORDER BY id")
        names = [d[0] for d in cur.description or ()]
        return verify_rows(dict(zip(names, r, strict=True)) for r in cur)

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

    async def _write_batch(self, entries: Sequence[AuditEntry]) -> list[int]:
        ids: list[int] = await self._run(self._insert, entries)
        return ids

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
        self._start_writer()

    async def rows(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, oldest first (``where``: an optional SQL condition with ``?``)."""
        sql = "SELECT * FROM audit" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        result: list[dict[str, Any]] = await self._run(self._query, sql, params)
        return result

    async def verify(self) -> VerifyResult:
        """Check the hash chain of every row (see :func:`verify_rows`)."""
        result: VerifyResult = await self._run(self._verify)
        return result

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one raw statement on the audit connection (tests use it to prove that UPDATE and
        DELETE are refused)."""
        await self._run(self._execute, sql, params)

    async def close(self) -> None:
        """Write what is pending, stop the writer, close the database (idempotent)."""
        await self._stop_writer()
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
