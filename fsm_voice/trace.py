"""Trace files: a session recorded as versioned JSON Lines (schema: ``specs/trace.md`` and
``fsm_voice/data/trace.schema.json``).

:class:`TraceWriter` subscribes to a session (``session.record_trace(path)``): every runtime
event with its outcome, source/target state, status, effects and generation; timer arms (the
effects) and fires (timer events with their token); the machine's random draws (so jitter
replays exactly); errors (redacted), metrics samples, quality alerts, signaling HTTP exchanges
(an :class:`aiohttp.TraceConfig`, :meth:`TraceWriter.http_trace_config`). Speech and assistant
audio spans are the ``speech_*`` / ``audio_*`` events. Nothing else of the session is written:
no token, no SDP, no conversation text, no ICE credential.

Version 2 (this writer) writes an event as a compact array line ``[t, gen, event, source,
target?, effects?, others?]`` that leaves out what the reader restores (:func:`compact`,
:func:`expand`); :func:`read_trace` reads versions 1 and 2 into the same full records.

Events reach the writer in batches from the dispatcher (``Dispatcher.add_trace_reader``: at
the end of each burst of events and before any other record) and are encoded at once into
bytes (a common event is a cached line template with its time formatted in; a batch of them
is one ``%`` format of the joined templates), which cost the garbage collector nothing to
keep; they are written every 1,024 lines, ``flush_interval`` after they were recorded at the
latest, and on close. The file is bounded (``max_bytes``): past it records are counted, not
written, and the ``end`` record says so.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs

from fsm_voice.dispatcher import Posted, TraceBatch, TraceEntry
from fsm_voice.effects import (
    ArmTimer,
    CancelTimer,
    CloseTransport,
    ConnectionUp,
    Effect,
    NewConversation,
    OpenTransport,
    ReportError,
)
from fsm_voice.errors import VoiceError, redact
from fsm_voice.machine import STATUS_OF
from fsm_voice.policy import QualityAlert
from fsm_voice.ports import ConnectionMetrics

if TYPE_CHECKING:
    import aiohttp

    from fsm_voice.session import VoiceSession

SCHEMA: Final = "fsm-voice-trace"
VERSION: Final = 2
"""The version this writer writes (compact event lines: ``specs/trace.md``)."""
READS: Final = (1, 2)
"""The versions :func:`read_trace` reads (into the same records)."""
SCHEMA_FILE: Final = Path(__file__).parent / "data" / "trace.schema.json"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
_BATCH: Final = 1024
FLUSH_INTERVAL: Final = 1.0
"""Seconds a buffered record may wait for its write (besides every ``_BATCH`` lines)."""
_KEY: Final = operator.itemgetter(1, 2, 3)
"""A trace entry's event, source and target (what a taken event's cached line is for)."""


class TraceError(ValueError):
    """A trace file that cannot be read: not JSON Lines, wrong schema or version, no header."""


def number(x: float | None) -> float | str | None:
    """A float for JSON: non-finite values as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def unnumber(x: object) -> float | None:
    """Inverse of :func:`number`."""
    if x is None:
        return None
    if isinstance(x, str):
        return float(x)
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    raise TraceError(f"expected a number, got {x!r}")


def encode_effect(e: Effect) -> dict[str, Any]:
    if isinstance(e, ArmTimer):
        return {"type": "arm", "timer": e.timer.value, "delay": number(e.delay)}
    if isinstance(e, CancelTimer):
        return {"type": "cancel", "timer": e.timer.value}
    if isinstance(e, OpenTransport):
        return {"type": "open", "reason": e.reason.value, "attempt": e.attempt}
    if isinstance(e, CloseTransport):
        return {"type": "close"}
    if isinstance(e, ReportError):
        return {"type": "report", "code": e.code, "severity": e.severity}
    if isinstance(e, NewConversation):
        return {"type": "new_conversation"}
    if isinstance(e, ConnectionUp):
        return {"type": "connection_up", "replay": e.replay}
    raise TypeError(f"unknown effect {e!r}")


