"""``fsm-voice broker``: run the token broker until Ctrl-C.

The API key is read from the environment variable named by ``--api-key-env`` (never from the
command line, where other users could read it in the process list). Clients come from a JSON
file (``{"clients": {"<id>": "sha256:<hex>"}}``) and/or ``--client ID=sha256:HEX``; make a
digest with ``fsm-voice broker --hash-secret`` (reads the secret from stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

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
from .ratelimit import RatePolicy

__all__ = ["add_parsers", "build_broker", "cmd_broker"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def add_parsers(subparsers: Any) -> None:
    """Register the ``broker`` subcommand on an ``argparse`` subparsers object."""
    b = subparsers.add_parser(
        "broker",
        help="serve short-lived ek_ keys to authenticated app clients (holds the API key)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # "--api-key <key>" must not silently mean "--api-key-env <key>"
    )
    b.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    b.add_argument("--port", type=int, default=8787, help="listen port (default 8787)")
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
    b.add_argument("--audit-db", default="broker-audit.sqlite3", help="SQLite audit log path")
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
        "--hash-secret",
        action="store_true",
        help="read a client secret from stdin, print its sha256: digest, exit",
    )
    b.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics on 127.0.0.1:PORT (needs the 'metrics' extra)")
    b.set_defaults(func=cmd_broker)


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
    config = BrokerConfig(
        upstream_base=args.upstream,
        session_config=_session_config(args),
        default_expires_after=args.default_expires,
        max_expires_after=args.max_expires,
        rate=RatePolicy(capacity=args.rate_capacity, refill_per_second=args.rate_refill),
        max_concurrent_upstream=args.max_concurrency,
    )
    host = _check_host(args.host, args.allow_remote)
    return TokenBroker(
        config,
        api_key=api_key,
        clients=_clients(args),
        audit=args.audit_db,
        host=host,
        port=args.port,
    )


def _hash_stdin(stdin: TextIO, stdout: TextIO) -> int:
    secret = stdin.readline().rstrip("\r\n")
    if not secret:
        print("no secret on stdin", file=sys.stderr)
        return 2
    print(hash_secret(secret), file=stdout)
    return 0


async def _serve(broker: TokenBroker, ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt) or SIGTERM; both stop the broker cleanly."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await broker.serve_forever(ready)
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the broker until Ctrl-C (0), or report a configuration error (2)."""
    if args.hash_secret:
        return _hash_stdin(sys.stdin, sys.stdout)
    try:
        broker = build_broker(args)
    except (ConfigError, ValueError) as exc:
        print(f"fsm-voice broker: {exc}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(
            f"fsm-voice broker listening on {url} (POST {url}{TOKEN_PATH}; "
            f"{len(broker.clients)} client(s); upstream {broker.config.upstream_base}; "
            f"audit {broker.audit.path})",
            flush=True,
        )

    try:
        if getattr(args, "metrics_port", None) is not None:
            from fsm_voice.metrics import serve_broker
            asyncio.run(serve_broker(broker, args.metrics_port, lambda: _serve(broker, ready)))
        else:
            asyncio.run(_serve(broker, ready))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"fsm-voice broker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
