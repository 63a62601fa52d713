"""``fsm-voice broker``: run the token broker until SIGINT (Ctrl-C) or SIGTERM.

The API key is read from the environment variable named by ``--api-key-env`` (never from the
command line, where other users could read it in the process list). Clients come from a JSON
file (``{"clients": {"<id>": "sha256:<hex>"}}``) and/or ``--client ID=sha256:HEX``; make a
digest with ``fsm-voice broker --hash-secret`` (reads the secret from stdin).

Several replicas share their limits and audit log with ``--redis-url`` (rate limits in Redis)
and ``--audit-dsn`` (the audit log in PostgreSQL, set up once with ``fsm-voice broker
audit-setup``). ``fsm-voice broker audit-verify`` checks an audit log's hash chain and names
the first bad row (exit 1). Passwords never go on the command line: ``--redis-password-env``,
and libpq's ``PGPASSWORD`` / ``~/.pgpass``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from fsm_voice.cli import EXIT_CODES, EXIT_FAILED, EXIT_USAGE, port, serve
from fsm_voice.errors import ConfigError

from .app import (
    DEFAULT_UPSTREAM,
    TOKEN_PATH,
    BrokerConfig,
    ClientRegistry,
    TokenBroker,
    hash_secret,
    read_clients_file,
)
from .audit import AuditStore, VerifyResult, verify_sqlite
from .forwarded import FORWARDED_HEADERS
from .proxy import LIVE_SESSIONS_PATH, REALTIME_CALLS_PATH, ClientProxy, ProxyConfig, SessionLimits
from .ratelimit import LimitStore, RatePolicy

__all__ = ["add_parsers", "build_broker", "cmd_audit_setup", "cmd_audit_verify", "cmd_broker"]

log = logging.getLogger(__name__)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# the top-level fields of a Realtime session object (client_secrets' ``session``)
_SESSION_FIELDS = frozenset(
    {
        "type", "model", "instructions", "audio", "output_modalities", "tools", "tool_choice",
        "tracing", "truncation", "prompt", "include", "max_output_tokens",
    }
)


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (database errors add DETAIL/HINT lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def add_parsers(subparsers: Any) -> None:
    """Register the ``broker`` subcommand on an ``argparse`` subparsers object."""
    b = subparsers.add_parser(
        "broker",
        help="serve short-lived ek_ keys to authenticated app clients (holds the API key)",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # "--api-key <key>" must not silently mean "--api-key-env <key>"
    )
    b.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    b.add_argument("--port", type=port, default=8787, help="listen port (default 8787)")
    b.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (plain HTTP: put a TLS proxy in front)",
    )
    b.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="environment variable holding the upstream API key (default OPENAI_API_KEY)",
    )
    b.add_argument("--upstream", default=DEFAULT_UPSTREAM, help="upstream API base URL")
    b.add_argument("--clients", metavar="FILE", help='JSON {"clients": {"id": "sha256:..."}}')
    b.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID=sha256:HEX",
        help="a client and its secret's digest (repeatable)",
    )
    b.add_argument(
        "--audit-db", help="SQLite audit log path (default broker-audit.sqlite3)"
    )
    b.add_argument(
        "--audit-dsn",
        metavar="DSN",
        help="PostgreSQL audit log (libpq DSN/URL without a password; shared by replicas)",
    )
    b.add_argument(
        "--redis-url",
        metavar="URL",
        help="keep rate limits in Redis (redis://, rediss://, unix://; shared by replicas)",
    )
    b.add_argument(
        "--redis-password-env", metavar="NAME", help="environment variable with the Redis password"
    )
    b.add_argument(
        "--limits-fail-open",
        action="store_true",
        help="when Redis is unreachable, serve unlimited (audited) instead of 503",
    )
    b.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy whose forwarding header names the client (repeatable)",
    )
    b.add_argument(
        "--allow-any-proxy",
        action="store_true",
        help="accept a --trusted-proxy that covers every address (0.0.0.0/0, ::/0): only when "
        "no client can reach the broker except through the proxies",
    )
    b.add_argument(
        "--forwarded-header",
        choices=FORWARDED_HEADERS,
        default="x-forwarded-for",
        help="the header the trusted proxies write (default x-forwarded-for)",
    )
    b.add_argument("--model", default="gpt-realtime", help="session model")
    b.add_argument("--voice", help="session output voice")
    b.add_argument("--instructions", help="session instructions")
    b.add_argument(
        "--session-config",
        metavar="FILE",
        help="JSON session object (type realtime); --model/--voice/--instructions override it",
    )
    b.add_argument("--default-expires", type=int, default=60, help="default key TTL (s)")
    b.add_argument("--max-expires", type=int, default=600, help="max key TTL clients get (s)")
    b.add_argument("--rate-capacity", type=float, default=10.0, help="per-client burst")
    b.add_argument("--rate-refill", type=float, default=1.0, help="per-client refill (requests/s)")
    b.add_argument(
        "--max-concurrency", type=int, default=16, help="upstream requests in flight at most"
    )
    b.add_argument(
        "--header-timeout",
        type=float,
        default=20.0,
        help="seconds a client may take to send a request head (and an idle connection may "
        "stay open), then its body (default 20)",
    )
    x = b.add_argument_group(
        "session proxy",
        "apps POST their SDP offer to the broker (/v1/live/sessions, /v1/realtime/calls), which "
        "creates the session upstream with the server-side config and caps it; the Realtime "
        "session is the one above (--model/--voice/--instructions/--session-config)",
    )
    x.add_argument("--proxy", action="store_true", help="serve the session proxy endpoints")
    x.add_argument(
        "--proxy-config",
        metavar="FILE",
        help='JSON {"default": ENTRY, "clients": {"<id>": ENTRY}}, ENTRY keys live_session, '
        "realtime_session, max_sessions, max_duration_s, idle_timeout_s (the flags below are "
        "the defaults a file's entries override)",
    )
    x.add_argument("--live-model", help="Live session model (default gpt-live-1)")
    x.add_argument("--live-instructions", help="Live session instructions")
    x.add_argument("--live-voice", help="Live session output voice")
    x.add_argument(
        "--max-sessions", type=int, help="sessions one client may have open at once (default 2)"
    )
    x.add_argument(
        "--max-session-duration",
        type=float,
        metavar="SECONDS",
        help="the broker ends a session this long after creating it (default 1800)",
    )
    x.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="the broker ends a Live session without transcript activity this long (default: "
        "none; not enforced for Realtime)",
    )
    b.add_argument(
        "--hash-secret",
        action="store_true",
        help="read a client secret from stdin, print its sha256: digest, exit",
    )
    b.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics on 127.0.0.1:PORT (needs the 'metrics' extra)")
    b.set_defaults(func=cmd_broker)
    sub = b.add_subparsers(dest="broker_command", metavar="{audit-verify,audit-setup}")
    v = sub.add_parser(
        "audit-verify",
        help="check the audit log's hash chain; names the first bad row (exit 1)",
        allow_abbrev=False,
    )
    where = v.add_mutually_exclusive_group(required=True)
    where.add_argument("--audit-db", help="SQLite audit log path")
    where.add_argument("--audit-dsn", metavar="DSN", help="PostgreSQL DSN (no password)")
    v.add_argument(
        "--anchor",
        metavar="HASH",
        help="a head hash printed by an earlier run: it must still be in the chain (rows cut "
        "off the end are found)",
    )
    v.set_defaults(func=cmd_audit_verify)
    s = sub.add_parser(
        "audit-setup",
        help="as the table owner: create the PostgreSQL audit table, its triggers and grants",
        allow_abbrev=False,
    )
    s.add_argument("--audit-dsn", metavar="DSN", required=True, help="owner's DSN (no password)")
    s.add_argument(
        "--writer-role", required=True, help="existing role the broker connects as (gets only "
        "SELECT and INSERT)"
    )
    s.set_defaults(func=cmd_audit_setup)


def _check_host(host: str, allow_remote: bool) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError.invalid("--host", host, "a literal IP address") from None
    if not ip.is_loopback and not allow_remote:
        raise ConfigError.invalid(
            "--host", host, "a loopback address (or pass --allow-remote behind a TLS proxy)"
        )
    return str(ip)


def _session_config(args: argparse.Namespace) -> dict[str, Any]:
    session: dict[str, Any] = {"type": "realtime"}
    if args.session_config:
        try:
            loaded = json.loads(Path(args.session_config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --session-config: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError.invalid("--session-config", args.session_config, "a JSON object")
        unknown = sorted(str(k) for k in loaded if k not in _SESSION_FIELDS)
        if unknown:
            raise ConfigError.invalid(
                "--session-config",
                args.session_config,
                f"a Realtime session object (unknown field(s) {', '.join(unknown)[:200]})",
            )
        session.update(loaded)
    if args.model:
        session["model"] = args.model
    if args.voice:
        audio = session.setdefault("audio", {})
        output = audio.setdefault("output", {}) if isinstance(audio, dict) else None
        if not isinstance(output, dict):
            raise ConfigError.invalid("session_config.audio.output", output, "an object")
        output["voice"] = args.voice
    if args.instructions:
        session["instructions"] = args.instructions
    return session


_PROXY_FLAGS = (
    "proxy_config", "live_model", "live_instructions", "live_voice", "max_sessions",
    "max_session_duration", "idle_timeout",
)


def _proxy_config(args: argparse.Namespace, realtime: dict[str, Any]) -> ProxyConfig | None:
    """The session proxy the flags describe (None without ``--proxy``)."""
    given = [f for f in _PROXY_FLAGS if getattr(args, f, None) is not None]
    if not getattr(args, "proxy", False):
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} configures the session proxy: pass --proxy too")
        return None
    for flag in ("live_model", "live_voice"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise ConfigError.invalid("--" + flag.replace("_", "-"), value, "a non-empty name")
    live: dict[str, Any] = {"model": args.live_model or "gpt-live-1"}
    if args.live_instructions:
        live["instructions"] = args.live_instructions
    if args.live_voice:
        live["audio"] = {"output": {"voice": args.live_voice}}
    limits = SessionLimits(
        max_sessions=2 if args.max_sessions is None else args.max_sessions,
        max_duration=1800.0 if args.max_session_duration is None else args.max_session_duration,
        idle_timeout=args.idle_timeout,
    )
    default = ClientProxy(live_session=live, realtime_session=realtime, limits=limits)
    if args.proxy_config:
        return ProxyConfig.from_file(args.proxy_config, default)
    return ProxyConfig(default=default)


def _clients(args: argparse.Namespace) -> ClientRegistry:
    digests: dict[str, str] = {}
    if args.clients:
        digests.update(read_clients_file(args.clients))
    for item in args.client:
        client_id, sep, digest = str(item).partition("=")
        if not sep:
            raise ConfigError.invalid("--client", "<redacted>", "ID=sha256:HEX")
        digests[client_id.strip()] = digest.strip()
    if not digests:
        raise ConfigError("no clients configured: pass --clients FILE or --client ID=sha256:HEX")
    return ClientRegistry(digests)


def build_broker(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TokenBroker:
    """The broker the arguments describe (not started). Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    if not isinstance(args.api_key_env, str) or not _ENV_NAME.match(args.api_key_env):
        # never echo the value: a key pasted here by mistake must not reach the terminal or logs
        raise ConfigError(
            "--api-key-env must name an environment variable (letters, digits, '_'), "
            "not hold the key itself"
        )
    api_key = env.get(args.api_key_env, "").strip()
    if not api_key:
        raise ConfigError(
            f"environment variable {args.api_key_env} is not set or empty (it must hold the "
            "upstream API key)"
        )
    limits: LimitStore | None = None
    if args.redis_url:
        from .redis_limits import RedisLimits

        password = None
        if args.redis_password_env:
            if not _ENV_NAME.match(args.redis_password_env):
                raise ConfigError("--redis-password-env must name an environment variable")
            password = env.get(args.redis_password_env) or None
            if password is None:
                raise ConfigError(f"environment variable {args.redis_password_env} is not set")
        limits = RedisLimits(args.redis_url, password=password)
    audit: AuditStore | str
    if args.audit_dsn:
        if args.audit_db:
            raise ConfigError("pass --audit-db (SQLite) or --audit-dsn (PostgreSQL), not both")
        from .audit_pg import PostgresAuditLog

        audit = PostgresAuditLog(args.audit_dsn)
    else:
        audit = args.audit_db or "broker-audit.sqlite3"
    for cidr in args.trusted_proxy:
        try:
            everyone = ipaddress.ip_network(str(cidr).strip(), strict=False).prefixlen == 0
        except ValueError:
            continue  # BrokerConfig names it
        if everyone and not args.allow_any_proxy:
            raise ConfigError.invalid(
                "--trusted-proxy",
                cidr,
                "proxies, not every address (any client could claim any address); pass "
                "--allow-any-proxy if clients reach the broker only through proxies",
            )
        if everyone:
            log.warning("broker: every address is a trusted proxy (--allow-any-proxy)")
    session_config = _session_config(args)
    config = BrokerConfig(
        upstream_base=args.upstream,
        session_config=session_config,
        proxy=_proxy_config(args, session_config),
        default_expires_after=args.default_expires,
        max_expires_after=args.max_expires,
        rate=RatePolicy(capacity=args.rate_capacity, refill_per_second=args.rate_refill),
        max_concurrent_upstream=args.max_concurrency,
        header_timeout=args.header_timeout,
        body_timeout=args.header_timeout,
        trusted_proxies=tuple(args.trusted_proxy),
        forwarded_header=args.forwarded_header,
        limits_fail_open=args.limits_fail_open,
    )
    host = _check_host(args.host, args.allow_remote)
    return TokenBroker(
        config,
        api_key=api_key,
        clients=_clients(args),
        audit=audit,
        limits=limits,
        manage_stores=True,
        host=host,
        port=args.port,
    )


