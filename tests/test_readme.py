"""The README's embedding example runs as written (against the local peer)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from fsm_voice.peer.server import RealtimePeer

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_embedding_example_runs(tmp_path: Path) -> None:
    text = README.read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    assert "http://127.0.0.1:8765" in code and "anyio.sleep(10)" in code
    imports = [ln for ln in code.splitlines() if ln.startswith(("import ", "from "))]
    assert imports and all(ln in ("import anyio",) or ln.startswith("from fsm_voice import ")
                           for ln in imports), imports  # the public API only
    async with RealtimePeer() as peer:
        code = code.replace("http://127.0.0.1:8765", peer.base_url)
        code = code.replace("anyio.sleep(10)", "anyio.sleep(2)")
        script = tmp_path / "example.py"
        script.write_text(code)
        result = await anyio.run_process([sys.executable, "-W", "error::ResourceWarning",
                                          str(script)], cwd=tmp_path, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "idle -> connecting" in out and "connecting -> active" in out
    assert out.strip().splitlines()[-1].endswith("-> idle")
    assert (tmp_path / "assistant.wav").stat().st_size > 44  # a WAV with audio in it