_LINE_FIELDS: Final = frozenset({"kind", "t", "gen", "event", "source", "target", "effects"})
"""An event record's fields that have a place in its version-2 line (the rest go in its
object of other fields, or are left out because the reader restores them)."""
_EFFECT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "arm": ("timer", "delay"), "cancel": ("timer",), "open": ("reason", "attempt"),
    "close": (), "report": ("code", "severity"), "new_conversation": (),
    "connection_up": ("replay",)}
"""An effect's fields in the order of its version-2 array (after its type)."""


def compact(record: Mapping[str, Any],
            status_of: Mapping[str, str] = STATUS_OF) -> list[Any]:
    """The version-2 line of a full event record: ``[t, gen, event, source, target?,
    effects?, others?]``. ``target`` (a string) is left out when it is ``source``, ``effects``
    (an array of ``[type, field...]`` arrays) when empty, ``others`` (an object) when it would
    be empty; it holds what is not restored by the reader (:func:`expand`): ``outcome`` unless
    ``"taken"``, ``token`` unless equal to ``gen``, ``status`` unless the target's in
    ``status_of`` (the header's), and ``detail``, ``timer``, ``severity``, ``code``,
    ``retry_after``, ``expires_in``, ``draws`` when present."""
    source, target = record["source"], record["target"]
    line: list[Any] = [record["t"], record["gen"], record["event"], source]
    if target != source:
        line.append(target)
    if record["effects"]:
        line.append([[e["type"], *(e[k] for k in _EFFECT_KEYS[e["type"]])]
                     for e in record["effects"]])
    others = {k: v for k, v in record.items() if k not in _LINE_FIELDS}
    if others.get("outcome") == "taken":
        del others["outcome"]
    token = others.get("token")
    if type(token) is int and token == record["gen"]:
        del others["token"]
    if others.get("status") == status_of.get(target, ""):
        del others["status"]
    if others:
        line.append(others)
    return line


def expand(line: list[Any], status_of: Mapping[str, str] = STATUS_OF) -> dict[str, Any]:
    """The full event record of a version-2 line (inverse of :func:`compact`), as version 1
    wrote it; :class:`TraceError` when the line does not have that shape (the fields' types
    are checked on the record)."""
    if len(line) < 4 or len(line) > 7:
        raise TraceError(f"an event line is [t, gen, event, source, target?, effects?, "
                         f"others?], got {len(line)} items")
    t, gen, event, source = line[:4]
    target, effects, others = source, [], {}
    rest = line[4:]
    if rest and isinstance(rest[0], str):
        target = rest.pop(0)
    if rest and isinstance(rest[0], list):
        effects = [_effect(e) for e in rest.pop(0)]
    if rest and isinstance(rest[0], dict):
        others = rest.pop(0)
    if rest:
        raise TraceError(f"an event line is [t, gen, event, source, target?, effects?, "
                         f"others?]: unexpected {rest[0]!r}")
    record: dict[str, Any] = {
        "kind": "event", "t": t, "gen": gen,
        "token": others.get("token", gen), "event": event,
        "outcome": others.get("outcome", "taken"), "source": source, "target": target,
        "status": others["status"] if "status" in others else
        status_of.get(target, "") if isinstance(target, str) else None,
        "effects": effects}
    record.update((k, v) for k, v in others.items() if k not in record)
    return record


def _effect(e: object) -> object:
    """An effect's object from its version-2 array (anything else as it is: the record's
    check names it)."""
    if not isinstance(e, list) or not e or not isinstance(e[0], str):
        return e
    keys = _EFFECT_KEYS.get(e[0])
    if keys is None or len(e) != len(keys) + 1:
        return e
    return {"type": e[0], **dict(zip(keys, e[1:], strict=True))}


