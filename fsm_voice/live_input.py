"""The Live API's ``session.input`` rules (reference ``openai-live.md`` §1.2), shared by the local
peer (which rejects what the real API rejects) and the broker proxy (which also limits roles).

An item is ``{"type": "message", "role": ROLE, "content": [PART], "id"?: str,
"status"?: "incomplete" | "completed" | null}`` with no other key; ROLE is ``developer`` or
``user`` (PART ``{"type": "input_text", "text": str}``) or ``assistant`` (PART ``{"type": "text" |
"output_text", "text": str}``), exactly one part; no ``system`` role. At most
:data:`~fsm_voice.conversation.LIVE_MAX_MESSAGES` items and
:data:`~fsm_voice.conversation.LIVE_MAX_TOKENS` tokens by
:func:`~fsm_voice.conversation.estimate_tokens` (the estimate the conversation's
``live_input()`` budgets with, so what it produces passes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final

from fsm_voice.conversation import LIVE_MAX_MESSAGES, LIVE_MAX_TOKENS, estimate_tokens
from fsm_voice.errors import FsmVoiceError

__all__ = ["LIVE_INPUT_ROLES", "LiveInputError", "validate_live_input"]

LIVE_INPUT_ROLES: Final = frozenset({"developer", "user", "assistant"})
_PART_TYPES: Final = {
    "developer": frozenset({"input_text"}),
    "user": frozenset({"input_text"}),
    "assistant": frozenset({"text", "output_text"}),
}
_ITEM_KEYS: Final = frozenset({"type", "role", "content", "id", "status"})
_STATUSES: Final = (None, "incomplete", "completed")


class LiveInputError(FsmVoiceError, ValueError):
    """A ``session.input`` the Live API (or the broker's policy) does not accept: ``code`` and
    ``param`` as an OpenAI error body would carry them."""

    def __init__(self, message: str, code: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def validate_live_input(
    items: object,
    *,
    roles: Collection[str] = LIVE_INPUT_ROLES,
    max_messages: int = LIVE_MAX_MESSAGES,
    max_tokens: int = LIVE_MAX_TOKENS,
    count_tokens: Callable[[str], int] = estimate_tokens,
    path: str = "session.input",
) -> list[dict[str, Any]]:
    """Check ``items`` against §1.2 (and ``roles``, a subset of the API's); returns them.
    Raises :class:`LiveInputError` naming the first offending field."""
    if not isinstance(items, list):
        raise LiveInputError(
            f"Invalid type for '{path}': expected an array, but got {_kind(items)} instead.",
            "invalid_type", path)
    if len(items) > max_messages:
        raise LiveInputError(
            f"Invalid '{path}': array too long. Expected an array with maximum length "
            f"{max_messages}, but got an array with length {len(items)} instead.",
            "array_above_max_length", path)
    tokens = 0
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise LiveInputError(
                f"Invalid type for '{at}': expected an object, but got {_kind(item)} instead.",
                "invalid_type", at)
        for key in item:
            if key not in _ITEM_KEYS:
                name = f"{at}.{str(key)[:64]}"
                raise LiveInputError(f"Unknown parameter: '{name}'.", "unknown_parameter", name)
        if item.get("type", "message") != "message":
            raise LiveInputError(
                f"Invalid value for '{at}.type': expected 'message'.", "invalid_value",
                f"{at}.type")
        role = item.get("role")
        if role not in LIVE_INPUT_ROLES:
            raise LiveInputError(
                f"Invalid value for '{at}.role': {str(role)[:32]!r}. Supported values are: "
                "'developer', 'user', 'assistant'.", "invalid_value", f"{at}.role")
        if role not in roles:
            raise LiveInputError(
                f"'{at}.role' {role!r} is not allowed here (allowed: "
                f"{', '.join(sorted(roles))}).", "role_not_allowed", f"{at}.role")
        if "id" in item and not isinstance(item["id"], str):
            raise LiveInputError(
                f"Invalid type for '{at}.id': expected a string, but got {_kind(item['id'])} "
                "instead.", "invalid_type", f"{at}.id")
        if item.get("status") not in _STATUSES:
            raise LiveInputError(
                f"Invalid value for '{at}.status': expected 'incomplete', 'completed' or null.",
                "invalid_value", f"{at}.status")
        content = item.get("content")
        if not isinstance(content, list) or len(content) != 1:
            raise LiveInputError(
                f"Invalid '{at}.content': expected an array with exactly one content part.",
                "invalid_value", f"{at}.content")
        part = content[0]
        pat = f"{at}.content[0]"
        if not isinstance(part, dict):
            raise LiveInputError(
                f"Invalid type for '{pat}': expected an object, but got {_kind(part)} instead.",
                "invalid_type", pat)
        for key in part:
            if key not in ("type", "text"):
                name = f"{pat}.{str(key)[:64]}"
                raise LiveInputError(f"Unknown parameter: '{name}'.", "unknown_parameter", name)
        allowed = _PART_TYPES[role]
        if part.get("type") not in allowed:
            raise LiveInputError(
                f"Invalid value for '{pat}.type' of a {role} message: expected "
                f"{' or '.join(repr(t) for t in sorted(allowed))}.", "invalid_value",
                f"{pat}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise LiveInputError(
                f"Invalid type for '{pat}.text': expected a string, but got {_kind(text)} "
                "instead.", "invalid_type", f"{pat}.text")
        tokens += count_tokens(text)
        if tokens > max_tokens:
            raise LiveInputError(
                f"Invalid '{path}': more than {max_tokens} tokens (estimated) at item {i}.",
                "input_too_long", path)
    return items
