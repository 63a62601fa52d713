"""One picture of a recorded session (``fsm-voice timeline FILE -o out.html|.svg|.png``).

Lanes, over seconds since the trace began: the public status band, the machine state, the
recovery spans (restarting, reconnecting, backoff), who was speaking (user speech, assistant
audio), faults and errors (code, severity), quality alerts, signaling exchanges (HTTP status)
and the RTT / jitter / loss samples with the policy's threshold lines. HTML is drawn with plotly
(plotly.js embedded in the file: it opens offline), SVG and PNG with matplotlib. Both come with
the ``trace`` extra (``pip install 'fsm-voice[trace]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from fsm_voice.machine.table import WORKING
from fsm_voice.trace import read_trace, unnumber

STATUS_COLORS: dict[str, str] = {
    "idle": "#bdbdbd", "connecting": "#f2c744", "active": "#3aa655", "listening": "#2fa4c9",
    "speaking": "#a05bc9", "reconnecting": "#f08a24", "error": "#d62728",
}
RECOVERY_STATES: dict[str, str] = {"restarting": "#f5a65b", "reconnecting": "#f08a24",
                                   "backoff": "#c96f2a", "ice_grace": "#f2d091"}
FAULT_EVENTS = frozenset({"ice_disconnected", "transport_failed", "signaling_failed",
                          "server_error", "connect_timeout", "restart_timeout"})
_UP = frozenset(WORKING)
"""States with a session up: a speaking span never outlives them."""
SEVERITY_COLORS = {"fatal": "#d62728", "recoverable": "#f08a24", "transient": "#f2c744",
                   "ignorable": "#9e9e9e"}


class TimelineError(RuntimeError):
    """The plotting libraries are missing, or the output format is not one we draw."""


@attrs.frozen
class Span:
    lane: str
    label: str
    start: float
    end: float
    color: str


@attrs.frozen
class Mark:
    lane: str
    t: float
    label: str
    color: str


@attrs.frozen
class Timeline:
    """What the picture shows, in seconds since the trace's start (drawing-independent)."""

    spans: tuple[Span, ...]
    marks: tuple[Mark, ...]
    samples: Mapping[str, tuple[tuple[float, float], ...]]
    """``rtt_ms``, ``jitter_ms``, ``loss_pct`` series."""
    thresholds: Mapping[str, float]
    end: float


def _spans(points: Sequence[tuple[float, str]], end: float, lane: str,
           colors: Mapping[str, str] | None, keep: frozenset[str] | None = None) -> list[Span]:
    out: list[Span] = []
    for (t, v), nxt in zip(points, [*points[1:], (end, "")], strict=True):
        if nxt[0] > t and (keep is None or v in keep):
            out.append(Span(lane, v, t, nxt[0], (colors or {}).get(v, "#607d8b")))
    return out


