"""One call of the local peer: aiortc answerer, ``oai-events`` channel, VAD, audio replies.

A :class:`Call` owns every task it starts (kept in ``_tasks``); :meth:`Call.close` cancels and
awaits them all, stops both tracks and closes the peer connection, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

import av
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from fsm_voice.transport import _private
from fsm_voice.transport.loopback import LOOPBACK, host_addresses

from . import protocol as p
from .audio import FrameConverter, PcmPlayerTrack, pcm_ms, tone
from .vad import EnergyVad, VadEvent, count_words, rms_dbfs

log = logging.getLogger(__name__)

Reply = Literal["echo", "tone"]
CHANNEL_LABEL = "oai-events"
MAX_UTTERANCE_MS = 30_000.0
MAX_MANUAL_BUFFER_MS = 60_000.0
MIN_COMMIT_MS = 100.0
MAX_RECORDED_EVENTS = 10_000

_TONE_CACHE: dict[float, bytes] = {}
_AUDIO_PART: dict[str, Any] = {"type": "audio", "transcript": ""}


def reply_tone(duration_s: float = 1.0) -> bytes:
    if duration_s not in _TONE_CACHE:
        _TONE_CACHE[duration_s] = tone(duration_s)
    return _TONE_CACHE[duration_s]


def user_transcript(words: int, seconds: float) -> str:
    """The peer's stand-in for recognised speech: its word count and length."""
    return f"({words} word{'' if words == 1 else 's'}, {seconds:.1f} s)"


def assistant_transcript(turn: tuple[str, int] | None, reply: Reply) -> str:
    """The words of the peer's reply to the last user turn (deterministic)."""
    if turn is None:
        return "Hello from the local peer."
    kind, words = turn
    plural = "" if words == 1 else "s"
    if kind == "text":
        return f"You wrote {words} word{plural}."
    return f"I heard {words} word{plural}." + ("" if reply == "echo" else " Here is a tone.")


class _ActiveResponse:
    __slots__ = ("audio_started", "id", "item_id", "playback", "transcript")

    def __init__(self, response_id: str, item_id: str) -> None:
        self.id = response_id
        self.item_id = item_id
        self.playback: asyncio.Future[bool] | None = None
        self.audio_started = False
        self.transcript = ""


