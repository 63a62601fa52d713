"""Token broker: a small service that holds the real API key and hands short-lived ``ek_``
client secrets to authenticated app clients (rate-limited, audited). See
:mod:`fsm_voice.broker.app`."""

from .app import (
    DEFAULT_UPSTREAM,
    HEALTH_PATH,
    TOKEN_PATH,
    BrokerConfig,
    ClientRegistry,
    TokenBroker,
    hash_secret,
)
from .audit import AuditEntry, AuditLog
from .ratelimit import RateLimiter, RatePolicy

__all__ = [
    "DEFAULT_UPSTREAM",
    "HEALTH_PATH",
    "TOKEN_PATH",
    "AuditEntry",
    "AuditLog",
    "BrokerConfig",
    "ClientRegistry",
    "RateLimiter",
    "RatePolicy",
    "TokenBroker",
    "hash_secret",
]
