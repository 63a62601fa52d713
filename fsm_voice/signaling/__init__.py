"""Signaling adapters: SDP offer -> answer exchanges (:class:`fsm_voice.ports.Signaling`)."""

from fsm_voice.signaling.http import CALLS_PATH, HttpSignaling, TokenSource, call_id_from_location
from fsm_voice.signaling.live import LIVE_SESSIONS_PATH, LiveSignaling

__all__ = ["CALLS_PATH", "LIVE_SESSIONS_PATH", "HttpSignaling", "LiveSignaling", "TokenSource",
           "call_id_from_location"]
