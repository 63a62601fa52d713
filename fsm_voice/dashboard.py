"""A live, read-only dashboard of the process's sessions, served on 127.0.0.1 (aiohttp).

``GET /`` is one self-contained page (inline script and style, no CDN, a strict CSP with a
nonce); ``GET /events`` pushes Server-Sent Events: a ``sessions`` event with every session whose
record changed since the last push (status, state, attempts, RTT/jitter/loss samples, recent
transitions and errors) and the ids of all live ones. A change is pushed within
:data:`COALESCE` seconds (0.1 s), well inside the 1 s budget. ``GET /api/sessions`` is the same as
JSON. Only GET routes exist; requests whose ``Host`` is not a loopback name are refused (403), so
a web page elsewhere cannot read it through DNS rebinding.

Trace files named when the dashboard starts (``traces=``, ``fsm-voice dashboard --trace FILE``)
are listed on the page; ``GET /timeline/N`` draws the N-th one's timeline
(:func:`fsm_voice.timeline.render`, plotly, offline; the ``trace`` extra). Only those files can be
opened: the page never takes a path from the browser.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from fsm_voice.telemetry import Hub, SessionTap

__all__ = ["COALESCE", "Dashboard", "add_export_flags", "exporters", "run_observed",
           "session_view"]

LOCAL_HOST = "127.0.0.1"
COALESCE = 0.1
"""Seconds changes are gathered before a push."""
HEARTBEAT = 15.0
RECENT_SHOWN = 12
_LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _num(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def session_view(tap: SessionTap) -> dict[str, Any]:
    """What the page shows of one session (JSON-ready)."""
    s = tap.session
    samples = list(tap.samples)
    return {
        "id": tap.id,
        "name": tap.name,
        "version": tap.marker(),
        "status": s.status,
        "state": s.state,
        "attempts": s.attempts,
        "rtt_ms": [_num(m.latency_ms) for m in samples],
        "jitter_ms": [_num(m.jitter_ms) for m in samples],
        "loss": [_num(m.loss_fraction) for m in samples],
        "transitions": [
            {"t": round(e.time - tap.t0, 3), "event": e.event, "source": e.source,
             "target": e.target}
            for e in tap.recent(RECENT_SHOWN)
        ],
        "errors": [
            {"t": round(t - tap.t0, 3), "code": err.code, "severity": str(err.severity),
             "message": err.message[:200]}
            for t, err in list(tap.recent_errors)[-RECENT_SHOWN:]
        ],
    }


class Dashboard:
    """The dashboard of ``hub``. ``async with Dashboard(hub, port) as d:`` serves at ``d.url``."""

    def __init__(self, hub: Hub, port: int = 0,
                 traces: Sequence[str | os.PathLike[str]] = ()) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.traces = [Path(t) for t in traces]
        for t in self.traces:
            if not t.is_file():
                raise FileNotFoundError(f"trace file not found: {t}")
        self.hub = hub
        self.port = port
        self.url = ""
        self.pushes = 0
        """Pushes sent (all clients)."""
        self._runner: web.AppRunner | None = None
        self._closing = anyio.Event()

    # -- lifetime -------------------------------------------------------------------------------
    async def __aenter__(self) -> Dashboard:
        app = web.Application(middlewares=[self._local_only])
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/sessions", self._api)
        app.router.add_get("/api/traces", self._trace_list)
        app.router.add_get("/timeline/{n:[0-9]+}", self._timeline)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, LOCAL_HOST, self.port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        addr: Any = self._runner.addresses[0]
        self.url = f"http://{LOCAL_HOST}:{addr[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP -----------------------------------------------------------------------------------
    @web.middleware
    async def _local_only(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith(
            "[") else (request.host or "").split("]")[0] + "]"
        if host not in _LOCAL_NAMES:
            return web.Response(status=403, text="dashboard: loopback Host only\n")
        response: web.StreamResponse = await handler(request)
        return response

    async def _api(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"sessions": [session_view(t) for t in self.hub],
                                  "time": time.time()})

    async def _trace_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"traces": [{"n": i, "name": t.name, "url": f"timeline/{i}"}
                                             for i, t in enumerate(self.traces)]})

    async def _timeline(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n >= len(self.traces):
            raise web.HTTPNotFound(text="no such trace\n")
        try:
            from fsm_voice.timeline import TimelineError, render
        except ImportError:
            raise web.HTTPNotImplemented(
                text="timelines need the 'trace' extra: pip install 'fsm-voice[trace]'\n"
            ) from None
        with tempfile.TemporaryDirectory(prefix="fsm-voice-timeline-") as tmp:
            out = Path(tmp) / "timeline.html"
            try:
                await anyio.to_thread.run_sync(render, self.traces[n], out)
            except (TimelineError, OSError, ValueError) as exc:
                raise web.HTTPUnprocessableEntity(text=f"cannot draw {self.traces[n].name}: "
                                                  f"{exc}\n") from None
            html = out.read_text()
        # plotly's own page: its inline script and styles (plotly.js embedded, nothing fetched)
        csp = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
               "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
               "connect-src 'none'; base-uri 'none'; form-action 'none'")
        return web.Response(text=html, content_type="text/html",
                            headers={"Content-Security-Policy": csp, "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff"})

    async def _page(self, request: web.Request) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
        links = "".join(
            f'<li><a href="timeline/{i}" target="_blank" rel="noopener">{html.escape(t.name)}'
            f"</a></li>" for i, t in enumerate(self.traces))
        page = PAGE.replace("{{NONCE}}", nonce).replace(
            "{{TRACES}}", f"<h2>Trace files</h2><ul id=\"traces\">{links}</ul>" if links else "")
        return web.Response(text=page, content_type="text/html",
                            headers={"Content-Security-Policy": csp,
                                     "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Every :data:`COALESCE` seconds, the sessions whose :meth:`SessionTap.marker` moved
        (polling the taps costs the dispatcher nothing per event)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        sent: dict[int, int] = {}
        first, quiet = True, 0.0
        with contextlib.suppress(ConnectionResetError):
            while not self._closing.is_set():
                if not first:
                    with anyio.move_on_after(COALESCE):
                        await self._closing.wait()
                    if self._closing.is_set():
                        break
                taps = list(self.hub)
                marks = {t.id: t.marker() for t in taps}
                changed = [session_view(t) for t in taps if sent.get(t.id) != marks[t.id]]
                if first or changed or sent.keys() != marks.keys():
                    payload = json.dumps({"live": list(marks), "changed": changed,
                                          "time": time.time()})
                    await resp.write(f"event: sessions\ndata: {payload}\n\n".encode())
                    self.pushes += 1
                    quiet = 0.0
                else:
                    quiet += COALESCE
                    if quiet >= HEARTBEAT:
                        await resp.write(b": keep-alive\n\n")
                        quiet = 0.0
                sent, first = marks, False
        return resp


@contextlib.asynccontextmanager
async def exporters(hub: Hub, *, metrics_port: int | None = None,
                    dashboard_port: int | None = None,
                    traces: Sequence[str | os.PathLike[str]] = (),
                    announce: Any = print) -> AsyncIterator[dict[str, str]]:
    """Serve ``/metrics`` and/or the dashboard for ``hub`` while the context is open (each only
    when its port is given; 0: any free port). ``announce(text)`` is told the URLs."""
    urls: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        if metrics_port is not None:
            from fsm_voice.metrics import PrometheusSink, serve_metrics

            sink = PrometheusSink(hub)
            stack.callback(sink.close)
            urls["metrics"] = await stack.enter_async_context(
                serve_metrics(sink.registry, metrics_port))
            announce(f"metrics: {urls['metrics']}")
        if dashboard_port is not None:
            board = await stack.enter_async_context(Dashboard(hub, dashboard_port, traces))
            urls["dashboard"] = board.url
            announce(f"dashboard: {board.url}")
        yield urls


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fsm-voice sessions</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{NONCE}}">
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;background:#fafafa;color:#222}
h1{font-size:1.2em;margin:0 0 .6em}
h2{font-size:1em;margin:1.2em 0 .3em}
#conn{font-size:.85em;color:#777;margin-left:.6em}
#conn.up{color:#2a7}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:.35em .5em;text-align:left;vertical-align:top}
th{font-weight:600;background:#f0f0f0}
.status{font-weight:600;padding:.1em .45em;border-radius:.3em;display:inline-block}
.s-idle{background:#eee;color:#666}.s-connecting{background:#fff3c4}
.s-active{background:#cdf5d8}.s-listening{background:#cdeffa}.s-speaking{background:#f3d6f5}
.s-reconnecting{background:#ffd98a}.s-error{background:#f7b5b5}
svg.spark{width:110px;height:26px;display:block}
svg.spark polyline{fill:none;stroke:#3572b0;stroke-width:1.4}
.lbl{font-size:.75em;color:#888}
ul{margin:0;padding-left:1.1em;font-size:.82em;max-height:8.5em;overflow:auto}
.err{color:#a11}
#empty{color:#888;padding:1em}
</style></head>
<body>
<h1>fsm-voice: live sessions <span id="conn">connecting...</span></h1>
<table><thead><tr><th>session</th><th>status</th><th>state</th><th>attempts</th>
<th>RTT (ms)</th><th>jitter (ms)</th><th>loss</th><th>recent transitions</th><th>errors</th>
</tr></thead><tbody id="rows"></tbody></table>
<div id="empty">no live session</div>
{{TRACES}}
<script nonce="{{NONCE}}">
"use strict";
const rows = document.getElementById("rows");
const conn = document.getElementById("conn");
const empty = document.getElementById("empty");
const NS = "http://www.w3.org/2000/svg";
const byId = new Map();

function spark(values) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const pts = values.map((v, i) => [i, v]).filter(p => p[1] !== null);
  if (pts.length) {
    const max = Math.max(...pts.map(p => p[1]), 1e-9);
    const n = Math.max(values.length - 1, 1);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.map(p =>
      (p[0] * 100 / n).toFixed(1) + "," + (23 - p[1] * 22 / max).toFixed(1)).join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function cell(tr, child) {
  const td = document.createElement("td");
  if (child instanceof Node) td.appendChild(child); else td.textContent = String(child);
  tr.appendChild(td);
  return td;
}

function sparkCell(tr, values, digits) {
  const td = cell(tr, spark(values));
  const last = values.length ? values[values.length - 1] : null;
  const lbl = document.createElement("span");
  lbl.className = "lbl";
  lbl.textContent = last === null ? "-" : Number(last).toFixed(digits);
  td.appendChild(lbl);
}

function list(items, fmt, cls) {
  const ul = document.createElement("ul");
  for (const it of items.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = fmt(it);
    if (cls) li.className = cls;
    ul.appendChild(li);
  }
  return ul;
}

function render(s) {
  const tr = document.createElement("tr");
  tr.id = "session-" + s.id;
  tr.dataset.status = s.status;
  cell(tr, s.name);
  const st = document.createElement("span");
  st.className = "status s-" + s.status;
  st.textContent = s.status;
  cell(tr, st).className = "status-cell";
  cell(tr, s.state).className = "state-cell";
  cell(tr, s.attempts);
  sparkCell(tr, s.rtt_ms, 0);
  sparkCell(tr, s.jitter_ms, 1);
  sparkCell(tr, s.loss, 3);
  cell(tr, list(s.transitions, t => t.t.toFixed(1) + "s " + t.event + ": " + t.source +
                " \u2192 " + t.target));
  cell(tr, list(s.errors, e => e.t.toFixed(1) + "s [" + e.severity + "] " + e.code + ": " +
                e.message, "err"));
  return tr;
}

function apply(msg) {
  const live = new Set(msg.live);
  for (const [id, tr] of byId) {
    if (!live.has(id)) { tr.remove(); byId.delete(id); }
  }
  for (const s of msg.changed) {
    const tr = render(s);
    const old = byId.get(s.id);
    if (old) old.replaceWith(tr); else rows.appendChild(tr);
    byId.set(s.id, tr);
  }
  empty.hidden = byId.size > 0;
}

const source = new EventSource("events");
source.addEventListener("sessions", ev => apply(JSON.parse(ev.data)));
source.onopen = () => { conn.textContent = "live"; conn.className = "up"; };
source.onerror = () => {
  conn.textContent = "reconnecting to the process...";
  conn.className = "";
};
</script>
</body></html>
"""


