"""Closing a generation before reading anything frees its batch slot (a client gone
before the response started must not leave the engine generating)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import GenerationRequest, SamplingParams
from corral.engines.catalog import get_entry
from corral.engines.transformers.demo import ensure_demo_llm


async def test_closing_an_unread_stream_cancels_it(tmp_path: Path) -> None:
    folder = ensure_demo_llm(tmp_path)
    engine = get_entry("transformers").create(ModelSpec("m", ModelKind.LLM, "transformers", str(folder)))
    await engine.start()
    try:
        request = GenerationRequest("r", "m", SamplingParams(max_tokens=3000, ignore_eos=True), prompt="def f(")
        stream = await engine.generate(request)
        await stream.aclose()  # never iterated
        for _ in range(200):
            load = engine.load()
            if load.in_flight == 0 and load.queued == 0 and load.cancelled_total == 1:
                break
            await asyncio.sleep(0.02)
        assert (load.in_flight, load.queued, load.cancelled_total, load.completed_total) == (0, 0, 1, 0)
    finally:
        await engine.stop()
