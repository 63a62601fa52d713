"""The conversation a session carries across restarts, and its replay (sans-IO).

:class:`Conversation` keeps every conversation item the server reported, in the server's order,
under the conversation's own stable id (:attr:`Item.id`). Each call has its own server ids; the
model maps the current call's ids (and every earlier alias) to the stable id. A replay sends
each item with ``item.id`` set to its stable id, so when the new call echoes it back
(``conversation.item.created`` / ``added`` / ``done``) the echo is recognised and never stored
twice. A backend that ignores client ids is handled too: an echo with an unknown id that matches
the next pending replayed item (same type, role and text) is taken as that item.

Updates (transcripts, ``*.done``), truncations (``conversation.item.truncated``: the server drops
the transcript of the truncated part, so does the model) and deletions
(``conversation.item.deleted``) follow the item. The model is bounded: the oldest items are
evicted beyond ``limit`` and :meth:`Conversation.observe` returns what it evicted.

Replay fits the backend:

* Realtime (:meth:`Conversation.realtime_replay`): one ``conversation.item.create`` per item;
  assistant turns as ``output_text`` (their audio cannot be re-created, their transcript can);
  function calls and outputs as themselves.
* Live (:meth:`Conversation.live_input`): the ``input`` list of a new session, at most
  :data:`LIVE_MAX_MESSAGES` messages and :data:`LIVE_MAX_TOKENS` tokens by
  :func:`estimate_tokens` (or the counter you pass); one text part per message; function items
  and audio without a transcript cannot be expressed and are reported.

When a replay must be cut it keeps the newest items (a contiguous suffix: it never skips an item
to fit an older one) and sends them in their original order. What was cut or could not be
replayed is in the :class:`ReplayReport`, never dropped silently.
"""

from __future__ import annotations

import collections
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

import attrs

from fsm_voice.errors import FsmVoiceError

LIVE_MAX_MESSAGES: Final = 128
"""Live API ``session.input``: at most this many messages."""
LIVE_MAX_TOKENS: Final = 8192
"""Live API ``session.input``: at most this many rendered tokens."""

ItemType = Literal["message", "function_call", "function_call_output"]
ITEM_TYPES: Final[tuple[str, ...]] = ("message", "function_call", "function_call_output")
ROLES: Final[tuple[str, ...]] = ("user", "assistant", "system", "developer")