# -- CLI ------------------------------------------------------------------------------------------
def add_export_flags(parser: Any, *, dashboard: bool = False) -> None:
    """``--metrics-port`` (and, with ``dashboard``, ``--dashboard [PORT]``) on a subcommand."""
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics on 127.0.0.1:PORT (0: any free port; "
                        "needs the 'metrics' extra)")
    if dashboard:
        parser.add_argument("--dashboard", nargs="?", type=int, const=0, metavar="PORT",
                            help="serve the live dashboard on 127.0.0.1 (PORT, default any "
                            "free port)")


def run_observed(args: Any, main: Callable[[Hub | None], Awaitable[int]]) -> int:
    """Run ``main(hub)`` under ``anyio.run`` with the exporters ``args`` asks for (``hub`` is
    None when none is asked for: the session is then not watched at all)."""
    metrics_port = getattr(args, "metrics_port", None)
    dashboard_port = getattr(args, "dashboard", None)

    async def run() -> int:
        if metrics_port is None and dashboard_port is None:
            return await main(None)
        hub = Hub()
        async with exporters(hub, metrics_port=metrics_port, dashboard_port=dashboard_port,
                             traces=getattr(args, "trace_files", None) or (),
                             announce=lambda text: print(text, flush=True)):
            return await main(hub)

    try:
        return int(anyio.run(run))
    except (ValueError, ImportError, OSError) as exc:  # bad port, extra missing, port in use
        print(f"fsm-voice: {exc}", file=sys.stderr)
        return 2


