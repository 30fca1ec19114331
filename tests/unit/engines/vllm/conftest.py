"""Fixtures of the vllm engine tests: the fake vLLM of ``tests/fakes`` on ``sys.path``
for one test, and engines built on it through the catalog."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from corral.core.spec import ModelKind, ModelSpec
from corral.engines.catalog import get_entry
from corral.engines.vllm.engine import VLLMEngine

FAKES = Path(__file__).resolve().parents[3] / "fakes"
SOURCE = "fake-org/tiny-chat"


def _purge() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``import vllm`` finds the fake for this test only; nothing of it stays imported after."""
    assert "vllm" not in sys.modules, "a vllm module is already imported; these tests need the fake"
    monkeypatch.syspath_prepend(str(FAKES))
    import vllm

    assert Path(vllm.__file__).is_relative_to(FAKES), vllm.__file__
    try:
        yield vllm
    finally:
        _purge()  # the next test (or the catalog) must not see the fake as installed


Factory = Callable[..., Awaitable[tuple[VLLMEngine, Any]]]


@pytest_asyncio.fixture
async def make(fake_vllm: ModuleType) -> AsyncIterator[Factory]:
    """``await make(source=..., **options)``: a started engine and the fake ``AsyncLLM`` it drives."""
    engines: list[VLLMEngine] = []

    async def factory(source: str = SOURCE, **options: Any) -> tuple[VLLMEngine, Any]:
        spec = ModelSpec(name="m", kind=ModelKind.LLM, engine="vllm", source=source, options=options)
        engine = get_entry("vllm").create(spec)
        assert isinstance(engine, VLLMEngine)
        engines.append(engine)
        await engine.start()
        return engine, fake_vllm.v1.engine.async_llm.AsyncLLM.instances[-1]

    yield factory
    for engine in engines:
        await engine.stop()
