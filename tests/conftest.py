"""Test-wide guards.

Network guard: a ``sys.addaudithook`` hook refuses every socket operation whose destination is not
loopback or inside the namespaces the tests create (``FSM_VOICE_TEST_NETS``). A test that tries to
reach a public STUN server or any outside address fails loudly with :class:`OutsideTrafficError`.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

# Networks our own namespace tests create (see tests/netns.py); loopback always allowed.
_ALLOWED = [
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    *(
        ipaddress.ip_network(n)
        for n in os.environ.get("FSM_VOICE_TEST_NETS", "10.213.0.0/16").split(",")
        if n
    ),
]
_violations: list[str] = []


class OutsideTrafficError(OSError):
    """A test tried to send traffic outside loopback / its own namespaces."""


def _allowed_host(host: Any) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths, socketpair: not network traffic
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name that is not localhost: refuse before any DNS lookup
    if addr.is_unspecified:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _ALLOWED)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple) and address and not _allowed_host(address[0]):
            msg = f"test traffic to outside address {address!r} refused ({event})"
            _violations.append(msg)
            raise OutsideTrafficError(msg)
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host is not None and not _allowed_host(host):
            msg = f"test name lookup of outside host {host!r} refused"
            _violations.append(msg)
            raise OutsideTrafficError(msg)


sys.addaudithook(_audit)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Fail the run if anything tried to leave the machine, even where the error was swallowed."""
    if _violations:
        sys.stderr.write("\nOUTSIDE TRAFFIC ATTEMPTED:\n  " + "\n  ".join(_violations[:20]) + "\n")
        session.exitstatus = 3
