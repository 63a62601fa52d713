"""The client's address behind trusted reverse proxies (``X-Forwarded-For`` or ``Forwarded``).

A forwarding header is believed only when the TCP peer is a trusted proxy, and only as far as
trusted proxies wrote it: the list is walked from the right (the entry the nearest proxy
appended) past trusted addresses, and the first untrusted one is the client. Entries a client
put in the header itself sit to the left of that and are never reached, so a client cannot
choose its own address. Only the one header the proxy is configured to write is read (a proxy
that writes ``X-Forwarded-For`` passes a client's own ``Forwarded`` header through unchanged).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, Literal

from fsm_voice.errors import ConfigError

__all__ = ["FORWARDED_HEADERS", "Network", "client_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
FORWARDED_HEADERS: Final = ("x-forwarded-for", "forwarded")
MAX_HOPS: Final = 32


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "127.0.0.1", "::1"]`` -> networks. Raises :class:`ConfigError`."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigError.invalid(
                "trusted proxy", value, "an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _forwarded_for(node: str) -> str:
    """The address of an RFC 7239 ``for=`` node: ``"[2001:db8::1]:4711"``, ``192.0.2.1:80``."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:  # IPv4 with a port
        return node.partition(":")[0]
    return node


def _hops(header: ForwardedHeader, values: Sequence[str]) -> list[str]:
    hops: list[str] = []
    for value in values:
        if header == "x-forwarded-for":
            hops.extend(part.strip() for part in value.split(","))
        else:
            for element in value.split(","):
                for pair in element.split(";"):
                    name, sep, node = pair.partition("=")
                    if sep and name.strip().lower() == "for":
                        hops.append(_forwarded_for(node))
    return hops[-MAX_HOPS:]


def client_address(
    remote: str | None,
    header_values: Sequence[str],
    trusted: Sequence[Network],
    header: ForwardedHeader = "x-forwarded-for",
) -> str | None:
    """The client's address: ``remote`` (the TCP peer) unless it is a trusted proxy, then the
    rightmost untrusted hop of the forwarding header's values. When a trusted proxy forwarded
    something that is not an address (``unknown``, an obfuscated name), the last trusted hop
    stands for the client."""
    if not trusted or remote is None:
        return remote
    peer = _ip(remote)
    if peer is None or not any(peer in net for net in trusted):
        return remote
    nearest = str(peer)
    for hop in reversed(_hops(header, header_values)):
        ip = _ip(hop)
        if ip is None:
            return nearest
        if not any(ip in net for net in trusted):
            return str(ip)
        nearest = str(ip)
    return nearest
