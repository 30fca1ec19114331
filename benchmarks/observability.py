"""Cost of observability on the request path, measured in this run against a baseline.

Runs the gateway's per-request observation (Tracker + metrics + request records queue
+ span building) on synthetic finished requests, and the same loop with no observers,
and prints the added microseconds per request and per streamed chunk. Run:
``python benchmarks/observability.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from corral.core.observe import Observers
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelKind
from corral.gateway.router import Router
from corral.gateway.tracking import Capture, Tracker
from corral.observe.metrics import GatewayMetrics
from corral.observe.records import RecordStore
from corral.registry.embedded import EmbeddedRegistry

REQUESTS = 20_000
CHUNKS = 32


async def run(tracker: Tracker) -> float:
    """Seconds per request of tracking a 32-chunk streamed chat request."""
    start = time.perf_counter()
    for i in range(REQUESTS):
        async with tracker.track(f"r{i}", "chat", "key1234", None) as event:
            event.model, event.instance_id, event.engine = "chat", "chat-1", "transformers"
            event.params = {"max_tokens": 32, "temperature": 0.7}
            last = time.perf_counter()
            for _ in range(CHUNKS):  # what Call does per chunk
                now = time.perf_counter()
                event.token_gaps_s.append(now - last)
                last = now
            event.prompt_tokens, event.completion_tokens = 20, CHUNKS
        await asyncio.sleep(0)  # a server yields between requests: the records writer runs then
    return (time.perf_counter() - start) / REQUESTS


async def main() -> None:
    registry = EmbeddedRegistry()
    router = Router(registry, lambda r: object())
    await router.start()
    await registry.put(InstanceRecord("chat-1", "chat", ModelKind.LLM, "transformers", "w", InstanceState.READY))
    await asyncio.sleep(0)
    folder = Path(tempfile.mkdtemp())
    store = RecordStore(f"sqlite:///{folder / 'records.db'}", queue_size=REQUESTS * 2)
    await store.open()
    full = Tracker(Observers([GatewayMetrics(router), store]), Capture())
    bare = Tracker(Observers(), Capture())
    base, with_obs = [], []
    for _ in range(3):
        base.append(await run(bare))
        with_obs.append(await run(full))
    await store.flush()
    await store.close()
    b, o = statistics.median(base), statistics.median(with_obs)
    print("| loop (median of 3, 20k requests of 32 chunks) | µs per request |")
    print("|---|---|")
    print(f"| tracking only (baseline) | {b * 1e6:.1f} |")
    print(f"| tracking + metrics + records queue + spans | {o * 1e6:.1f} |")
    print(f"| added by observers | {(o - b) * 1e6:.1f} µs per request ({(o - b) * 1e6 / CHUNKS:.2f} µs per chunk) |")
    print(f"records written: {store.written_total}, dropped: {store.dropped_total} (the writer batches in the background)")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