def _hash_stdin(stdin: TextIO, stdout: TextIO) -> int:
    secret = stdin.readline().rstrip("\r\n")
    if not secret:
        print("fsm-voice broker: no secret on stdin", file=sys.stderr)
        return EXIT_USAGE
    print(hash_secret(secret), file=stdout)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT/SIGTERM (0); a configuration error or an audit log that
    cannot be opened is one line (2), a port that cannot be bound one line (1)."""
    if args.hash_secret:
        return _hash_stdin(sys.stdin, sys.stdout)
    try:
        broker = build_broker(args)
    except (ConfigError, ValueError) as exc:
        print(f"fsm-voice broker: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def ready(url: str) -> None:
        proxied = (
            f"; proxy POST {url}{LIVE_SESSIONS_PATH}, {url}{REALTIME_CALLS_PATH}"
            if broker.proxy is not None
            else ""
        )
        print(
            f"fsm-voice broker listening on {url} (POST {url}{TOKEN_PATH}{proxied}; "
            f"{len(broker.clients)} client(s); upstream {broker.config.upstream_base}; "
            f"audit {broker.audit.path}; limits {broker.limits.description})",
            flush=True,
        )

    serve_forever: Callable[[Callable[[str], None]], Awaitable[None]] = broker.serve_forever
    if getattr(args, "metrics_port", None) is not None:
        from fsm_voice.metrics import with_broker_metrics

        serve_forever = with_broker_metrics(broker, args.metrics_port)
    try:
        return serve("broker", serve_forever, ready)
    except sqlite3.Error as exc:  # the audit log is opened at start
        print(f"fsm-voice broker: cannot open --audit-db {args.audit_db}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # PostgreSQL audit store unreachable at start: one line
        if not type(exc).__module__.startswith("psycopg"):
            raise
        print(f"fsm-voice broker: cannot open the PostgreSQL audit log: {_one_line(exc)}",
              file=sys.stderr)
        return EXIT_FAILED


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify an audit log's chain: 0 when intact, 1 naming the first bad row, 2 when it
    cannot be read."""
    try:
        if args.audit_dsn:
            from .audit_pg import safe_dsn, verify_postgres

            result: VerifyResult = asyncio.run(
                verify_postgres(safe_dsn(args.audit_dsn), args.anchor)
            )
        else:
            result = verify_sqlite(args.audit_db, args.anchor)
    except Exception as exc:  # sqlite3 / psycopg errors, ConfigError
        print(f"fsm-voice broker audit-verify: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(result.describe(), flush=True)
    return 0 if result.ok else 1


def cmd_audit_setup(args: argparse.Namespace) -> int:
    """Create the PostgreSQL audit table (as its owner) and grant the writer role."""
    from .audit_pg import install_schema, safe_dsn

    try:
        asyncio.run(install_schema(safe_dsn(args.audit_dsn), args.writer_role))
    except Exception as exc:
        print(f"fsm-voice broker audit-setup: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"audit table ready; role {args.writer_role} may SELECT and INSERT only", flush=True)
    return 0