class Call:
    """State and behaviour of one call. Created by :class:`fsm_voice.peer.server.RealtimePeer`.

    This class speaks the Realtime protocol on its data channel; the Live protocol's
    :class:`fsm_voice.peer.live.LiveCall` reuses the media, VAD and fault machinery and overrides
    the hooks ``_greet``, ``_expire``, ``_parse``, ``_dispatch``, ``_deliver`` and ``on_audio``.
    """

    protocol = "realtime"

    def __init__(
        self,
        *,
        model: str,
        reply: Reply,
        vad_threshold_dbfs: float,
        voice: str = p.DEFAULT_VOICE,
        on_event_received: Callable[[str], None] | None = None,
        on_closed: Callable[[Call], None] | None = None,
        connect_timeout: float = 30.0,
        tone_seconds: float = 1.0,
        candidate_addresses: Sequence[str] = LOOPBACK,
        max_session_seconds: float = 3600.0,
        call_id: str | None = None,
    ) -> None:
        self.id = call_id or p.new_call_id()
        self.candidate_addresses = tuple(candidate_addresses)
        self.max_session_seconds = max_session_seconds
        self.model = model
        self.reply: Reply = reply
        self.created_at = time.time()
        self.session = p.default_session(model, voice)
        self.session["expires_at"] = int(self.created_at + max_session_seconds)
        self.conversation_id = p.new_id("conv", 12)
        self.history: list[p.JsonObject] = []
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.vad = self._make_vad()
        self.player = PcmPlayerTrack()
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.remote_track: MediaStreamTrack | None = None
        self.silent = False
        self.closed = False
        self.close_reason = ""
        self.events_received: collections.Counter[str] = collections.Counter()
        self.events_sent: collections.Counter[str] = collections.Counter()
        self.events_dropped = 0
        self.received_events: collections.deque[tuple[str | None, str, bool]] = (
            collections.deque(maxlen=MAX_RECORDED_EVENTS))
        """``(event_id, type, handled)`` of every client event that arrived, oldest first
        (bounded); ``handled`` is False for one that arrived while the call was closing."""
        self.audio_frames_in = 0
        self.responses_completed = 0
        self.responses_cancelled = 0
        self._on_event_received = on_event_received
        self._on_closed = on_closed
        self._connect_timeout = connect_timeout
        self.tone_seconds = tone_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: _ActiveResponse | None = None
        self._muted: _private.Muted = []
        self.media_muted = False
        """Outbound audio track replaced by nothing (:meth:`mute_media`)."""
        self._muted_playout: asyncio.Task[None] | None = None
        # input audio
        self._prefix: collections.deque[bytes] = collections.deque()
        self._prefix_ms = 0.0
        self._speech = bytearray()  # audio of the current (uncommitted) speech, VAD mode
        self._speech_item_id: str | None = None
        self._manual = bytearray()  # input buffer when turn detection is off
        self._last_user_audio: bytes | None = None
        self._last_user_turn: tuple[str, int] | None = None  # ("audio"|"text", words): transcripts
        self._close_lock = asyncio.Lock()
        self.drop_after: float | None = None
        """Fault injection: close the call this many seconds after its data channel opens."""

    # ----------------------------------------------------------------- configuration

    @property
    def _turn_detection(self) -> Mapping[str, Any] | None:
        td = self.session.get("audio", {}).get("input", {}).get("turn_detection")
        return td if isinstance(td, Mapping) else None

    def _td_int(self, key: str, default: int) -> int:
        td = self._turn_detection
        value = td.get(key, default) if td else default
        return int(value) if isinstance(value, int | float) and value >= 0 else default

    def _make_vad(self) -> EnergyVad:
        return EnergyVad(
            self.vad_threshold_dbfs, stop_ms=max(20, self._td_int("silence_duration_ms", 500))
        )

    @property
    def _transcription(self) -> Mapping[str, Any] | None:
        tr = self.session.get("audio", {}).get("input", {}).get("transcription")
        return tr if isinstance(tr, Mapping) else None

    @property
    def voice(self) -> str:
        v = self.session.get("audio", {}).get("output", {}).get("voice", p.DEFAULT_VOICE)
        return v if isinstance(v, str) else p.DEFAULT_VOICE

    # ----------------------------------------------------------------- lifecycle

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        if self.silent:
            return "silent"
        return self.pc.connectionState if self.pc is not None else "new"

    def info(self) -> p.JsonObject:
        return {
            "call_id": self.id,
            "protocol": self.protocol,
            "state": self.state,
            "model": self.model,
            "session_id": self.session["id"],
            "channel_open": self.channel is not None and self.channel.readyState == "open",
            "created_at": self.created_at,
            "close_reason": self.close_reason or None,
            "events_received": dict(self.events_received),
            "events_sent": dict(self.events_sent),
            "events_dropped": self.events_dropped,
            "audio_frames_in": self.audio_frames_in,
            "audio_frames_out": self.player.frames_sent,
            "voiced_frames_out": self.player.voiced_frames_sent,
            "responses_completed": self.responses_completed,
            "responses_cancelled": self.responses_cancelled,
            "response_active": self._active.id if self._active else None,
            "history_items": len(self.history),
            "datagrams_dropped": sum(t.dropped for _, t in self._muted),
            "media_muted": self.media_muted,
        }

    def conversation(self) -> list[p.JsonObject]:
        """The call's conversation items, in order (copies)."""
        return [dict(item) for item in self.history]

    def received(self) -> list[p.JsonObject]:
        """The client events that arrived, oldest first: ``{"event_id", "type", "handled"}``."""
        return [{"event_id": eid, "type": etype, "handled": handled}
                for eid, etype, handled in self.received_events]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self.closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "call %s: task %s failed", self.id, task.get_name(), exc_info=task.exception()
            )

    async def accept_offer(self, sdp: str) -> str:
        """Apply the client's offer and return the answer SDP (ICE host candidates: exactly
        ``candidate_addresses``, loopback by default).

        Raises ValueError when the offer cannot be applied.
        """
        with host_addresses(self.candidate_addresses):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.pc = pc
            pc.on("datachannel", self._on_datachannel)
            pc.on("track", self._on_track)
            pc.on("connectionstatechange", self._on_connection_state)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                _private.quiet_sctp_close(pc)
                pc.addTrack(self.player)
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception as exc:
                raise ValueError(f"cannot apply SDP offer: {exc}") from exc
            self._spawn(self._connect_watchdog(), "connect-watchdog")
            self._spawn(self._session_limit(), "session-limit")
        return str(pc.localDescription.sdp)

    async def _session_limit(self) -> None:
        """Like the real service: at the time limit, ``session_expired`` and the call ends."""
        await asyncio.sleep(self.max_session_seconds)
        self._expire()

    def _expire(self) -> None:
        """The session reached its time limit (Realtime: ``session_expired``, then the end)."""
        minutes = self.max_session_seconds / 60
        self.send_error(f"Your session hit the maximum duration of {minutes:g} minutes.",
                        code="session_expired")
        self._spawn(self.close("session_expired"), "close")

    async def _connect_watchdog(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self.pc is not None and self.pc.connectionState != "connected" and not self.silent:
            self._spawn(self.close("connect_timeout"), "close")

    def _on_connection_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self._spawn(self.close(f"connection_{self.pc.connectionState}"), "close")

    async def close(self, reason: str = "closed") -> None:
        """Close abruptly: no goodbye on the data channel. Idempotent; awaits every task."""
        async with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
        current = asyncio.current_task()
        self.player.stop()
        if self.remote_track is not None:
            self.remote_track.stop()
        pending = [t for t in self._tasks if t is not current]
        for t in pending:
            t.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._on_closed is not None:
            self._on_closed(self)

    # ----------------------------------------------------------------- faults

    def go_silent(self) -> int:
        """Stop every outgoing UDP datagram of this call (media, DTLS/SCTP, STUN responses
        and consent checks) without telling the client. Returns the number of sockets muted."""
        if self.closed or self.pc is None:
            return 0
        self.silent = True
        muted = _private.mute_datagrams(self.pc)
        self._muted.extend(muted)
        return len(muted)

    def resume(self) -> int:
        """Undo :meth:`go_silent` (if the ICE connection is still alive)."""
        restored = _private.unmute_datagrams(self._muted)
        self._muted.clear()
        self.silent = False
        return restored

    def mute_media(self) -> bool:
        """Stop sending audio like a browser's ``sender.replaceTrack(null)``: RTP stops; ICE
        (consent answers included), DTLS, RTCP and the data channel stay up. False when the
        call has no audio sender (closed, not negotiated)."""
        sender = self._audio_sender()
        if sender is None:
            return False
        sender.replaceTrack(None)
        self.media_muted = True
        if self._muted_playout is None and not self.closed:
            # the reply still plays out (unsent), so its end is still announced
            self._muted_playout = asyncio.get_running_loop().create_task(
                self._play_out_unsent(), name=f"{self.id}:muted-playout")
            self._tasks.add(self._muted_playout)
            self._muted_playout.add_done_callback(self._task_done)
        return True

    async def _play_out_unsent(self) -> None:
        with contextlib.suppress(MediaStreamError):
            await self.player.play_out_unsent()

    def unmute_media(self) -> bool:
        """Undo :meth:`mute_media` (the player track sends again)."""
        sender = self._audio_sender()
        if sender is None or not self.media_muted:
            return False
        if self._muted_playout is not None:
            self._muted_playout.cancel()
            self._muted_playout = None
        sender.replaceTrack(self.player)
        self.media_muted = False
        return True

    def _audio_sender(self) -> RTCRtpSender | None:
        if self.closed or self.pc is None:
            return None
        for sender in self.pc.getSenders():
            if sender.kind == "audio":
                return sender
        return None

    # ----------------------------------------------------------------- events out

    def send(self, event: Mapping[str, Any]) -> bool:
        """Send one server event (stamped with a fresh ``event_id``); False if it was dropped."""
        return self._deliver(p.stamp(event))

    def _deliver(self, stamped: p.JsonObject) -> bool:
        """Send one stamped event on the data channel; False if it was dropped."""
        ch = self.channel
        if ch is None or ch.readyState != "open" or self.closed:
            self.events_dropped += 1
            return False
        try:
            ch.send(json.dumps(stamped))
        except Exception:  # channel closing underneath us
            self.events_dropped += 1
            return False
        self.events_sent[stamped["type"]] += 1
        return True

    def send_error(
        self,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> bool:
        return self.send(
            p.error_event(
                message, type=type, code=code, param=param, client_event_id=client_event_id
            )
        )

    # ----------------------------------------------------------------- data channel

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self.channel is not None:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        self._greet()
        if self.drop_after is not None:
            self._spawn(self._drop_later(self.drop_after), "drop")

    def _greet(self) -> None:
        """The first event on the open data channel."""
        self.send({"type": "session.created", "session": self.session})

    async def _drop_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.close("dropped_by_control")

    def _parse(self, raw: str | bytes) -> tuple[p.JsonObject | None, p.JsonObject | None]:
        """Decode one client message: ``(event, None)`` or ``(None, error_event)``."""
        return p.parse_client_event(raw)

    def _reply(self, event: p.JsonObject) -> None:
        """The answer to the message being handled (a Live sideband overrides: to it only)."""
        self.send(event)

    def _on_message(self, raw: str | bytes) -> None:
        event, error = self._parse(raw)
        etype = event["type"] if event is not None else "<invalid>"
        raw_id = event.get("event_id") if event is not None else None
        self.received_events.append(
            (raw_id if isinstance(raw_id, str) else None, etype, not self.closed))
        if self.closed:  # arrived (SCTP acknowledges it) but the call is ending: not handled
            return
        self.events_received[etype] += 1
        if self._on_event_received is not None:
            self._on_event_received(etype)
        if error is not None:
            self._reply(error)
            return
        assert event is not None
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            self._dispatch(event, eid)
        except Exception as exc:  # never let one bad event take the call down
            log.exception("call %s: handling %s failed", self.id, etype)
            self.send_error(
                f"The server had an error while processing your request: {exc}",
                type="server_error",
                code="server_error",
                client_event_id=eid,
            )

    def _dispatch(self, event: p.JsonObject, eid: str | None) -> None:
        etype = event["type"]
        if etype == "session.update":
            self._session_update(event, eid)
        elif etype == "conversation.item.create":
            self._item_create(event, eid)
        elif etype == "conversation.item.retrieve":
            item = self._find_item(event.get("item_id"))
            if item is None:
                self._item_not_found(event, eid)
            else:
                self.send({"type": "conversation.item.retrieved", "item": item})
        elif etype == "conversation.item.delete":
            item = self._find_item(event.get("item_id"))
            if item is None:
                self._item_not_found(event, eid)
            else:
                self.history.remove(item)
                self.send({"type": "conversation.item.deleted", "item_id": item["id"]})
        elif etype == "input_audio_buffer.commit":
            self._commit(eid)
        elif etype == "input_audio_buffer.clear":
            self._speech.clear()
            self._manual.clear()
            self.send({"type": "input_audio_buffer.cleared"})
        elif etype == "input_audio_buffer.append":
            self.send_error(
                "input_audio_buffer.append is not used over WebRTC: send audio on the media track.",
                code="invalid_value",
                param="type",
                client_event_id=eid,
            )
        elif etype == "response.create":
            self._response_create(eid)
        elif etype == "response.cancel":
            rid = event.get("response_id")
            if self._active is None or (isinstance(rid, str) and rid != self._active.id):
                self.send_error(
                    "Cancellation failed: no active response found",
                    code="response_cancel_not_active",
                    client_event_id=eid,
                )
            else:
                self.cancel_response("client_cancelled")
        elif etype == "output_audio_buffer.clear":
            rid = self._active.id if self._active else None
            if self._active is not None:
                self.cancel_response("client_cancelled")
            else:
                self.player.clear()
                self.send({"type": "output_audio_buffer.cleared", "response_id": rid})

    def _session_update(self, event: p.JsonObject, eid: str | None) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            self.send_error(
                "Missing required parameter: 'session'."
                if session is None
                else "Invalid type for 'session': expected an object.",
                code="missing_required_parameter" if session is None else "invalid_type",
                param="session",
                client_event_id=eid,
            )
            return
        stype = session.get("type")
        if stype is None:
            self.send_error(
                "Missing required parameter: 'session.type'.",
                code="missing_required_parameter",
                param="session.type",
                client_event_id=eid,
            )
            return
        if stype != "realtime":
            self.send_error(
                f"Invalid value: {stype!r}. Supported values are: 'realtime'.",
                code="invalid_value",
                param="session.type",
                client_event_id=eid,
            )
            return
        self.session = p.merge_session(self.session, session)
        # Retune the running VAD (keeps its position, so audio_*_ms stay session-relative).
        self.vad.stop_ms = max(20, self._td_int("silence_duration_ms", 500))
        if self._turn_detection is None and self.vad.speaking:
            self.vad.reset()
            self._speech = bytearray()
            self._speech_item_id = None
        self.send({"type": "session.updated", "session": self.session})

    def _find_item(self, item_id: Any) -> p.JsonObject | None:
        return next((i for i in self.history if i.get("id") == item_id), None)

    def _item_not_found(self, event: p.JsonObject, eid: str | None) -> None:
        self.send_error(
            f"Item with item_id not found: {event.get('item_id')!r}",
            code="item_not_found",
            param="item_id",
            client_event_id=eid,
        )

    def _add_item(self, item: p.JsonObject, previous_item_id: str | None = None) -> None:
        prev = previous_item_id
        if prev is None and self.history:
            prev = self.history[-1]["id"]
        anchor = self._find_item(previous_item_id) if previous_item_id is not None else None
        if anchor is not None:
            self.history.insert(self.history.index(anchor) + 1, item)
        else:
            self.history.append(item)
        # The legacy name (created) and the GA pair (added, done): clients of either era work.
        for etype in (
            "conversation.item.created",
            "conversation.item.added",
            "conversation.item.done",
        ):
            self.send({"type": etype, "previous_item_id": prev, "item": item})

    def _item_create(self, event: p.JsonObject, eid: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self.send_error(
                "Missing required parameter: 'item'.",
                code="missing_required_parameter",
                param="item",
                client_event_id=eid,
            )
            return
        itype = item.get("type")
        allowed = ("message", "function_call", "function_call_output")
        if itype not in allowed:
            self.send_error(
                f"Invalid value: {itype!r}. Supported values are: "
                + ", ".join(f"'{a}'" for a in allowed)
                + ".",
                code="invalid_value",
                param="item.type",
                client_event_id=eid,
            )
            return
        prev = event.get("previous_item_id")
        if prev is not None and (not isinstance(prev, str) or self._find_item(prev) is None):
            self.send_error(
                f"Item with previous_item_id not found: {prev!r}",
                code="item_not_found",
                param="previous_item_id",
                client_event_id=eid,
            )
            return
        stored = dict(item)
        if not isinstance(stored.get("id"), str):
            stored["id"] = p.new_id("item", 12)
        elif self._find_item(stored["id"]) is not None:
            self.send_error(
                f"Item with id {stored['id']!r} already exists.",
                code="item_already_exists",
                param="item.id",
                client_event_id=eid,
            )
            return
        stored["object"] = "realtime.item"
        stored["status"] = "completed"
        self._add_item(stored, prev)
        if stored.get("role") == "user" and stored.get("type") == "message":
            texts = [c.get("text") for c in stored.get("content") or () if isinstance(c, dict)]
            words = sum(len(t.split()) for t in texts if isinstance(t, str))
            self._last_user_turn = ("text", words)

    # ----------------------------------------------------------------- input audio

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self.remote_track is not None:
            # Still drain it: an unread remote track grows memory without bound.
            self._spawn(self._drain(track), "drain")
            return
        self.remote_track = track
        self._spawn(self._consume(track), "consume-audio")

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def _consume(self, track: MediaStreamTrack) -> None:
        converter = FrameConverter()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio_frames_in += 1
            if self.silent or self.closed or not isinstance(frame, av.AudioFrame):
                continue
            try:
                pcm = converter.convert(frame)
            except Exception:  # an odd frame must not stop the consumer
                log.exception("call %s: cannot convert inbound frame", self.id)
                continue
            if pcm:
                self.on_audio(pcm)

    def on_audio(self, pcm: bytes) -> None:
        """Feed inbound s16 mono 48k PCM (normally one 20 ms frame)."""
        if self._turn_detection is None:
            self._manual += pcm
            excess = len(self._manual) - int(MAX_MANUAL_BUFFER_MS * 96)
            if excess > 0:
                del self._manual[:excess]
            return
        padding = self._td_int("prefix_padding_ms", 300)
        decision, utterance = self._track_speech(pcm)
        if decision is VadEvent.SPEECH_STARTED:
            self._speech_item_id = p.new_id("item", 12)
            self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": int(max(0.0, self.vad.last_start_ms - padding)),
                    "item_id": self._speech_item_id,
                }
            )
            td = self._turn_detection or {}
            if self._active is not None and td.get("interrupt_response", True):
                self.cancel_response("turn_detected")
        elif decision is VadEvent.SPEECH_STOPPED:
            item_id = self._speech_item_id or p.new_id("item", 12)
            self.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": int(self.vad.position_ms),
                    "item_id": item_id,
                }
            )
            self._speech_item_id = None
            self._commit_audio(item_id, utterance)
            td = self._turn_detection or {}
            if td.get("create_response", True) and self._active is None:
                self._start_response()

    def _track_speech(self, pcm: bytes) -> tuple[VadEvent | None, bytes]:
        """Run the VAD on one frame, keeping the current utterance's audio (with its prefix
        padding). Returns the VAD decision and, on SPEECH_STOPPED, the utterance without its
        trailing silence (else ``b""``)."""
        duration = pcm_ms(pcm)
        padding = self._td_int("prefix_padding_ms", 300)
        decision = self.vad.process(rms_dbfs(pcm), duration)
        if self.vad.speaking or decision is VadEvent.SPEECH_STOPPED:
            if decision is VadEvent.SPEECH_STARTED:
                self._speech = bytearray(b"".join(self._prefix))
                self._prefix.clear()
                self._prefix_ms = 0.0
            if len(self._speech) < MAX_UTTERANCE_MS * 96:
                self._speech += pcm
        else:
            self._prefix.append(pcm)
            self._prefix_ms += duration
            keep = padding + self.vad.start_ms
            while self._prefix and self._prefix_ms - pcm_ms(self._prefix[0]) >= keep:
                self._prefix_ms -= pcm_ms(self._prefix.popleft())
        if decision is not VadEvent.SPEECH_STOPPED:
            return decision, b""
        trailing_ms = self.vad.position_ms - self.vad.last_voiced_end_ms
        keep_bytes = max(0, len(self._speech) - int(trailing_ms * 96))
        utterance = bytes(self._speech[:keep_bytes])
        self._speech = bytearray()
        return decision, utterance

    def _commit_audio(self, item_id: str, pcm: bytes) -> None:
        self._last_user_audio = pcm
        prev = self.history[-1]["id"] if self.history else None
        self.send(
            {"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id}
        )
        self._add_item(p.user_audio_item(item_id))
        words = count_words(pcm, self.vad_threshold_dbfs)
        self._last_user_turn = ("audio", words)
        if self._transcription is not None:
            text = user_transcript(words, pcm_ms(pcm) / 1000)
            ids = {"item_id": item_id, "content_index": 0}
            self.send({"type": "conversation.item.input_audio_transcription.delta", **ids,
                       "delta": text})
            self.send({"type": "conversation.item.input_audio_transcription.completed", **ids,
                       "transcript": text})

    def _commit(self, eid: str | None) -> None:
        if self._turn_detection is None:
            buf = bytes(self._manual)
            self._manual.clear()
        else:
            buf = bytes(self._speech) if self.vad.speaking else b""
        if pcm_ms(buf) < MIN_COMMIT_MS:
            self.send_error(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS:.0f}ms of audio, but buffer only has "
                f"{pcm_ms(buf):.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                client_event_id=eid,
            )
            return
        item_id = self._speech_item_id or p.new_id("item", 12)
        if self._turn_detection is not None:
            self._speech = bytearray()
            self._speech_item_id = None
            self.vad.reset()
        self._commit_audio(item_id, buf)

    # ----------------------------------------------------------------- responses

    def _response_create(self, eid: str | None) -> None:
        if self._active is not None:
            self.send_error(
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                client_event_id=eid,
            )
            return
        self._start_response()

    def _reply_audio(self) -> bytes:
        if self.reply == "echo" and self._last_user_audio:
            return self._last_user_audio
        return reply_tone(self.tone_seconds)

    def _start_response(self) -> None:
        active = _ActiveResponse(p.new_id("resp", 12), p.new_id("item", 12))
        self._active = active
        rid, iid = active.id, active.item_id
        self.send(
            {
                "type": "response.created",
                "response": p.response_object(rid, self.conversation_id, self.voice),
            }
        )
        item = p.assistant_item(iid)
        self.send(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": item,
            }
        )
        prev = self.history[-1]["id"] if self.history else None
        self.history.append(p.assistant_item(iid, status="completed"))
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        self.send(
            {
                "type": "response.content_part.added",
                "response_id": rid,
                "item_id": iid,
                "output_index": 0,
                "content_index": 0,
                "part": _AUDIO_PART,
            }
        )
        audio = self._reply_audio()
        active.playback = self.player.play(audio)
        active.audio_started = True
        self.send({"type": "output_audio_buffer.started", "response_id": rid})
        active.transcript = assistant_transcript(self._last_user_turn, self.reply)
        self._spawn(self._transcript_deltas(active, pcm_ms(audio) / 1000), "transcript")
        self._spawn(self._finish_response(active, prev), "response")

    async def _transcript_deltas(self, active: _ActiveResponse, seconds: float) -> None:
        """``response.output_audio_transcript.delta``, one word at a time across the audio."""
        words = active.transcript.split(" ")
        ids = {"response_id": active.id, "item_id": active.item_id, "output_index": 0,
               "content_index": 0}
        for i, word in enumerate(words):
            if self._active is not active:
                return
            self.send({"type": "response.output_audio_transcript.delta", **ids,
                       "delta": word if i == 0 else " " + word})
            await asyncio.sleep(min(seconds, 30.0) / len(words) * 0.8)

    async def _finish_response(self, active: _ActiveResponse, prev: str | None) -> None:
        assert active.playback is not None
        finished = await active.playback
        if self._active is not active or not finished:
            return  # cancelled: cancel_response already reported it
        self._active = None
        rid, iid = active.id, active.item_id
        ids = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        self.send({"type": "response.output_audio.done", **ids})
        self.send({"type": "response.output_audio_transcript.done", **ids,
                   "transcript": active.transcript})
        self.send({"type": "response.content_part.done", **ids, "part": _AUDIO_PART})
        done_item = p.assistant_item(iid, status="completed")
        self.send(
            {
                "type": "response.output_item.done",
                "response_id": rid,
                "output_index": 0,
                "item": done_item,
            }
        )
        self.send({"type": "conversation.item.done", "previous_item_id": prev, "item": done_item})
        self.send(
            {
                "type": "response.done",
                "response": p.response_object(
                    rid, self.conversation_id, self.voice, status="completed", output=[done_item]
                ),
            }
        )
        self.send({"type": "output_audio_buffer.stopped", "response_id": rid})
        self.responses_completed += 1

    def cancel_response(self, reason: str) -> bool:
        """Stop the playing response: ``output_audio_buffer.cleared`` then ``response.done``
        (status cancelled). False when no response is active."""
        active = self._active
        if active is None:
            return False
        self._active = None
        self.player.clear()
        if active.audio_started:
            self.send({"type": "output_audio_buffer.cleared", "response_id": active.id})
        item = p.assistant_item(active.item_id, status="incomplete")
        self.send(
            {
                "type": "response.done",
                "response": p.response_object(
                    active.id,
                    self.conversation_id,
                    self.voice,
                    status="cancelled",
                    status_details={"type": "cancelled", "reason": reason},
                    output=[item],
                ),
            }
        )
        self.responses_cancelled += 1
        return True
