"""Load generation against an OpenAI-compatible endpoint.

Two shapes of load:

- **closed loop** (``concurrency``): N clients, each on its own keep-alive connection,
  send the next request as soon as the previous one is answered; measures capacity;
- **open loop** (``rate``): requests start on a fixed (or Poisson) schedule whatever the
  server does, on a pool of connections; latency counts from the scheduled start, so a
  server falling behind shows as latency rather than as a slower schedule (no
  "coordinated omission").

Either stops after ``duration_s`` (requests in flight then are awaited and counted) or
after ``requests``. Every request is the same pre-built buffer: the point is to measure
the server, not to spend CPU building JSON. ``processes > 1`` splits the load over that
many generator processes (spawned, started together) and merges their samples.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from time import perf_counter
from typing import Any

import orjson

from corral.bench.http import (
    Connection, Exchange, Target, build_request, completion_tokens, error_kind, fetch, new_event_loop, prompt_tokens,
)
from corral.bench.stats import Samples

# under the API base (``.../v1``); "messages" is Anthropic's Messages API; ollama-chat is
# Ollama's /api/chat, its URL the server's root
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
             "messages": "/messages", "ollama-chat": "/api/chat"}
_WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing on an old green fence "
          "near the river").split()
_EXAMPLE_BYTES = 300
_CONNECT_BACKOFF_S = 0.05  # after a failed connection, so an unreachable server is not hammered in a loop


class Unreachable(Exception):
    """The endpoint could not be reached at all (before the run)."""


@dataclass(frozen=True)
class LoadConfig:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    api_keys: tuple[str, ...] = ()  # several keys, one per request in turn (instead of api_key)
    endpoint: str = "chat"  # chat | completions | embeddings | messages | ollama-chat
    stream: bool = False
    concurrency: int = 1  # closed loop: clients; open loop: ignored
    rate: float | None = None  # open loop: requests per second
    poisson: bool = False  # open loop: exponential gaps instead of even ones
    duration_s: float | None = 10.0
    requests: int | None = None  # stop after this many instead (or as well)
    prompt_tokens: int = 32  # words of the prompt (about one token each)
    max_tokens: int = 16
    inputs: int = 1  # embeddings: texts per request
    timeout_s: float = 300.0
    max_connections: int = 1024  # open loop: connections opened at most
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request body

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if self.duration_s is None and self.requests is None:
            raise ValueError("give a duration or a number of requests")
        if self.concurrency < 1 or (self.rate is not None and self.rate <= 0):
            raise ValueError("concurrency must be >= 1 and rate > 0")
        if self.stream and self.endpoint == "embeddings":
            raise ValueError("embeddings do not stream")

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("api_key", "api_keys")}
        out["api_key"] = "***" if self.api_key else None
        out["api_keys"] = len(self.api_keys)
        return out


def prompt_text(words: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(max(words, 1)))


def request_body(config: LoadConfig) -> bytes:
    text = prompt_text(config.prompt_tokens)
    body: dict[str, Any] = {"model": config.model}
    if config.endpoint == "embeddings":
        body["input"] = text if config.inputs == 1 else [f"{i} {text}" for i in range(config.inputs)]
    elif config.endpoint == "ollama-chat":
        body["messages"] = [{"role": "user", "content": text}]
        body["stream"] = config.stream
        body["options"] = {"num_predict": config.max_tokens}
    else:
        if config.endpoint in ("chat", "messages"):
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body["max_tokens"] = config.max_tokens
        body["stream"] = config.stream
        if config.stream and config.endpoint != "messages":  # Anthropic's streams always end with usage
            body["stream_options"] = {"include_usage": True}
    body.update(config.extra_body)
    return orjson.dumps(body)


def request_payload(config: LoadConfig, target: Target) -> bytes:
    streamed = "application/x-ndjson" if config.endpoint == "ollama-chat" else "text/event-stream"
    headers = {"content-type": "application/json", "accept": streamed if config.stream else "application/json"}
    if config.api_key and config.endpoint == "messages":
        headers["x-api-key"] = config.api_key  # as Anthropic's SDKs send it
    elif config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    return build_request(target, "POST", ENDPOINTS[config.endpoint], request_body(config), headers)


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    ok: int
    failed: int
    in_flight: int
    output_tokens: int


class _Run:
    """One run in one process: the shared state of its clients."""

    def __init__(self, config: LoadConfig, progress: Callable[[Progress], None] | None, every_s: float) -> None:
        self.config = config
        self.target = Target.parse(config.url)
        keys = config.api_keys or (config.api_key,)
        self.payloads = [request_payload(replace(config, api_key=k), self.target) for k in keys]
        self.payload = self.payloads[0]
        self.samples = Samples()
        self.progress = progress
        self.every_s = every_s
        self.issued = 0
        self.in_flight = 0
        self.t0 = 0.0
        self.deadline = float("inf")
        self.last_end = 0.0

    def more(self) -> bool:
        """Whether another request may start (and counts it)."""
        if perf_counter() >= self.deadline:
            return False
        if self.config.requests is not None and self.issued >= self.config.requests:
            return False
        self.issued += 1
        return True

    def record(self, ex: Exchange) -> None:
        s = self.samples
        self.last_end = ex.t_end
        if ex.error is None and 200 <= ex.status < 300:
            s.ok += 1
            s.latency.append(ex.t_end - ex.t_start)
            if ex.sse:
                if ex.t_first is not None:
                    s.ttft.append(ex.t_first - ex.t_start)
                s.output_tokens += ex.text_events if ex.completion_tokens is None else ex.completion_tokens
                s.prompt_tokens += ex.prompt_tokens or 0
            else:
                body = ex.content
                s.output_tokens += completion_tokens(body) or 0
                s.prompt_tokens += prompt_tokens(body) or 0
        else:
            kind = ex.error if ex.error is not None and ex.status in (0, 200) else str(ex.status)
            s.errors[kind] += 1
            if kind not in s.error_examples:  # once per kind: errors may come by the thousand
                body = ex.content[:_EXAMPLE_BYTES].decode("utf-8", "replace").strip()
                s.error_examples[kind] = body or kind

    def failed_connect(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        self.samples.errors[kind] += 1
        self.samples.error_examples.setdefault(kind, str(exc)[:_EXAMPLE_BYTES] or kind)

    async def connect(self) -> Connection | None:
        try:
            return await Connection.open(self.target, min(self.config.timeout_s, 10.0))
        except (OSError, asyncio.TimeoutError) as exc:
            self.failed_connect(exc)
            await asyncio.sleep(_CONNECT_BACKOFF_S)
            return None

    async def client(self) -> None:
        """Closed loop: one connection, one request after another."""
        conn: Connection | None = None
        gaps = self.samples.itl if self.config.stream else None
        timeout, payloads = self.config.timeout_s, self.payloads
        try:
            while self.more():
                payload = payloads[self.issued % len(payloads)]
                if conn is None or conn.closed:
                    conn = await self.connect()
                    if conn is None:
                        continue
                self.in_flight += 1
                ex = await conn.request(payload, gaps, None, timeout)
                self.in_flight -= 1
                self.record(ex)
                if ex.status == 0:  # no answer at all: do not spin on a server that hangs up
                    await asyncio.sleep(_CONNECT_BACKOFF_S)
        finally:
            if conn is not None:
                conn.close()

    async def open_loop(self) -> None:
        """Open loop: start requests on schedule, each on an idle connection or a new one."""
        rate = self.config.rate
        assert rate is not None
        idle: list[Connection] = []
        opened: list[Connection] = []
        free = asyncio.Condition()
        tasks: set[asyncio.Task[None]] = set()
        gaps = self.samples.itl if self.config.stream else None

        async def one(t_start: float) -> None:
            conn = None
            while conn is None:
                while idle:
                    candidate = idle.pop()
                    if not candidate.closed:
                        conn = candidate
                        break
                if conn is not None:
                    break
                if sum(1 for c in opened if not c.closed) < self.config.max_connections:
                    conn = await self.connect()
                    if conn is None:  # counted as an error by connect
                        return
                    opened.append(conn)
                else:
                    async with free:
                        await free.wait()
            self.in_flight += 1
            ex = await conn.request(self.payload, gaps, t_start, self.config.timeout_s)
            self.in_flight -= 1
            self.record(ex)
            idle.append(conn)
            async with free:
                free.notify()

        rand = random.Random(12345)
        scheduled = perf_counter()
        try:
            while self.more():
                now = perf_counter()
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                task = asyncio.get_running_loop().create_task(one(scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                scheduled += rand.expovariate(rate) if self.config.poisson else 1.0 / rate
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for conn in opened:
                conn.close()

    async def ticker(self) -> None:
        assert self.progress is not None
        while True:
            await asyncio.sleep(self.every_s)
            s = self.samples
            self.progress(Progress(perf_counter() - self.t0, s.ok, s.failed, self.in_flight, s.output_tokens))

    async def run(self, start_at: float | None = None) -> Samples:
        if start_at is not None:  # several processes: start together, on the wall clock
            await asyncio.sleep(max(0.0, start_at - time.time()))
        self.t0 = perf_counter()
        if self.config.duration_s is not None:
            self.deadline = self.t0 + self.config.duration_s
        ticker = asyncio.get_running_loop().create_task(self.ticker()) if self.progress else None
        try:
            if self.config.rate is not None:
                await self.open_loop()
            else:
                await asyncio.gather(*(self.client() for _ in range(self.config.concurrency)))
        finally:
            if ticker is not None:
                ticker.cancel()
        self.samples.elapsed_s = max(self.last_end - self.t0, 0.0) if self.samples.ok else perf_counter() - self.t0
        return self.samples


async def run_async(config: LoadConfig, progress: Callable[[Progress], None] | None = None,
                    every_s: float = 0.5, start_at: float | None = None) -> Samples:
    """Run ``config`` on the running event loop; ``progress`` is called every ``every_s``."""
    return await _Run(config, progress, every_s).run(start_at)


def run(config: LoadConfig, progress: Callable[[Progress], None] | None = None, every_s: float = 0.5) -> Samples:
    """Run ``config`` to the end on a new (uvloop) event loop."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_async(config, progress, every_s))
    finally:
        loop.close()


