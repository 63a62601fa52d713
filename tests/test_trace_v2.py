"""Trace format version 2 (compact event lines) and version 1 side by side: a version-1 file
(``tests/data/trace_v1.jsonl``, written by the version-1 writer) still reads, replays and
draws; the same session recorded now (version 2) reads back as the very same records, field
for field; malformed version-2 lines are typed errors naming the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fsm_voice.cli import main
from fsm_voice.machine import STATUS_OF
from fsm_voice.replay import ENGINES, replay
from fsm_voice.timeline import build, render
from fsm_voice.trace import VERSION, TraceError, compact, expand, read_trace, schema
from tests.trace_session import V1_FIXTURE, record_every_field

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines_of(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def validate(path: Path) -> None:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    v = cls(schema())
    for obj in lines_of(path):
        v.validate(obj)


def test_a_version_1_file_reads_replays_and_draws(tmp_path: Path) -> None:
    validate(V1_FIXTURE)
    header, records = read_trace(V1_FIXTURE)
    assert header["version"] == 1 and all(isinstance(o, dict) for o in lines_of(V1_FIXTURE))
    events = [r for r in records if r["kind"] == "event"]
    assert {r["outcome"] for r in events} == {"taken", "refused", "stale"}
    for engine in ENGINES:
        result = replay(header, records, engine=engine)
        assert result.divergence is None, result.divergence.describe()
        assert result.compared == len(events)
    tl = build(header, records)
    spans = {(s.lane, s.label) for s in tl.spans}
    assert {("status", "reconnecting"), ("status", "listening"), ("status", "active"),
            ("recovery", "ice_grace"), ("recovery", "backoff")} <= spans
    assert tl.samples["rtt_ms"] == ((0.0, 42.5),)
    render(V1_FIXTURE, tmp_path / "v1.svg")
    assert (tmp_path / "v1.svg").stat().st_size > 10_000
    assert main(["replay", str(V1_FIXTURE)]) == 0
    assert main(["diagram", "--trace", str(V1_FIXTURE), "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "trace_v1.svg").stat().st_size > 1_000


async def test_a_version_2_file_holds_every_field_of_version_1(tmp_path: Path) -> None:
    """The same deterministic session, recorded by the version-1 writer (the fixture) and by
    this one: the records read back are equal, every field of every record."""
    path = tmp_path / "v2.jsonl"
    await record_every_field(path)
    validate(path)
    h1, r1 = read_trace(V1_FIXTURE)
    h2, r2 = read_trace(path)
    assert h2["version"] == VERSION == 2 and h2["status_of"] == STATUS_OF
    assert {k: v for k, v in h2.items() if k not in ("version", "status_of")} == \
        {k: v for k, v in h1.items() if k != "version"}
    assert r2 == r1
    events = [r for r in r2 if r["kind"] == "event"]
    for key in ("draws", "detail", "timer", "severity", "code", "retry_after", "expires_in"):
        assert any(key in r for r in events), key  # the session has every optional field
    assert any(r["token"] is None for r in events) and any(r["token"] != r["gen"] for r in events)
    raw = lines_of(path)
    assert sum(isinstance(o, list) for o in raw) == len(events)  # events are compact lines
    assert path.stat().st_size < 0.6 * V1_FIXTURE.stat().st_size
    for engine in ENGINES:
        assert replay(h2, r2, engine=engine).agreed


def test_compact_and_expand_are_inverse_on_every_record() -> None:
    _h, records = read_trace(V1_FIXTURE)
    for r in records:
        if r["kind"] == "event":
            line = json.loads(json.dumps(compact(r)))
            assert expand(line) == r
            assert len(line) >= 4 and "kind" not in json.dumps(line)


def _v2(tmp_path: Path, *lines: Any, status_of: dict[str, str] | None = None) -> Path:
    header: dict[str, Any] = {"kind": "header", "schema": "fsm-voice-trace", "version": 2,
                              "state": "idle", "replayable": True, "policy": {}}
    if status_of is not None:
        header["status_of"] = status_of
    p = tmp_path / "v2.jsonl"
    p.write_text("".join(json.dumps(o) + "\n" for o in (header, *lines)))
    return p


def test_status_comes_from_the_file_not_from_the_current_machine(tmp_path: Path) -> None:
    """A status left out is the target's in the header's ``status_of`` (what the recording
    machine said), so a replay still compares the recorded status; one written out wins."""
    line = [1.0, 1, "ice_disconnected", "active", "ice_grace"]
    _h, (r,) = read_trace(_v2(tmp_path, line, status_of={**STATUS_OF, "ice_grace": "grace"}))
    assert r["status"] == "grace" and STATUS_OF["ice_grace"] == "active"
    _h, (r,) = read_trace(_v2(tmp_path, [*line, {"status": "odd"}]))
    assert r["status"] == "odd"
    _h, (r,) = read_trace(_v2(tmp_path, line))  # no status_of: the current machine's
    assert r == {"kind": "event", "t": 1.0, "gen": 1, "token": 1, "event": "ice_disconnected",
                 "outcome": "taken", "source": "active", "target": "ice_grace",
                 "status": "active", "effects": []}


@pytest.mark.parametrize("line", [
    [0.0, 1, "start"],
    [0.0, 1, "start", "idle", 5],
    [0.0, 1, "start", "idle", {"token": None}, "connecting"],
    [0.0, 1, "start", "idle", [["arm", "connect_timeout"]]],
    ["x", 1, "start", "idle"],
    [0.0, "1", "start", "idle"],
], ids=["short", "not-a-field", "out-of-order", "arm-without-delay", "t-not-a-number",
        "gen-not-an-int"])
def test_a_malformed_version_2_line_is_a_typed_error_naming_it(tmp_path: Path,
                                                               line: list[Any]) -> None:
    with pytest.raises(TraceError, match=r"v2\.jsonl:2: "):
        read_trace(_v2(tmp_path, line))


def test_a_bad_status_map_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"v2\.jsonl:1: .*status_of"):
        read_trace(_v2(tmp_path, status_of={"active": 1}))  # type: ignore[dict-item]


def test_a_newer_version_is_refused_for_its_version_not_its_lines(tmp_path: Path) -> None:
    """A version-3 file whose lines this reader cannot parse is refused for its version (the
    first line), not for a line it was never going to understand."""
    p = tmp_path / "v3.jsonl"
    p.write_text(json.dumps({"kind": "header", "schema": "fsm-voice-trace", "version": 3})
                 + "\n" + json.dumps([0.0, 1, "start", "idle"]) + "\n")
    with pytest.raises(TraceError, match=r"trace version 3; this fsm-voice reads versions 1, 2"):
        read_trace(p)
