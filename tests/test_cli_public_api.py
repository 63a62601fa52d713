"""The package as an application sees it: the public API in ``fsm_voice``, what embedding it
imports, one exception base class, and dependencies declared and pinned as tested."""

from __future__ import annotations

import ast
import enum
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import fsm_voice
from fsm_voice.machine import STATUSES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: Modules only a command needs; an embedding application never imports them.
COMMAND_ONLY = ("rich", "pydot", "fsm_voice.peer", "fsm_voice.broker", "fsm_voice.cli",
                "fsm_voice.demo", "fsm_voice.diagrams", "fsm_voice.check", "fsm_voice.planted",
                "fsm_voice.mutants")

EMBED = """
import json, sys
import fsm_voice
light = sorted(m for m in ("aiortc", "aioice", "av", "aiohttp", "anyio") if m in sys.modules)
import anyio
from fsm_voice import SessionPolicy, realtime_session

async def main() -> None:
    session = realtime_session("http://127.0.0.1:9", "ek_x", policy=SessionPolicy())
    async with session:
        pass

anyio.run(main)
print(json.dumps({"after_import": light, "modules": sorted(sys.modules)}))
"""


def test_import_is_light_and_embedding_pulls_no_command_parts() -> None:
    result = subprocess.run([sys.executable, "-c", EMBED], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["after_import"] == []  # `import fsm_voice` alone loads none of them
    loaded = [m for m in report["modules"]
              if any(m == c or m.startswith(c + ".") for c in COMMAND_ONLY)]
    assert loaded == []
    assert "fsm_voice.session" in report["modules"]  # the session really was built


def test_every_public_name_resolves() -> None:
    for name in fsm_voice.__all__:
        assert getattr(fsm_voice, name) is not None, name
    assert set(dir(fsm_voice)) >= set(fsm_voice.__all__)
    with pytest.raises(AttributeError):
        _ = fsm_voice.no_such_name  # type: ignore[attr-defined]


def test_statuses_are_a_str_enum() -> None:
    status = fsm_voice.Status
    assert issubclass(status, enum.StrEnum)
    assert [s.value for s in status] == list(STATUSES)
    assert status.ACTIVE == "active"


def test_every_public_exception_has_one_base() -> None:
    errors = [getattr(fsm_voice, n) for n in fsm_voice.__all__
              if isinstance(getattr(fsm_voice, n), type)
              and issubclass(getattr(fsm_voice, n), BaseException)]
    assert {e.__name__ for e in errors} >= {"FsmVoiceError", "VoiceError", "ConfigError",
                                            "QueueOverflowError", "AudioFileError",
                                            "ChannelNotOpenError"}
    assert all(issubclass(e, fsm_voice.FsmVoiceError) for e in errors), errors
    from fsm_voice.broker.audit import AuditLogClosed

    assert issubclass(AuditLogClosed, fsm_voice.FsmVoiceError)
    assert issubclass(fsm_voice.ConfigError, ValueError)  # still what it was, too


def _requirements(*extras: str) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return {r.name.lower(): r for r in reqs if r.name != "fsm-voice"}


def _third_party_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "fsm_voice"}


#: Files allowed to import an extra's packages (each imports them only when run).
EXTRA_USERS = {"cli": {"cli.py", "demo.py", "terminal.py", "trace_cli.py"},
               "diagram": {"diagrams.py"},
               "broker-scale": {"broker/audit_pg.py", "broker/redis_limits.py"},
               "metrics": {"metrics.py"}, "otel": {"otel.py"}, "trace": {"timeline.py"}}


def test_every_import_is_declared_and_extras_stay_in_commands() -> None:
    dists = importlib.metadata.packages_distributions()
    core = _requirements()
    for path in sorted((ROOT / "fsm_voice").rglob("*.py")):
        rel = path.relative_to(ROOT / "fsm_voice").as_posix()
        allowed = dict(core)
        for extra, users in EXTRA_USERS.items():
            if rel in users:
                allowed |= {k: v for k, v in _requirements(extra).items() if k not in core}
        for module in _third_party_imports(path):
            names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            declared = {k.lower().replace("_", "-") for k in allowed}
            assert names & declared, f"fsm_voice/{rel} imports {module}, not declared"


@pytest.mark.parametrize("extras", [(), ("cli", "diagram")])
def test_installed_versions_are_the_pinned_ones(extras: tuple[str, ...]) -> None:
    for name, req in _requirements(*extras).items():
        installed = importlib.metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), (name, installed, req)


def test_aiortc_stack_is_pinned_to_the_tested_series() -> None:
    reqs = _requirements()
    for name, tested, untested in [("aiortc", "1.16.0", "1.17.0"),
                                   ("aioice", "0.13.0", "0.14.0"), ("av", "18.1.0", "19.0.0")]:
        assert reqs[name].specifier.contains(tested) and not reqs[name].specifier.contains(
            untested), name
