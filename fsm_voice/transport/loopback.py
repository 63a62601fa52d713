"""Explicit control of the host addresses aioice offers as ICE candidates.

aioice gathers host candidates from every interface *except* 127.0.0.1, so two peers on one
machine cannot connect over loopback, and by default they offer the machine's real addresses.
:func:`host_addresses` scopes an override to the current context (a :class:`contextvars.ContextVar`,
so it follows tasks started inside it): inside ``with host_addresses(["127.0.0.1"]):`` every peer
connection gathers exactly those host addresses and nothing else. Outside any such block aioice
behaves exactly as shipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence

from fsm_voice.transport._private import HostAddresses, install_host_address_hook

_override: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "fsm_voice_host_addresses", default=None
)
LOOPBACK: tuple[str, ...] = ("127.0.0.1",)


def _hook(original: HostAddresses) -> HostAddresses:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _override.get()
        if chosen is None:
            return list(original(use_ipv4, use_ipv6))
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    return get_host_addresses


def install() -> None:
    """Route aioice's host-address discovery through this module (idempotent; the one
    process-wide change of aioice: see ``_private.install_host_address_hook``)."""
    install_host_address_hook(_hook)


def current_override() -> tuple[str, ...] | None:
    """The host addresses forced in this context, or None (aioice's own discovery)."""
    return _override.get()


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Offer exactly ``addresses`` as host candidates for peer connections made in this context.

    Raises ValueError for anything that is not a literal IP address.
    """
    checked: list[str] = []
    for a in addresses:
        try:
            checked.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ValueError(
                f"host address {a!r} is not an IP address; give literal IPv4/IPv6 addresses "
                "such as '127.0.0.1'"
            ) from None
    install()
    token = _override.set(tuple(checked))
    try:
        yield
    finally:
        _override.reset(token)


def loopback() -> contextlib.AbstractContextManager[None]:
    """Shorthand for ``host_addresses(["127.0.0.1"])``: local peers talk over loopback only."""
    return host_addresses(LOOPBACK)
