"""The smallest engine in docs/engines.md works as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import ChatMessage, GenerationChunk, GenerationEnd, GenerationRequest, SamplingParams

DOC = Path(__file__).resolve().parents[3] / "docs" / "engines.md"


async def test_doc_example_engine_runs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code = re.search(r"```python\n(# mypkg/echo\.py\n.*?)```", DOC.read_text(), re.S)
    assert code is not None
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "echo.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mypkg", None)
    from mypkg.echo import ENTRY  # type: ignore[import-not-found]

    spec = ModelSpec(name="mirror", kind=ModelKind.LLM, engine="echo", source="unused", options={"suffix": "!"})
    engine = ENTRY.create(spec)
    await engine.start()
    request = GenerationRequest("r1", "mirror", SamplingParams(n=2), messages=(ChatMessage("user", "abc"),))
    items = [item async for item in await engine.generate(request)]
    assert [i.text for i in items if isinstance(i, GenerationChunk)] == ["cba!", "cba!"]
    assert isinstance(items[-1], GenerationEnd) and items[-1].usage.completion_tokens == 8
