"""The broker's audit log in PostgreSQL (psycopg 3), shared by every replica.

The same rows and the same hash chain as the SQLite log (:mod:`fsm_voice.broker.audit`).
Append-only is the database's job, twice over:

* the broker connects as a *writer* role granted only ``SELECT`` and ``INSERT`` on the table (no
  ``UPDATE``, ``DELETE`` or ``TRUNCATE``), set up once by the table's owner with
  :func:`install_schema` (``fsm-voice broker audit-setup``);
* triggers refuse ``UPDATE``, ``DELETE`` and ``TRUNCATE`` from anyone, and refuse an ``INSERT``
  whose ``prev_hash`` is not the last row's hash (the trigger takes the chain's advisory lock,
  so concurrent writers on several replicas append one after another), whose ``row_hash`` is
  not the hash of its own fields (recomputed in SQL, :func:`~fsm_voice.broker.audit.chain_hash`),
  or whose id was not drawn from the table's sequence (``OVERRIDING SYSTEM VALUE``). Re-run
  ``audit-setup`` on a table set up by an older version to get the last two.

The owner (or a superuser) can still disable triggers and edit rows: that is what
:func:`verify` (``fsm-voice broker audit-verify``) finds, at the first changed row.

One connection per broker writes with group commit; when a batch fails for any reason (the
server restarted, the backend was terminated mid-pipeline, the server froze past
``write_timeout``) the connection is dropped, never reused, the batch in flight fails (its
requests get no key) and the next batch reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from fsm_voice.errors import ConfigError, FsmVoiceError

from .audit import (
    _COLUMNS,
    GENESIS,
    AuditEntry,
    AuditLogClosed,
    ChainVerifier,
    GroupCommitLog,
    VerifyResult,
)
from .audit import _chain as chain_rows

__all__ = [
    "CHAIN_LOCK",
    "AuditWriteTimeout", "PostgresAuditLog", "install_schema", "safe_dsn", "verify_postgres"]

CHAIN_LOCK: Final = 0x66736D5F61756474  # pg_advisory_xact_lock key of the chain ("fsm_audt")
_ROLE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts          DOUBLE PRECISION NOT NULL,
    client_id   TEXT,
    remote_addr TEXT,
    outcome     TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    latency_ms  DOUBLE PRECISION NOT NULL,
    session_id  TEXT,
    key_id      TEXT,
    detail      TEXT,
    prev_hash   TEXT NOT NULL,
    row_hash    TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % refused', TG_OP;
END $$;
CREATE OR REPLACE FUNCTION audit_json_float(v DOUBLE PRECISION) RETURNS TEXT
LANGUAGE sql IMMUTABLE SET extra_float_digits = 1 AS $$
    -- a float as Python's json.dumps writes it (shortest round-trip; integral values get ".0")
    SELECT CASE
        WHEN v IS NULL THEN 'null'
        WHEN v::text = '-0' THEN '-0.0'
        WHEN v = trunc(v) AND abs(v) < 1e16 THEN trunc(v)::bigint::text || '.0'
        ELSE v::text
    END
$$;
CREATE OR REPLACE FUNCTION audit_json_text(v TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL THEN 'null' ELSE to_json(v)::text END
$$;
CREATE OR REPLACE FUNCTION audit_row_hash(r audit) RETURNS TEXT LANGUAGE sql STABLE AS $$
    -- fsm_voice.broker.audit.chain_hash: sha256 of the canonical JSON of the row
    SELECT encode(sha256(convert_to(
        '[' || audit_json_text(r.prev_hash) || ',' || audit_json_float(r.ts) || ','
        || audit_json_text(r.client_id) || ',' || audit_json_text(r.remote_addr) || ','
        || audit_json_text(r.outcome) || ','
        || COALESCE(r.http_status::text, 'null') || ',' || audit_json_float(r.latency_ms) || ','
        || audit_json_text(r.session_id) || ',' || audit_json_text(r.key_id) || ','
        || audit_json_text(r.detail) || ']', 'UTF8')), 'hex')
$$;
CREATE OR REPLACE FUNCTION audit_link() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_id BIGINT;
    last_hash TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK});
    SELECT id, row_hash INTO last_id, last_hash FROM audit ORDER BY id DESC LIMIT 1;
    IF NEW.prev_hash IS DISTINCT FROM COALESCE(last_hash, '{GENESIS}') THEN
        RAISE EXCEPTION 'audit log is append-only: prev_hash must be the last row''s hash';
    END IF;
    IF last_id IS NOT NULL AND NEW.id <= last_id THEN
        RAISE EXCEPTION 'audit log is append-only: only new rows at the end';
    END IF;
    IF NEW.row_hash IS DISTINCT FROM audit_row_hash(NEW) THEN
        RAISE EXCEPTION 'audit log is append-only: row_hash must be the hash of the row';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION audit_own_id() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    given BIGINT;
BEGIN
    -- an id from the identity sequence was just drawn in this session; OVERRIDING SYSTEM
    -- VALUE draws none (currval as the owner: the writer has no rights on the sequence)
    BEGIN
        given := currval(pg_get_serial_sequence(
            quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME), 'id'));
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        given := NULL;
    END;
    IF NEW.id IS DISTINCT FROM given THEN
        RAISE EXCEPTION 'audit log is append-only: row ids are assigned by the log';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS audit_no_change ON audit;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
DROP TRIGGER IF EXISTS audit_no_truncate ON audit;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
DROP TRIGGER IF EXISTS audit_chain_link ON audit;
CREATE TRIGGER audit_chain_link BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_link();
DROP TRIGGER IF EXISTS audit_id_own ON audit;
CREATE TRIGGER audit_id_own BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_own_id();
REVOKE ALL ON FUNCTION audit_own_id() FROM PUBLIC;
REVOKE ALL ON audit FROM PUBLIC;
"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "the PostgreSQL audit log needs psycopg: pip install 'fsm-voice[broker-scale]'"
        ) from None
    return psycopg


def safe_dsn(dsn: str) -> str:
    """``dsn`` checked to hold no password (use ``PGPASSWORD`` / ``~/.pgpass``: a DSN ends up
    in process lists and logs); returned as given. Raises :class:`ConfigError`."""
    psycopg = _psycopg()
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split())  # libpq's message ends in a newline: one line
        raise ConfigError.invalid("audit DSN", "<redacted>", f"a libpq DSN ({reason})") from None
    if params.get("password"):
        raise ConfigError.invalid(
            "audit DSN", "<redacted>", "a DSN without a password (use PGPASSWORD or ~/.pgpass)"
        )
    return dsn


async def install_schema(dsn: str, writer_role: str) -> None:
    """As the table's owner at ``dsn``: create the audit table and its triggers (idempotent)
    and grant ``writer_role`` (an existing role) only ``SELECT`` and ``INSERT`` on it."""
    if not _ROLE.match(writer_role):
        raise ConfigError.invalid("writer role", writer_role, "a lower-case SQL identifier")
    psycopg = _psycopg()
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn, conn.transaction():
        await conn.execute(_SCHEMA)
        await conn.execute(f"REVOKE ALL ON audit FROM {writer_role}")
        await conn.execute(f"GRANT SELECT, INSERT ON audit TO {writer_role}")


async def _fetch_rows(conn: Any, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=_psycopg().rows.dict_row)
    await cur.execute(sql, tuple(params))
    rows: list[dict[str, Any]] = await cur.fetchall()
    return rows


async def verify_postgres(dsn: str, anchor: str | None = None) -> VerifyResult:
    """Verify the chain of the audit table at ``dsn`` (rows streamed through a server-side
    cursor, stopping at the first bad one; ``anchor``: see :class:`ChainVerifier`)."""
    psycopg = _psycopg()
    verifier = ChainVerifier(anchor)
    conn = await psycopg.AsyncConnection.connect(dsn)
    async with (
        conn,
        conn.cursor(name="audit_verify", row_factory=psycopg.rows.dict_row) as cur,
    ):
        await cur.execute("SELECT * FROM audit ORDER BY id")
        async for row in cur:
            if not verifier.feed(row):
                break
    return verifier.result()


class AuditWriteTimeout(FsmVoiceError, TimeoutError):
    """An audit write did not finish within ``write_timeout`` (the server is stuck)."""


class PostgresAuditLog(GroupCommitLog):
    """The audit table in PostgreSQL at ``dsn`` (a libpq DSN or URL without a password; the
    role should be the writer role of :func:`install_schema`). The table must exist.

    ``connect_timeout``: seconds to wait for a (re)connection before the batch fails;
    ``write_timeout``: seconds a batch may take (the server's statement and lock timeouts, and
    the client's own bound when the server does not answer at all: the batch fails with
    :class:`AuditWriteTimeout` and its connection is dropped).
    """

    def __init__(
        self, dsn: str, *, connect_timeout: float = 2.0, write_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self.dsn = safe_dsn(dsn)
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self._discarded: set[asyncio.Task[None]] = set()
        self._timeout_ms = max(1, round(write_timeout * 1000))
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._open = False

    @property
    def path(self) -> str:
        params = _psycopg().conninfo.conninfo_to_dict(self.dsn)
        where = params.get("host") or "localhost"
        return f"postgresql {params.get('dbname') or '?'} on {where}"

    def __repr__(self) -> str:
        return f"PostgresAuditLog({self.path!r})"

    async def _db_connection(self) -> Any:
        if not self._open:
            raise AuditLogClosed("audit log is closed")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = None
            if conn is not None:
                self._discard(conn)
            psycopg = _psycopg()
            # libpq's connect_timeout is whole seconds and psycopg's own wait is not bounded by
            # a frozen server that accepted the socket: the client bounds it too
            async with asyncio.timeout(self.connect_timeout):
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(1, round(self.connect_timeout)),
                    # a stuck server or a replica holding the chain lock fails the batch
                    options=(
                        f"-c statement_timeout={self._timeout_ms} "
                        f"-c lock_timeout={self._timeout_ms}"
                    ),
                )
            self._conn = conn
        return conn

    def _discard(self, conn: Any, job: asyncio.Task[Any] | None = None) -> None:
        """Drop a connection that failed or timed out (never reused: it may be mid-pipeline or
        mid-transaction; the server rolls back what was not committed). With ``job`` still
        running on it (a frozen server), it is closed once that job ends."""
        if self._conn is conn:
            self._conn = None

        async def close() -> None:
            if job is not None:
                with contextlib.suppress(BaseException):
                    await job
            with contextlib.suppress(Exception):
                await conn.close()

        task = asyncio.get_running_loop().create_task(close(), name="audit-pg-discard")
        self._discarded.add(task)
        task.add_done_callback(self._discarded.discard)

    async def _insert(
        self, conn: Any, entries: Sequence[AuditEntry], sent: list[bool]
    ) -> list[int]:
        """One transaction (explicit statements: no context manager that would wait on a
        frozen server to roll back); ``sent[0]`` is set once a row went to the server."""
        columns = (*_COLUMNS, "prev_hash", "row_hash")
        sql = (
            f"INSERT INTO audit ({', '.join(columns)}) VALUES "
            f"({', '.join(['%s'] * len(columns))}) RETURNING id"
        )
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
        cur = await conn.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1")
        last = await cur.fetchone()
        rows = chain_rows(last[0] if last else GENESIS, entries)
        ids: list[int] = []
        cur = conn.cursor()
        sent[0] = True
        await cur.executemany(sql, rows, returning=True)  # one pipelined round trip
        while True:
            got = await cur.fetchone()
            ids.append(int(got[0]))
            if not cur.nextset():
                break
        await conn.execute("COMMIT")
        return ids

    async def _write_batch(self, entries: Sequence[AuditEntry]) -> list[int]:
        psycopg = _psycopg()
        async with self._lock:
            for attempt in (1, 2):
                conn = await self._db_connection()
                sent = [False]
                job = asyncio.get_running_loop().create_task(self._insert(conn, entries, sent))
                done, _ = await asyncio.wait({job}, timeout=self.write_timeout)
                if job not in done:  # a frozen server: give up on it, the batch fails
                    job.cancel()
                    self._discard(conn, job)
                    raise AuditWriteTimeout(
                        f"the audit write took over {self.write_timeout:g} s"
                    )
                try:
                    return job.result()
                except Exception as exc:
                    self._discard(conn)  # whatever failed, never reuse the connection
                    # a connection killed while idle fails before any row was sent: nothing
                    # can have been committed, so one retry on a new connection is safe
                    if attempt == 1 and not sent[0] and isinstance(exc, psycopg.OperationalError):
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def open(self) -> None:
        """Connect and check the table is there (raises when the server cannot be reached)."""
        if self._open:
            raise RuntimeError("audit log already open")
        self._open = True
        try:
            conn = await self._db_connection()
            await conn.execute("SELECT 1 FROM audit LIMIT 0")
        except BaseException:
            await self._disconnect()
            raise
        self._start_writer()

    async def _disconnect(self) -> None:
        self._open = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._discarded:  # connections still stuck on a frozen server: bounded wait
            await asyncio.wait(set(self._discarded), timeout=self.connect_timeout)

    async def rows(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, oldest first (``where``: an optional SQL condition with ``%s``)."""
        sql = "SELECT * FROM audit" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        async with self._lock:
            return await _fetch_rows(await self._db_connection(), sql, params)

    async def verify(self) -> VerifyResult:
        return await verify_postgres(self.dsn)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one raw statement as the broker's role (tests use it to prove that UPDATE,
        DELETE and TRUNCATE are refused)."""
        async with self._lock:
            await (await self._db_connection()).execute(sql, tuple(params))

    async def close(self) -> None:
        """Write what is pending, stop the writer, disconnect (idempotent)."""
        await self._stop_writer()
        await self._disconnect()

    async def __aenter__(self) -> PostgresAuditLog:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
