"""Signaling adapters: SDP offer -> answer exchanges (:class:`fsm_voice.ports.Signaling`)."""

from fsm_voice.signaling.http import CALLS_PATH, HttpSignaling, TokenSource, call_id_from_location

__all__ = ["CALLS_PATH", "HttpSignaling", "TokenSource", "call_id_from_location"]