async def run_dashboard(sessions: int, fault_every: float, duration: float | None,
                        hub: Hub) -> int:
    """``fsm-voice dashboard``: ``sessions`` real sessions against an in-process local peer,
    one of them (in turn) losing its call every ``fault_every`` seconds, until ``duration``
    seconds have passed (None: until Ctrl-C)."""
    from fsm_voice.client import realtime_session
    from fsm_voice.peer.server import RealtimePeer
    from fsm_voice.policy import IcePolicy, MonitorPolicy, SessionPolicy
    from fsm_voice.transport import NullSink, UtteranceSource

    policy = SessionPolicy(ice=IcePolicy(disconnected_grace=2.0),
                           monitor=MonitorPolicy(metrics_interval=1.0, health_interval=30.0))
    async with RealtimePeer(reply="echo") as peer, contextlib.AsyncExitStack() as stack:
        live = []
        for i in range(sessions):
            s = realtime_session(peer.base_url, "ek_local_dashboard", policy=policy,
                                 host_addresses=["127.0.0.1"], audio_sink=NullSink,
                                 audio_source=lambda: UtteranceSource(repeat=True))
            hub.track(s, name=f"local-{i + 1}")
            live.append(await stack.enter_async_context(s))
        for s in live:
            await s.start()
        with anyio.move_on_after(duration if duration is not None else math.inf):
            turn = 0
            while True:
                await anyio.sleep(fault_every)
                calls = sorted(peer.calls)
                if calls:
                    await peer.close_call(calls[turn % len(calls)])
                    turn += 1
    return 0


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("dashboard", help="watch live sessions in the browser: real sessions "
                       "against the in-process local peer, with a fault now and then")
    d.add_argument("--port", type=int, default=0, help="dashboard port on 127.0.0.1 (0: any)")
    d.add_argument("--sessions", type=int, default=3,
                   help="sessions to run, 0..100 (default 3)")
    d.add_argument("--trace", dest="trace_files", metavar="FILE", action="append",
                   help="a trace file whose timeline the page can draw (repeatable)")
    d.add_argument("--fault-every", type=float, default=15.0,
                   help="seconds between injected call drops (default 15)")
    d.add_argument("--duration", type=float, help="stop after this many seconds")
    add_export_flags(d)

    def cmd(a: Any) -> int:
        if not 0 <= a.sessions <= 100 or not 0 < a.fault_every < math.inf:
            print("fsm-voice dashboard: --sessions in 0..100, --fault-every > 0",
                  file=sys.stderr)
            return 2
        a.dashboard = a.port

        async def main(hub: Hub | None) -> int:
            assert hub is not None
            return await run_dashboard(a.sessions, a.fault_every, a.duration, hub)
        return run_observed(a, main)
    d.set_defaults(func=cmd)
