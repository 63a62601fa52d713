"""Transport adapters (:class:`fsm_voice.ports.Transport`): aiortc, audio sources/sinks, stats."""

from fsm_voice.transport.aiortc_transport import (
    DATA_CHANNEL_LABEL,
    INVALID_MESSAGE_EVENT,
    AiortcTransport,
    ChannelNotOpenError,
    parse_server_message,
)
from fsm_voice.transport.audio import (
    AudioFileError,
    AudioSink,
    AudioSinkFactory,
    AudioSourceFactory,
    KeepOpen,
    NullSink,
    PacedAudioSource,
    SilenceSource,
    ToneSource,
    UtteranceSource,
    WavFileSource,
    WavRecorder,
)
from fsm_voice.transport.liveness import LivenessStats, ProbeTiming
from fsm_voice.transport.loopback import host_addresses, loopback
from fsm_voice.transport.stats import metrics_from_stats

__all__ = [
    "DATA_CHANNEL_LABEL",
    "INVALID_MESSAGE_EVENT",
    "AiortcTransport",
    "AudioFileError",
    "AudioSink",
    "AudioSinkFactory",
    "AudioSourceFactory",
    "ChannelNotOpenError",
    "KeepOpen",
    "LivenessStats",
    "NullSink",
    "PacedAudioSource",
    "ProbeTiming",
    "SilenceSource",
    "ToneSource",
    "UtteranceSource",
    "WavFileSource",
    "WavRecorder",
    "host_addresses",
    "loopback",
    "metrics_from_stats",
    "parse_server_message",
]
