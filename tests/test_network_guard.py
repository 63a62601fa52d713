"""The guard in conftest refuses traffic that would leave the machine."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import OutsideTrafficError, _violations


def test_udp_to_public_stun_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OutsideTrafficError):
        s.sendto(b"x", ("74.125.250.129", 19302))  # outside-address-ok: proves the guard
    _violations.clear()


def test_name_lookup_of_outside_host_is_refused() -> None:
    with pytest.raises(OutsideTrafficError):
        socket.getaddrinfo("stun.l.google.com", 19302)  # outside-address-ok: proves the guard
    _violations.clear()


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"x", s.getsockname())
        assert s.recv(10) == b"x"