_ITEM_EVENTS: Final = frozenset({
    "conversation.item.created", "conversation.item.added", "conversation.item.done",
    "conversation.item.retrieved", "response.output_item.done",
})
# Events that carry the final text of one content part: type -> key of the text.
_PART_TEXT_EVENTS: Final[Mapping[str, str]] = {
    "conversation.item.input_audio_transcription.completed": "transcript",
    "response.output_audio_transcript.done": "transcript",
    "response.audio_transcript.done": "transcript",  # beta name
    "response.output_text.done": "text",
    "response.text.done": "text",  # beta name
}


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate for one message: 4 tokens of per-message framing plus
    one token per 3 UTF-8 bytes. English BPE tokens average ~4 characters, so this over-counts
    English by about a third (a replay it accepts fits the backend's limit); a CJK character is
    3 bytes and about one token. Pass an exact counter to the replay methods if you have one."""
    return 4 + math.ceil(len(text.encode("utf-8")) / 3)


def new_item_id() -> str:
    """A conversation item id: ``fv_`` + 16 hex digits (19 characters; Realtime item ids must
    stay at or under 32)."""
    return f"fv_{secrets.token_hex(8)}"


@attrs.frozen
class Item:
    """One conversation item as the conversation keeps it (text only, never audio)."""

    id: str
    """The conversation's stable id (sent as ``item.id`` when the item is replayed)."""
    type: ItemType
    role: str = ""
    """``message`` only: user, assistant, system or developer."""
    parts: tuple[str | None, ...] = ()
    """``message``: the text (or transcript) of each content part; None while unknown or after
    a truncation removed it."""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str = ""
    truncated: bool = False

    @property
    def text(self) -> str:
        """The message's known text, parts joined by newlines ("" when there is none)."""
        return "\n".join(p for p in self.parts if p)

    @property
    def replayable(self) -> bool:
        """Whether the item can be re-created as text (a message needs some text)."""
        if self.type == "message":
            return bool(self.text)
        return bool(self.call_id)

    def realtime_item(self) -> dict[str, Any]:
        """The item for a Realtime ``conversation.item.create`` (``id`` = the stable id)."""
        if self.type == "function_call":
            return {"id": self.id, "type": "function_call", "call_id": self.call_id,
                    "name": self.name, "arguments": self.arguments}
        if self.type == "function_call_output":
            return {"id": self.id, "type": "function_call_output", "call_id": self.call_id,
                    "output": self.output}
        kind = "output_text" if self.role == "assistant" else "input_text"
        return {"id": self.id, "type": "message", "role": self.role,
                "content": [{"type": kind, "text": p} for p in self.parts if p]}

    def live_message(self) -> dict[str, Any]:
        """The item as one Live ``input`` message (one text part; system becomes developer)."""
        role = {"system": "developer"}.get(self.role, self.role)
        kind = "output_text" if role == "assistant" else "input_text"
        return {"type": "message", "id": self.id, "role": role,
                "content": [{"type": kind, "text": self.text}]}

    def matches(self, other: Item) -> bool:
        """Same content (type, role, text, call): how an echo without our id is recognised."""
        return (self.type, self.role, self.text, self.call_id, self.name, self.arguments,
                self.output) == (other.type, other.role, other.text, other.call_id, other.name,
                                 other.arguments, other.output)


class ConversationError(FsmVoiceError, ValueError):
    """An item or replay budget the conversation cannot take (bad input from the caller)."""


@attrs.frozen
class ReplayReport:
    """What one replay sent and what it could not send (stable ids, original order)."""

    backend: Literal["realtime", "live"]
    replayed: tuple[str, ...]
    cut: tuple[str, ...] = ()
    """Items left out because the replay budget was spent (always the oldest)."""
    unreplayable: tuple[str, ...] = ()
    """Items the backend cannot re-create as text (audio without transcript; function items on
    Live)."""
    tokens: int = 0
    """Estimated tokens of what was replayed."""

    @property
    def complete(self) -> bool:
        return not self.cut and not self.unreplayable

    def describe(self) -> str:
        return (f"{self.backend} replay: {len(self.replayed)} item(s) replayed (~{self.tokens} "
                f"tokens), {len(self.cut)} cut by the budget (oldest first), "
                f"{len(self.unreplayable)} not replayable as text")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def item_from_wire(raw: Mapping[str, Any], item_id: str) -> Item | None:
    """The conversation's view of a wire item (None for types it does not keep)."""
    itype = raw.get("type")
    if itype == "message":
        role = raw.get("role")
        if role not in ROLES:
            return None
        parts: list[str | None] = []
        for part in raw.get("content") or ():
            if isinstance(part, Mapping):
                parts.append(_text(part.get("text")) or _text(part.get("transcript")))
        return Item(item_id, "message", str(role), tuple(parts))
    if itype == "function_call":
        return Item(item_id, "function_call", call_id=str(raw.get("call_id") or ""),
                    name=str(raw.get("name") or ""), arguments=str(raw.get("arguments") or ""))
    if itype == "function_call_output":
        return Item(item_id, "function_call_output", call_id=str(raw.get("call_id") or ""),
                    output=str(raw.get("output") or ""))
    return None


def _merge(old: Item, new: Item) -> Item:
    """An update of ``old``: what the update knows wins, the rest is kept (an ``added`` event
    carries no transcript yet; the ``done`` event after it does)."""
    n = max(len(old.parts), len(new.parts))
    old_parts = old.parts + (None,) * (n - len(old.parts))
    new_parts = new.parts + (None,) * (n - len(new.parts))
    return attrs.evolve(
        old, role=new.role or old.role,
        parts=tuple(b if b is not None else a for a, b in zip(old_parts, new_parts, strict=True)),
        call_id=new.call_id or old.call_id, name=new.name or old.name,
        arguments=new.arguments or old.arguments, output=new.output or old.output)


class Conversation:
    """Ordered conversation items under stable ids, across calls. Sans-IO: feed it the server
    events of the current call (:meth:`observe`), tell it when a new call begins
    (:meth:`begin_call`), ask it for a replay."""

    def __init__(self, limit: int = 200, *,
                 new_id: Callable[[], str] = new_item_id) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConversationError(f"limit must be a positive int, got {limit!r}")
        self.limit = limit
        self._new_id = new_id
        self._items: collections.OrderedDict[str, Item] = collections.OrderedDict()
        self._alias: dict[str, str] = {}
        """Every server id seen (this call or earlier ones) -> stable id."""
        self._current: dict[str, str] = {}
        """Stable id -> its server id in the current call."""
        self._in_call: dict[str, str] = {}
        """Server id in the current call -> stable id (how server events are resolved: a new
        call's ids are never read as an earlier call's)."""
        self._pending_replay: collections.deque[str] = collections.deque()
        self.calls = 0
        self.evicted_total = 0

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(list(self._items.values()))

    def __contains__(self, stable_id: object) -> bool:
        return stable_id in self._items

    @property
    def items(self) -> tuple[Item, ...]:
        return tuple(self._items.values())

    def get(self, item_id: str) -> Item | None:
        """The item with this stable id or any server id it ever had."""
        return self._items.get(self.resolve(item_id) or "")

    def resolve(self, item_id: str) -> str | None:
        """The stable id for a stable or server id (None if unknown)."""
        if item_id in self._items:
            return item_id
        return self._alias.get(item_id)

    def server_id(self, stable_id: str) -> str | None:
        """The item's id in the current call (None: not (yet) known to this call)."""
        return self._current.get(stable_id)

    def known_in_call(self, item_id: str) -> bool:
        """Whether the current call has echoed this item (stable or server id)."""
        sid = self.resolve(item_id)
        return sid is not None and sid in self._current

    # -- calls -----------------------------------------------------------------------------
    def begin_call(self) -> None:
        """A new call starts: none of the items exists on its server yet."""
        self.calls += 1
        self._current.clear()
        self._in_call.clear()
        self._pending_replay.clear()

    def clear(self) -> None:
        """Forget everything (a new conversation)."""
        self._items.clear()
        self._alias.clear()
        self._current.clear()
        self._in_call.clear()
        self._pending_replay.clear()

    # -- server events ---------------------------------------------------------------------
    def observe(self, event: Mapping[str, Any]) -> tuple[Item, ...]:
        """Apply one server event of the current call; returns the items evicted to stay within
        ``limit`` (usually none). Events it does not model are ignored."""
        etype = event.get("type")
        if etype in _ITEM_EVENTS:
            raw = event.get("item")
            if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) and raw["id"]:
                prev = event.get("previous_item_id")
                return self._upsert(raw, prev if isinstance(prev, str) else None)
        elif etype == "conversation.item.deleted":
            sid = self._stable(event.get("item_id"))
            if sid is not None:
                self._remove(sid)
        elif etype == "conversation.item.truncated":
            sid = self._stable(event.get("item_id"))
            index = event.get("content_index")
            if sid is not None and isinstance(index, int) and not isinstance(index, bool):
                item = self._items[sid]
                parts = list(item.parts)
                if 0 <= index < len(parts):
                    parts[index] = None  # the server drops the unheard transcript
                self._items[sid] = attrs.evolve(item, parts=tuple(parts), truncated=True)
        elif isinstance(etype, str) and etype in _PART_TEXT_EVENTS:
            sid = self._stable(event.get("item_id"))
            index = event.get("content_index", 0)
            text = _text(event.get(_PART_TEXT_EVENTS[etype]))
            if (sid is not None and text is not None and isinstance(index, int)
                    and not isinstance(index, bool) and 0 <= index < 64):
                item = self._items[sid]
                parts = list(item.parts) + [None] * max(0, index + 1 - len(item.parts))
                parts[index] = text
                self._items[sid] = attrs.evolve(item, parts=tuple(parts))
        elif etype == "response.function_call_arguments.done":
            sid = self._stable(event.get("item_id"))
            args = event.get("arguments")
            if sid is not None and isinstance(args, str):
                self._items[sid] = attrs.evolve(self._items[sid], arguments=args)
        return ()

    def _stable(self, server_id: Any) -> str | None:
        """The stable id of a server id of the current call."""
        return self._in_call.get(server_id) if isinstance(server_id, str) else None

    def _upsert(self, raw: Mapping[str, Any], prev: str | None) -> tuple[Item, ...]:
        server_id: str = raw["id"]
        sid = self._in_call.get(server_id)
        if sid is None and server_id in self._pending_replay:
            sid = server_id  # the echo of a replayed item under its stable id
        if sid is None:
            item = item_from_wire(raw, server_id)
            if item is None:
                return ()
            sid = self._match_pending(item)
        if sid is not None:
            new = item_from_wire(raw, sid)
            if new is not None and new.type == self._items[sid].type:
                self._items[sid] = _merge(self._items[sid], new)
            self._link(sid, server_id)
            return ()
        # A new item: its first server id is its stable id (unless that id is already taken).
        sid = server_id if server_id not in self._items else self._new_id()
        new_item = item_from_wire(raw, sid)
        assert new_item is not None
        after = self._stable(prev)
        self._items[sid] = new_item
        if after is not None and after in self._items:
            keys = list(self._items)
            if keys[-2] != after:  # an insertion, not an append: rebuild in order
                keys.remove(sid)
                keys.insert(keys.index(after) + 1, sid)
                self._items = collections.OrderedDict((k, self._items[k]) for k in keys)
        self._link(sid, server_id)
        evicted: list[Item] = []
        while len(self._items) > self.limit:
            old_id, old = self._items.popitem(last=False)
            self._forget(old_id)
            evicted.append(old)
        self.evicted_total += len(evicted)
        return tuple(evicted)

    def _match_pending(self, item: Item) -> str | None:
        """An echo with an id we do not know: the next pending replayed item, if it has the
        same content (a backend that assigned its own id)."""
        while self._pending_replay and self._pending_replay[0] not in self._items:
            self._pending_replay.popleft()
        if self._pending_replay and self._items[self._pending_replay[0]].matches(item):
            return self._pending_replay.popleft()
        return None

    def _link(self, sid: str, server_id: str) -> None:
        self._alias.pop(server_id, None)  # re-inserted last: the dict is oldest-first
        self._alias[server_id] = sid
        if len(self._alias) > 8 * self.limit:  # bounded: forget the oldest earlier-call ids
            for alias in list(self._alias)[: len(self._alias) - 8 * self.limit]:
                if self._in_call.get(alias) is None and alias not in self._items:
                    del self._alias[alias]
        old = self._current.get(sid)
        if old is not None and old != server_id:
            self._in_call.pop(old, None)
        self._current[sid] = server_id
        self._in_call[server_id] = sid
        if sid in self._pending_replay:
            self._pending_replay.remove(sid)

    def _remove(self, sid: str) -> None:
        self._items.pop(sid, None)
        self._forget(sid)

    def _forget(self, sid: str) -> None:
        current = self._current.pop(sid, None)
        if current is not None:
            self._in_call.pop(current, None)
        for alias in [a for a, s in self._alias.items() if s == sid]:
            del self._alias[alias]
        if sid in self._pending_replay:
            self._pending_replay.remove(sid)

    # -- app events ------------------------------------------------------------------------
    def translate(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """A client event with ``item_id`` / ``previous_item_id`` of an earlier call rewritten
        to the item's id in the current call (unchanged when nothing needs rewriting)."""
        out: dict[str, Any] | None = None
        for key in ("item_id", "previous_item_id"):
            value = event.get(key)
            if isinstance(value, str):
                sid = self.resolve(value)
                current = self._current.get(sid) if sid is not None else None
                if current is not None and current != value:
                    out = out if out is not None else dict(event)
                    out[key] = current
        return out if out is not None else event

    # -- replay ----------------------------------------------------------------------------
    def _plan(self, backend: Literal["realtime", "live"], max_items: int | None,
              max_tokens: int | None, count: Callable[[str], int],
              ok: Callable[[Item], bool]) -> tuple[list[Item], ReplayReport]:
        for name, value in (("max_items", max_items), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ConversationError(f"{name} must be a non-negative int or None, "
                                        f"got {value!r}")
        unreplayable: list[str] = []
        chosen: list[Item] = []
        cut: list[str] = []
        tokens = 0
        for item in reversed(self._items.values()):  # newest first
            if not ok(item):
                unreplayable.append(item.id)
                continue
            if cut:
                cut.append(item.id)
                continue
            cost = count(item.text if item.type == "message" else
                         item.arguments + item.output + item.name)
            if ((max_items is not None and len(chosen) >= max_items)
                    or (max_tokens is not None and tokens + cost > max_tokens)):
                cut.append(item.id)
                continue
            chosen.append(item)
            tokens += cost
        chosen.reverse()
        report = ReplayReport(backend, tuple(i.id for i in chosen), tuple(reversed(cut)),
                              tuple(reversed(unreplayable)), tokens)
        return chosen, report

    def realtime_replay(self, *, max_items: int | None = None, max_tokens: int | None = None,
                        count_tokens: Callable[[str], int] = estimate_tokens,
                        ) -> tuple[list[dict[str, Any]], ReplayReport]:
        """The ``conversation.item.create`` events that re-create the conversation on a new
        Realtime call (oldest first), and the report. Items the current call already holds are
        not replayed again. Call after :meth:`begin_call`."""
        chosen, report = self._plan("realtime", max_items, max_tokens, count_tokens,
                                    lambda i: i.replayable)
        events = []
        for item in chosen:
            if item.id in self._current:
                continue
            self._pending_replay.append(item.id)
            events.append({"type": "conversation.item.create", "item": item.realtime_item()})
        return events, report

    def live_input(self, *, max_messages: int = LIVE_MAX_MESSAGES,
                   max_tokens: int = LIVE_MAX_TOKENS,
                   count_tokens: Callable[[str], int] = estimate_tokens,
                   ) -> tuple[list[dict[str, Any]], ReplayReport]:
        """The Live ``session.input`` list that seeds a new session with this conversation
        (oldest first), within the Live limits, and the report."""
        chosen, report = self._plan(
            "live", max_messages, max_tokens, count_tokens,
            lambda i: i.type == "message" and i.role in ROLES and bool(i.text))
        return [i.live_message() for i in chosen], report


def assign_item_id(event: Mapping[str, Any], new_id: Callable[[], str] = new_item_id,
                   ) -> Mapping[str, Any]:
    """A ``conversation.item.create`` whose item has no id gets one (so its echo, and a re-send
    after a restart, are recognised); any other event is returned unchanged."""
    if event.get("type") != "conversation.item.create":
        return event
    item = event.get("item")
    if not isinstance(item, Mapping) or (isinstance(item.get("id"), str) and item["id"]):
        return event
    return {**event, "item": {**item, "id": new_id()}}