def build(header: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> Timeline:
    t0 = float(header.get("t0", 0.0))
    end = max((float(r["t"]) - t0 for r in records if "t" in r), default=0.0)
    end = max(end, 1e-3)
    status: list[tuple[float, str]] = [(0.0, "idle")]
    state: list[tuple[float, str]] = [(0.0, str(header.get("state", "idle")))]
    marks: list[Mark] = []
    speech: dict[str, float] = {}
    spans: list[Span] = []
    samples: dict[str, list[tuple[float, float]]] = {"rtt_ms": [], "jitter_ms": [],
                                                      "loss_pct": []}
    for r in records:
        kind = r.get("kind")
        if "t" not in r:
            continue
        t = float(r["t"]) - t0
        if kind == "event":
            if r["outcome"] != "taken":
                continue
            ev = r["event"]
            if r["status"] != status[-1][1]:
                status.append((t, r["status"]))
            if r["target"] != state[-1][1]:
                state.append((t, r["target"]))
            if ev in FAULT_EVENTS:
                sev = r.get("severity") or ("fatal" if r["target"] == "error" else "transient")
                label = ev + (f" {r['code']}" if r.get("code") else "")
                marks.append(Mark("faults", t, label, SEVERITY_COLORS.get(sev, "#d62728")))
            for eff in r.get("effects", ()):
                if eff["type"] == "open" and eff["reason"] != "start":
                    marks.append(Mark("recovery", t, f"open {eff['reason']} #{eff['attempt']}",
                                      "#1f77b4"))
            if r["target"] not in _UP and speech:  # the connection went: nobody speaks on it
                for speaker, start in speech.items():
                    spans.append(Span("speaking", speaker, start, t,
                                      "#2fa4c9" if speaker == "user" else "#a05bc9"))
                speech.clear()
            who = {"speech_started": ("user", True), "speech_stopped": ("user", False),
                   "audio_started": ("assistant", True),
                   "audio_stopped": ("assistant", False)}.get(ev)
            if who is not None:
                if who[1]:
                    speech.setdefault(who[0], t)
                elif who[0] in speech:
                    spans.append(Span("speaking", who[0], speech.pop(who[0]), t,
                                      "#2fa4c9" if who[0] == "user" else "#a05bc9"))
        elif kind == "error":
            marks.append(Mark("errors", t, f"{r['code']} ({r['severity']})",
                              SEVERITY_COLORS.get(r["severity"], "#d62728")))
        elif kind == "alert":
            marks.append(Mark("alerts", t, f"{r['alert']} {unnumber(r['value']) or 0:g} > "
                              f"{unnumber(r['threshold']) or 0:g}", "#d62728"))
        elif kind == "signaling":
            status_code = r.get("http_status")
            ok = isinstance(status_code, int) and status_code < 400
            marks.append(Mark("signaling", t, f"{r['method']} {status_code or r.get('error')} "
                              f"{r['elapsed_ms']:.0f} ms", "#3aa655" if ok else "#d62728"))
        elif kind == "metrics":
            for key, field in (("rtt_ms", "rtt_ms"), ("jitter_ms", "jitter_ms")):
                v = unnumber(r.get(field))
                if v is not None and v == v:
                    samples[key].append((t, v))
            lf = unnumber(r.get("loss_fraction"))
            if lf is not None and lf == lf:
                samples["loss_pct"].append((t, 100.0 * lf))
    for speaker, start in speech.items():
        spans.append(Span("speaking", speaker, start, end,
                          "#2fa4c9" if speaker == "user" else "#a05bc9"))
    spans += _spans(status, end, "status", STATUS_COLORS)
    spans += _spans(state, end, "state", {**STATUS_COLORS, **RECOVERY_STATES})
    spans += _spans(state, end, "recovery", RECOVERY_STATES, frozenset(RECOVERY_STATES))
    q = header.get("policy", {}).get("quality", {})
    thresholds = {"rtt_ms": float(q.get("max_rtt_ms", 300.0)),
                  "jitter_ms": float(q.get("max_jitter_ms", 50.0)),
                  "loss_pct": 100.0 * float(q.get("max_loss_fraction", 0.05))}
    return Timeline(tuple(spans), tuple(marks), {k: tuple(v) for k, v in samples.items()},
                    thresholds, end)


LANES = ("status", "state", "recovery", "speaking", "faults", "errors", "alerts", "signaling")


def render(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Draw the trace at ``path`` into ``out`` (``.html``, ``.svg`` or ``.png``)."""
    header, records = read_trace(path)
    tl = build(header, records)
    target = Path(out)
    suffix = target.suffix.lower()
    if suffix == ".html":
        _html(tl, target, title=f"fsm-voice session {Path(path).name}")
    elif suffix in (".svg", ".png"):
        _image(tl, target, title=f"fsm-voice session {Path(path).name}")
    else:
        raise TimelineError(f"output must end in .html, .svg or .png, got {target.name!r}")
    return target


def _html(tl: Timeline, out: Path, title: str) -> None:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise TimelineError("HTML timelines need plotly: pip install 'fsm-voice[trace]'") \
            from exc
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.6, 0.25, 0.15],
                        vertical_spacing=0.04,
                        subplot_titles=("lifecycle", "RTT / jitter (ms)", "loss (%)"))
    lanes = list(reversed(LANES))
    seen: set[str] = set()
    for s in tl.spans:
        fig.add_trace(go.Bar(
            x=[s.end - s.start], base=[s.start], y=[s.lane], orientation="h",
            marker_color=s.color, name=s.label, legendgroup=s.label,
            showlegend=s.lane == "status" and s.label not in seen,
            hovertemplate=f"{s.lane}: {s.label}<br>%{{base:.2f}} s + %{{x:.2f}} s<extra></extra>",
            text=s.label if s.lane in ("state", "recovery", "speaking") else None,
            textposition="inside", insidetextanchor="middle"), row=1, col=1)
        if s.lane == "status":
            seen.add(s.label)
    if tl.marks:
        fig.add_trace(go.Scatter(
            x=[m.t for m in tl.marks], y=[m.lane for m in tl.marks], mode="markers",
            marker={"color": [m.color for m in tl.marks], "size": 11, "symbol": "x"},
            text=[m.label for m in tl.marks], hovertemplate="%{text}<br>%{x:.2f} s<extra></extra>",
            name="events", showlegend=False), row=1, col=1)
    for key, color, row in (("rtt_ms", "#1f77b4", 2), ("jitter_ms", "#9467bd", 2),
                            ("loss_pct", "#d62728", 3)):
        pts = tl.samples[key]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts],
                                 mode="lines+markers", name=key, line={"color": color}),
                      row=row, col=1)
        fig.add_hline(y=tl.thresholds[key], line_dash="dash", line_color=color, row=row, col=1,
                      annotation_text=f"max {key} {tl.thresholds[key]:g}")
    fig.update_yaxes(categoryorder="array", categoryarray=lanes, row=1, col=1)
    fig.update_layout(barmode="overlay", title=title, height=760, bargap=0.25,
                      xaxis3_title="seconds since the trace began")
    fig.write_html(out, include_plotlyjs=True, full_html=True)


def _image(tl: Timeline, out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise TimelineError("SVG/PNG timelines need matplotlib: pip install "
                            "'fsm-voice[trace]'") from exc
    fig, (ax, ax_q, ax_l) = plt.subplots(3, 1, figsize=(14, 8.5), sharex=True,
                                         gridspec_kw={"height_ratios": [3.2, 1.2, 0.8]})
    try:
        lanes = list(reversed(LANES))
        y = {lane: i for i, lane in enumerate(lanes)}
        labelled: set[str] = set()
        for s in tl.spans:
            ax.broken_barh([(s.start, s.end - s.start)], (y[s.lane] - 0.35, 0.7),
                           facecolors=s.color,
                           label=s.label if s.lane == "status" and s.label not in labelled
                           else None)
            if s.lane == "status":
                labelled.add(s.label)
            elif s.lane in ("state", "recovery", "speaking") and s.end - s.start > tl.end / 40:
                ax.text((s.start + s.end) / 2, y[s.lane], s.label, ha="center", va="center",
                        fontsize=7, clip_on=True)
        for m in tl.marks:
            ax.plot(m.t, y[m.lane], marker="x", color=m.color, markersize=8)
            ax.annotate(m.label, (m.t, y[m.lane]), xytext=(3, 6), textcoords="offset points",
                        fontsize=6, rotation=20, clip_on=True)
        ax.set_yticks(range(len(lanes)), lanes)
        ax.set_ylim(-0.6, len(lanes) - 0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="status")
        ax.set_title(title)
        for key, color, axis in (("rtt_ms", "tab:blue", ax_q), ("jitter_ms", "tab:purple", ax_q),
                                 ("loss_pct", "tab:red", ax_l)):
            pts = tl.samples[key]
            axis.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=color,
                      label=key)
            axis.axhline(tl.thresholds[key], color=color, linestyle="--", linewidth=0.8,
                         label=f"max {key} {tl.thresholds[key]:g}")
            axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        ax_q.set_ylabel("ms")
        ax_l.set_ylabel("loss %")
        ax_l.set_xlabel("seconds since the trace began")
        ax_l.set_xlim(0, tl.end)
        fig.tight_layout()
        fig.savefig(out, format=out.suffix.lstrip(".").lower(), metadata=(
            {"Date": None} if out.suffix.lower() == ".svg" else None))
    finally:
        plt.close(fig)


__all__ = ["Timeline", "TimelineError", "build", "render"]
