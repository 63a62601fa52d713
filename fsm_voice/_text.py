"""Server-controlled text made safe for a terminal or a log line.

Text from a remote end (an error message, an HTTP body, an SDP line) may carry ANSI escape
sequences (colours, cursor moves, window titles, OSC 8 links), bidirectional overrides or line
breaks that forge extra log lines. :func:`printable` turns every such character into a visible
escape (``\\x1b``, ``\\u202e``, ``\\n``), so what is shown is exactly what was received.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["printable"]

_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _visible(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int | None = 2000) -> str:
    """``str(text)`` with control, format (bidi, zero-width), surrogate, private-use and
    unassigned characters and line/paragraph separators escaped; cut to ``limit`` characters
    (``...`` marks a cut; None: no limit)."""
    raw = text if isinstance(text, str) else str(text)
    if limit is not None and len(raw) > limit:
        raw = raw[:limit] + "..."
    if raw.isprintable():  # fast path: nothing to escape (isprintable is False for Cc/Cf/Z*)
        return raw
    return "".join(
        _visible(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in raw
    )