def policy_record(session: VoiceSession) -> dict[str, Any]:
    """What the machine was built with (no ICE server, no credential)."""
    m = session.machine
    return {"retry": attrs.asdict(m.retry), "ice": attrs.asdict(m.ice),
            "rollover": {k: number(v) for k, v in attrs.asdict(m.rollover_policy).items()},
            "quality": attrs.asdict(session.policy.quality)}


class _TapRandom(random.Random):
    """The machine's random source, with every draw noted for the trace (jitter replays).

    Before a draw, ``before`` hands the dispatcher's pending records to the writer: the draws
    noted then belong to the event being dispatched, the first of the next batch."""

    def __init__(self, inner: random.Random | None, draws: list[float],
                 before: Callable[[], None]) -> None:
        super().__init__()
        self._inner = inner
        self._draws = draws
        self._before = before

    def random(self) -> float:
        x = self._inner.random() if self._inner is not None else super().random()
        if not self._draws:
            self._before()
        self._draws.append(x)
        return x


class TraceWriter:
    """Writes one session's trace; use :meth:`attach` (or ``session.record_trace``)."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 wall_clock: float | None = None,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
            raise ValueError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
        if not (isinstance(flush_interval, int | float) and 0 < flush_interval < math.inf):
            raise ValueError(f"flush_interval must be a positive number of seconds, "
                             f"got {flush_interval!r}")
        self.flush_interval = float(flush_interval)
        """Seconds a recorded line may wait in memory before it is written."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._file: IO[bytes] | None = self.path.open("wb")
        self._wall = time.time() if wall_clock is None else wall_clock
        self._buf: list[bytes] = []
        """Encoded lines (UTF-8), one line or a batch's per item."""
        self._draws: list[float] = []
        self._clock: Any = None
        self.written = 0
        """Records written so far."""
        self.dropped = 0
        """Records not written because the file reached ``max_bytes``."""
        self.bytes = 0
        self._effects_cache: dict[tuple[Effect, ...], list[dict[str, Any]]] = {}
        self._rests: dict[tuple[int, int | None],
                          dict[tuple[str, ...], tuple[tuple[Effect, ...], bytes]]] = {}
        """Common events' effects and line templates (:meth:`_template`: the line with a
        ``%.6f`` for its time), by generation and token, then :data:`_KEY`."""
        self._lines = 0
        """Lines in ``_buf`` (an item is one line or a batch's)."""
        self._sync: Callable[[], None] | None = None
        """The recorded dispatcher's ``flush_trace`` (its pending events come first)."""
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def attach(cls, session: VoiceSession, path: str | os.PathLike[str], *,
               max_bytes: int = DEFAULT_MAX_BYTES,
               flush_interval: float = FLUSH_INTERVAL) -> TraceWriter:
        """Record ``session`` from now on to ``path`` (closed when the session exits)."""
        return cls(path, max_bytes=max_bytes, flush_interval=flush_interval).record(session)

    def record(self, session: VoiceSession) -> TraceWriter:
        """Subscribe to ``session`` and write the header. Attach before ``start``: a trace that
        begins mid-session is written but not replayable."""
        m = session.machine
        self._clock = session.clock
        replayable = m.state_id == "idle"
        self._sync = session.dispatcher.flush_trace
        m.rng = _TapRandom(m.rng, self._draws, self._sync)
        self._line({"kind": "header", "schema": SCHEMA, "version": VERSION,
                    "engine": "fast" if type(m).__name__ == "FastLifecycle" else "statemachine",
                    "wall_time": self._wall, "t0": session.clock.now(), "state": m.state_id,
                    "replayable": replayable, "policy": policy_record(session),
                    "status_of": dict(STATUS_OF)})
        session.dispatcher.add_trace_reader(self.traced_batch)
        session.on_error(self.error)
        session.on_metrics(self.metrics)
        session.on_alert(self.alert)

        async def close() -> None:
            self.close()

        session.closers.append(close)
        return self

    def http_session(self) -> aiohttp.ClientSession:
        """An HTTP client for the signaling whose exchanges are recorded (one connection per
        request, as the signaling's own); pass it as ``realtime_session(http=...)`` and close
        it when the session is done."""
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     trace_configs=[self.http_trace_config()])

    # -- subscribers (called from the dispatcher: keep them cheap) ------------------------------
    def traced_batch(self, batch: TraceBatch) -> None:
        """Runtime events, handed over by the dispatcher in batches (``add_trace_reader``) and
        encoded at once (a string is not tracked by the garbage collector: buffered lines cost
        nothing to keep); written every :data:`_BATCH` lines, ``flush_interval`` seconds after
        they were recorded at the latest, and on close.

        A common event (taken, no parameter, seen before) is its cached line template with the
        time formatted in; a batch of nothing else, from one generation and token, is encoded
        by one ``%`` format of the joined templates (no Python code per event), any other batch
        event by event."""
        entries, items, gens = batch[0::3], batch[1::3], batch[2::3]
        if self._draws:  # made by the first event of this batch (see _TapRandom)
            draws = tuple(self._draws)
            self._draws.clear()
            self._buf.append(self._json(compact(self._event(entries[0], items[0], gens[0],
                                                            draws))))
            self._lines += 1
            del entries[0], items[0], gens[0]
        chunk = self._common(entries, items, gens)
        if chunk is not None:
            self._buf.append(chunk)
            self._lines += len(entries)
        else:
            self._each(entries, items, gens)
        if self._lines >= _BATCH:
            self._write_buffer()
        elif self._buf and self._timer is None:
            self._arm_timer()

    def _common(self, entries: list[TraceEntry], items: list[Any],
                gens: list[int]) -> bytes | None:
        """The lines of these events when all are common events of one transport generation
        and token (the usual burst), else None."""
        n = len(entries)
        if not n:
            return None
        gen, token = gens[0], items[0]
        if gens.count(gen) != n or items.count(token) != n:  # in C; an item is a token
            return None
        table = self._rests.get((gen, token))
        if table is None:
            return None
        # strict=False: a named tuple has 7 fields, the three columns are one length
        times, events, sources, targets, effects, outcomes, details = zip(*entries, strict=False)
        if outcomes.count("taken") != n or details.count("") != n:
            return None
        try:  # the cached effects and template of each event (a KeyError: one not seen yet)
            cached, templates = zip(*map(table.__getitem__,
                                         zip(events, sources, targets, strict=False)),
                                    strict=False)
        except KeyError:
            return None
        if cached != effects or not math.isfinite(sum(times)):  # inf/nan: the careful way
            return None
        return b"".join(templates) % times

    def _each(self, entries: list[TraceEntry], items: list[Any], gens: list[int]) -> None:
        """Encode these events one by one (caching the rest of common events' lines)."""
        append = self._buf.append
        n = 0
        for e, item, gen in zip(entries, items, gens, strict=True):
            t, outcome = e.time, e.outcome
            if outcome == "observed":
                continue  # metrics and alerts are written from their own subscribers
            if outcome == "taken" and not e.detail and t - t == 0.0 and \
                    not isinstance(item, Posted):  # a token: no parameter
                table = self._rests.get((gen, item))
                hit = None if table is None else table.get(_KEY(e))
                template = hit[1] if hit is not None and hit[0] == e.effects else \
                    self._template(e, gen, item)
                append(template % t)
            else:
                append(self._json(compact(self._event(e, item, gen, None))))
            n += 1
        self._lines += n

    def _arm_timer(self) -> None:
        """Write what is buffered ``flush_interval`` s from now (a quiet session's last events
        reach the file without waiting for more or for close); only on an asyncio loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a writer driven by hand): close writes the rest
        self._timer = loop.call_later(self.flush_interval, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.flush()

    @staticmethod
    def _json(obj: Mapping[str, Any] | list[Any]) -> bytes:
        return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()

    def _now(self) -> float:
        return float(self._clock.now()) if self._clock is not None else time.monotonic()

    def _add(self, record: Mapping[str, Any]) -> None:
        """Buffer a record that is not a runtime event (after the events recorded so far)."""
        if self._sync is not None:
            self._sync()
        self._buf.append(self._json(record))
        self._lines += 1
        if self._timer is None:
            self._arm_timer()

    def error(self, err: VoiceError) -> None:
        self._add({"kind": "error", "t": self._now(), "code": err.code,
                   "severity": str(err.severity), "source": str(err.source),
                   "http_status": err.http_status, "retry_after": err.retry_after,
                   "message": redact(err.message)})

    def metrics(self, m: ConnectionMetrics) -> None:
        self._add({"kind": "metrics", "t": self._now(), "rtt_ms": number(m.latency_ms),
                   "jitter_ms": number(m.jitter_ms), "packets_lost": m.packets_lost,
                   "packets_received": m.packets_received,
                   "loss_fraction": number(m.loss_fraction)})

    def alert(self, a: QualityAlert) -> None:
        self._add({"kind": "alert", "t": self._now(), "alert": a.kind,
                   "value": number(a.value), "threshold": number(a.threshold)})

    def signaling(self, *, method: str, url: str, status: int | None, elapsed: float,
                  error: str | None = None) -> None:
        """One signaling HTTP exchange (the URL is kept without query or credentials)."""
        parts = urllib.parse.urlsplit(url)
        where = f"{parts.scheme}://{parts.hostname or ''}"
        where += f":{parts.port}" if parts.port else ""
        self._add({"kind": "signaling", "t": self._now(), "method": method,
                   "url": where + parts.path, "http_status": status,
                   "elapsed_ms": round(elapsed * 1000.0, 3),
                   "error": redact(error) if error else None})

    def http_trace_config(self) -> aiohttp.TraceConfig:
        """An :class:`aiohttp.TraceConfig` recording every request of the client session it is
        given to (pass that session to ``realtime_session(http=...)``)."""
        import aiohttp

        cfg = aiohttp.TraceConfig()
        starts: dict[int, float] = {}

        async def on_start(_s: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
            starts[id(ctx)] = time.monotonic()

        async def on_end(_s: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
            t = starts.pop(id(ctx), time.monotonic())
            self.signaling(method=params.method, url=str(params.url),
                           status=params.response.status, elapsed=time.monotonic() - t)

        async def on_exc(_s: Any, ctx: Any,
                         params: aiohttp.TraceRequestExceptionParams) -> None:
            t = starts.pop(id(ctx), time.monotonic())
            self.signaling(method=params.method, url=str(params.url), status=None,
                           elapsed=time.monotonic() - t,
                           error=f"{type(params.exception).__name__}: {params.exception}")

        cfg.on_request_start.append(on_start)
        cfg.on_request_end.append(on_end)
        cfg.on_request_exception.append(on_exc)
        return cfg

    # -- encoding ---------------------------------------------------------------------------------
    def _effects(self, effects: tuple[Effect, ...]) -> list[dict[str, Any]]:
        if not effects:
            return []
        try:
            return self._effects_cache[effects]
        except KeyError:
            enc = self._effects_cache[effects] = [encode_effect(e) for e in effects]
            if len(self._effects_cache) > 4096:
                self._effects_cache.clear()
            return enc

    def _event(self, e: TraceEntry, item: Posted | int | None, gen: int,
               draws: tuple[float, ...] | None) -> dict[str, Any]:
        """The full record of an event, as :func:`read_trace` gives it (``item``: the posted
        item, or only its token when it has no parameter: see ``TraceBatch``); the file holds
        its :func:`compact` form."""
        out: dict[str, Any] = {"kind": "event", "t": round(e.time, 6), "event": e.event,
                               "outcome": e.outcome, "source": e.source, "target": e.target,
                               "status": STATUS_OF.get(e.target, ""), "gen": gen,
                               "effects": self._effects(e.effects)}
        if e.detail:
            out["detail"] = redact(e.detail)
        if not isinstance(item, Posted):
            out["token"] = item
        else:
            out["token"] = item.token
            if item.timer is not None:
                out["timer"] = item.timer.value
            if item.severity is not None:
                out["severity"] = item.severity
            if item.code:
                out["code"] = item.code
            if item.retry_after is not None:
                out["retry_after"] = number(item.retry_after)
            if item.expires_in is not None:
                out["expires_in"] = number(item.expires_in)
        if draws:
            out["draws"] = list(draws)
        return out

    def _template(self, e: TraceEntry, gen: int, token: int | None) -> bytes:
        """A common event's cached line template: its compact line with ``%.6f`` for the time."""
        table = self._rests.get((gen, token))
        if table is None or len(table) > 4096:
            if len(self._rests) > 64:
                self._rests.clear()
            table = self._rests[(gen, token)] = {}
        line = compact({"t": 0.0, "gen": gen, "token": token, "event": e.event,
                        "outcome": "taken", "source": e.source, "target": e.target,
                        "status": STATUS_OF.get(e.target, ""),
                        "effects": self._effects(e.effects)})
        rest = json.dumps(line[1:], separators=(",", ":"))[1:].replace("%", "%%")
        template = ("[%.6f," + rest + "\n").encode()
        table[_KEY(e)] = (e.effects, template)
        return template

    def _line(self, obj: Mapping[str, Any]) -> None:
        self._write(self._json(obj))

    def _write(self, text: bytes) -> None:
        if self._file is None:
            return
        if self.bytes + len(text) > self.max_bytes - 200:  # room for the end record
            self.dropped += 1
            return
        self._file.write(text)
        self.bytes += len(text)
        self.written += 1

    def flush(self) -> None:
        """Write everything recorded so far (the dispatcher's pending records included)."""
        if self._sync is not None:
            self._sync()
        self._write_buffer()

    def _write_buffer(self) -> None:
        """Write what is buffered (one write per batch)."""
        chunks, lines, self._buf, self._lines = self._buf, self._lines, [], 0
        if self._file is None:
            return
        size = sum(map(len, chunks))
        if self.bytes + size > self.max_bytes - 200:  # room for the end record
            for chunk in chunks:
                for line in chunk.splitlines(keepends=True):
                    self._write(line)
        else:
            self._file.writelines(chunks)
            self.bytes += size
            self.written += lines
        self._file.flush()

    def close(self) -> None:
        """Write the rest and the ``end`` record; idempotent."""
        if self._file is None:
            return
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sync = None
        f, self._file = self._file, None
        end = {"kind": "end", "t": self._now(), "records": self.written + 1,
               "dropped": self.dropped, "truncated": self.dropped > 0}
        f.write((json.dumps(end, separators=(",", ":")) + "\n").encode())
        f.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the other records of a trace file, of any version in :data:`READS`
    (version-2 event lines are restored to full records, the same as version 1's);
    :class:`TraceError` when it is not one this version reads."""
    records = list(iter_records(path))
    if not records or records[0].get("kind") != "header":
        raise TraceError(f"{path}: no header record (not an fsm-voice trace)")
    header = records[0]
    if header.get("schema") != SCHEMA:
        raise TraceError(f"{path}: schema {header.get('schema')!r}, expected {SCHEMA!r}")
    if header.get("version") not in READS or isinstance(header.get("version"), bool):
        raise TraceError(f"{path}: trace version {header.get('version')!r}; this fsm-voice "
                         f"reads versions {', '.join(map(str, READS))}")
    return header, records[1:]


def _is_num(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) or \
        x in ("inf", "-inf", "nan")


_EFFECT_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "arm": {"timer": (str,)}, "cancel": {"timer": (str,)},
    "open": {"reason": (str,), "attempt": (int,)}, "close": {}, "new_conversation": {},
    "report": {"code": (str,), "severity": (str,)}, "connection_up": {"replay": (bool,)},
}
_EVENT_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "event": (str,), "outcome": (str,), "source": (str,), "target": (str,), "status": (str,),
    "gen": (int,), "effects": (list,)}


def _check_record(obj: dict[str, Any]) -> str | None:
    """What is wrong with a record's fields (None: nothing this reader relies on)."""
    t = obj.get("t")
    if ("t" in obj or obj["kind"] == "event") and (not _is_num(t) or isinstance(t, str)):
        return f"'t' must be a number, got {t!r}"
    if obj["kind"] != "event":
        return None
    for key, types in _EVENT_FIELDS.items():
        v = obj.get(key)
        if not isinstance(v, types) or isinstance(v, bool):
            return f"event field {key!r} must be {types[0].__name__}, got {v!r}"
    for key, types in (("token", (int,)), ("timer", (str,)), ("draws", (list,))):
        v = obj.get(key)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            return f"event field {key!r} must be {types[0].__name__} or null, got {v!r}"
    if any(not _is_num(d) or isinstance(d, str) for d in obj.get("draws") or ()):
        return "'draws' must be numbers"
    for e in obj["effects"]:
        fields = _EFFECT_FIELDS.get(str(e.get("type"))) if isinstance(e, dict) else None
        if fields is None:
            return f"not a known effect: {e!r}"
        if e["type"] == "arm" and not _is_num(e.get("delay")):
            return f"effect {e!r}: 'delay' must be a number"
        for key, types in fields.items():
            v = e.get(key)
            if not isinstance(v, types) or (types != (bool,) and isinstance(v, bool)):
                return f"effect {e!r}: {key!r} must be {types[0].__name__}"
    return None


def _status_of(header: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The state-to-status map a version-2 file's event lines leave ``status`` to (None: a
    version-1 file, whose event lines are full)."""
    if header.get("version") != 2:
        return None
    status_of = header.get("status_of", STATUS_OF)
    if not isinstance(status_of, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in status_of.items()):
        raise TraceError("header 'status_of' must map state names to status names")
    return status_of


def iter_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a trace file, each checked (:class:`TraceError` names the bad line);
    a version-2 event line comes out as its full record (:func:`expand`)."""
    headed, first = False, True
    status_of: Mapping[str, str] | None = None
    with Path(path).open(encoding="utf-8") as f:
        n = 0
        while True:
            n += 1
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise TraceError(f"{path}:{n}: not UTF-8 text (not an fsm-voice trace)") from None
            if not line:
                return
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if status_of is not None and isinstance(obj, list):  # a version-2 event line
                try:
                    obj = expand(obj, status_of)
                except TraceError as exc:
                    raise TraceError(f"{path}:{n}: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
                raise TraceError(f"{path}:{n}: a record is an object with a string 'kind'")
            if first and obj["kind"] == "header":
                headed = True
                version = obj.get("version")
                if obj.get("schema") == SCHEMA and (version not in READS
                                                    or isinstance(version, bool)):
                    raise TraceError(f"{path}: trace version {version!r}; this fsm-voice "
                                     f"reads versions {', '.join(map(str, READS))}")
                try:
                    status_of = _status_of(obj)
                except TraceError as exc:
                    raise TraceError(f"{path}:{n}: {exc}") from None
            elif headed:  # else read_trace refuses it: no header
                problem = _check_record(obj)
                if problem is not None:
                    raise TraceError(f"{path}:{n}: {problem}")
            first = False
            yield obj


def schema() -> dict[str, Any]:
    """The JSON Schema of one trace record."""
    return dict(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


__all__ = ["READS", "SCHEMA", "VERSION", "TraceError", "TraceWriter", "compact", "expand",
           "read_trace", "schema"]
