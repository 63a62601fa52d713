"""Local peer: a loopback-only stand-in for the OpenAI Realtime and Live WebRTC backends, with
faults.

See :class:`fsm_voice.peer.server.RealtimePeer` and :mod:`fsm_voice.peer.live`.
"""

from .live import LiveSessionRecord
from .server import RealtimePeer, run_peer

__all__ = ["LiveSessionRecord", "RealtimePeer", "run_peer"]
