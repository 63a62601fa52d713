"""Local peer: a loopback-only stand-in for the OpenAI Realtime WebRTC backend, with faults.

See :class:`fsm_voice.peer.server.RealtimePeer`.
"""

from .server import RealtimePeer, run_peer

__all__ = ["RealtimePeer", "run_peer"]