def _child(config: LoadConfig, start_at: float) -> Samples:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(run_async(config, None, 1.0, start_at))
    finally:
        loop.close()


def split(config: LoadConfig, parts: int) -> list[LoadConfig]:
    """``config`` as ``parts`` smaller loads of the same shape (concurrency, rate and the
    request count divided as evenly as they go)."""
    parts = max(1, min(parts, config.concurrency if config.rate is None else parts))
    out = []
    for i in range(parts):
        concurrency = config.concurrency // parts + (1 if i < config.concurrency % parts else 0)
        requests = None
        if config.requests is not None:
            requests = config.requests // parts + (1 if i < config.requests % parts else 0)
        rate = None if config.rate is None else config.rate / parts
        out.append(replace(config, concurrency=max(concurrency, 1), requests=requests, rate=rate))
    return [c for c in out if c.requests is None or c.requests > 0]


def run_processes(config: LoadConfig, processes: int, tick: Callable[[float], None] | None = None) -> Samples:
    """Run ``config`` split over ``processes`` spawned generator processes and merge the
    samples. ``tick(elapsed_s)`` is called about every second while they run."""
    configs = split(config, processes)
    if len(configs) == 1:
        return run(configs[0])
    start_at = time.time() + 1.5  # time for the children to import and connect... to nothing yet
    with ProcessPoolExecutor(len(configs), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_child, c, start_at) for c in configs]
        while not all(f.done() for f in futures):
            time.sleep(0.2)
            if tick is not None:
                tick(max(0.0, time.time() - start_at))
        merged = Samples()
        for f in futures:
            merged.merge(f.result())
    return merged


async def preflight(config: LoadConfig) -> str:
    """Check the endpoint answers at all and return the model to use (``config.model``,
    or the first one ``GET /models`` lists when it is empty). Raise ``Unreachable``."""
    target = Target.parse(config.url)
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        status, body = await fetch(target, "GET", "/models", headers=headers, timeout=min(config.timeout_s, 10.0))
    except (OSError, asyncio.TimeoutError) as exc:
        raise Unreachable(f"cannot reach {target.url()}: {error_kind(exc)}") from None
    if config.model:
        return config.model
    if status == 401 or status == 403:
        raise Unreachable(f"{target.url('/models')} answered HTTP {status}: pass --api-key")
    try:
        models = [m["id"] for m in orjson.loads(body)["data"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        models = []
    if status != 200 or not models:
        raise Unreachable(f"{target.url('/models')} answered HTTP {status} with no model: pass --model")
    return str(models[0])
