"""The one request pipeline: route -> call -> stream -> account.

Every protocol front-end goes through here, so balancing, in-flight accounting and
cancellation are written once. Front-ends only translate wire formats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar, cast

from corral.core.engine import Embedding, Rerank, TextGeneration
from corral.core.errors import CorralError, EngineError, InstanceLost, Overloaded, Unavailable
from corral.core.observe import MAX_GAPS, RequestEvent
from corral.observe.tracing import new_id, span
from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    RerankRequest,
    RerankResult,
    ToolCall,
    Usage,
)
from corral.gateway.router import Router, Target

log = logging.getLogger("corral.requests")


@dataclass(eq=False)
class Call:
    """A generation in progress on one target. Iterate it once; closing it early cancels
    the engine's work."""

    router: Router
    target: Target
    stream: AsyncIterator[GenerationChunk | GenerationEnd]
    request: GenerationRequest
    event: RequestEvent | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    usage: Usage | None = None
    _closed: bool = False

    async def __aiter__(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        outcome = "cancelled"
        event = self.event
        last = self.started
        try:
            async for item in self.stream:
                if isinstance(item, GenerationChunk):
                    now = time.perf_counter()
                    if self.first_token_at is None:
                        self.first_token_at = now
                        self.router.observe_ttft(self.target, now - self.started)
                        if event is not None:
                            event.ttft_s = now - event.clock_start
                    elif event is not None and len(event.token_gaps_s) < MAX_GAPS:
                        event.token_gaps_s.append(now - last)
                    last = now
                    if event is not None and event.completion_text is not None:
                        event.completion_text += item.text
                elif isinstance(item, GenerationEnd):
                    self.usage = item.usage
                    if event is not None:
                        event.prompt_tokens += item.usage.prompt_tokens
                        event.completion_tokens += item.usage.completion_tokens
                        event.spans.extend(item.spans or self._local_spans(item))
                yield item
            outcome = "ok"
        except CorralError:
            outcome = "error"
            raise
        except Exception as exc:  # an engine bug must reach the client as an error, not a hang
            outcome = "error"
            log.exception("engine failure in request %s", self.request.request_id)
            raise EngineError(f"model {self.request.model!r} failed: {type(exc).__name__}") from exc
        finally:
            await self.close(outcome)

    def _local_spans(self, end: GenerationEnd) -> list[dict[str, Any]]:
        """An in-process engine reports no spans: measure its span here."""
        event = self.event
        if event is None or event.trace_id is None or self.target.record.address is not None:
            return []
        now = time.time()
        start = now - (time.perf_counter() - self.started)
        ttft = self.first_token_at - self.started if self.first_token_at else None
        attrs = {
            "corral.instance": self.target.instance_id, "corral.model": self.target.record.model,
            "corral.engine": self.target.record.engine, "corral.ttft_s": ttft,
            "gen_ai.usage.input_tokens": end.usage.prompt_tokens, "gen_ai.usage.output_tokens": end.usage.completion_tokens,
        }
        return [span("corral.engine.generate", event.trace_id, new_id(8), event.span_id, start, now, attrs)]

    async def close(self, outcome: str = "cancelled") -> None:
        if self._closed:
            return
        self._closed = True
        self.router.release(self.target)
        if self.event is not None and self.event.outcome == "ok" and outcome != "ok":
            self.event.outcome = outcome
        aclose = getattr(self.stream, "aclose", None)
        if aclose is not None:
            await aclose()
        # one line per request is for debugging: at request rates it costs more CPU than
        # the rest of the gateway's bookkeeping; records, metrics and traces keep it all
        if log.isEnabledFor(logging.DEBUG):
            ttft = (self.first_token_at - self.started) * 1000 if self.first_token_at else float("nan")
            log.debug(
                "request=%s model=%s instance=%s outcome=%s latency_ms=%.1f ttft_ms=%.1f prompt_tokens=%s completion_tokens=%s",
                self.request.request_id,
                self.request.model,
                self.target.record.instance_id,
                outcome,
                (time.perf_counter() - self.started) * 1000,
                ttft,
                self.usage.prompt_tokens if self.usage else "-",
                self.usage.completion_tokens if self.usage else "-",
            )


R = TypeVar("R")
U = TypeVar("U", EmbeddingResult, RerankResult)  # one-answer results: they carry usage


class Pipeline:
    """Routes each request to an instance, retrying on another one when an instance
    fails or is full before its response starts (at most ``attempts`` instances)."""

    def __init__(self, router: Router, attempts: int = 3) -> None:
        self._router = router
        self._attempts = attempts

    async def _dispatch(
        self,
        model: str,
        capability: str,
        request: GenerationRequest | None,
        call: Callable[[Target], Awaitable[R]],
        tried: set[str] | None = None,
    ) -> tuple[Target, R]:
        """Acquire an instance and run ``call`` on it; on ``Unavailable`` (unreachable,
        draining) or ``Overloaded`` try another. The target stays acquired on success."""
        tried = set() if tried is None else tried
        needs = request.features() if request is not None else frozenset()
        while True:
            target = await self._router.acquire(model, capability, request, tried)
            try:
                result = await call(target)
            except (Unavailable, Overloaded) as exc:
                self._router.release(target)
                if isinstance(exc, Unavailable):
                    self._router.failed(target)
                tried.add(target.instance_id)
                if len(tried) >= self._attempts or not self._router.has_routable(model, capability, tried, needs):
                    raise
                log.info("retrying %s on another instance: %s", model, exc.message)
                continue
            except BaseException:
                self._router.release(target)
                raise
            self._router.succeeded(target)
            return target, result

    async def generate(
        self,
        request: GenerationRequest,
        capability: str,
        event: RequestEvent | None = None,
        tried: set[str] | None = None,
    ) -> Call:
        async def start(target: Target) -> AsyncIterator[GenerationChunk | GenerationEnd]:
            # the router chose it by the capabilities its record lists (a Protocol
            # isinstance check here would cost more than the rest of the dispatch)
            client = cast(TextGeneration, target.client)
            return await client.generate(request)

        tried = set() if tried is None else tried
        target, stream = await self._dispatch(request.model, capability, request, start, tried)
        _served_by(event, target, len(tried))
        return Call(self._router, target, stream, request, event)

    async def complete(
        self, request: GenerationRequest, capability: str, event: RequestEvent | None = None
    ) -> tuple[str, Choices, Usage]:
        """A whole (non-streamed) generation. Nothing has reached the client until it
        ends, so an instance lost mid-way is retried from the start on another one."""
        tried: set[str] = set()
        while True:
            call = await self.generate(request, capability, event, tried)
            try:
                choices, usage = await collect(aiter(call), request.sampling.n)
            except InstanceLost as exc:
                self._router.failed(call.target)
                tried.add(call.target.instance_id)
                if len(tried) >= self._attempts or not self._router.has_routable(
                    request.model, capability, tried, request.features()
                ):
                    raise
                log.info("instance lost mid-generation, retrying %s elsewhere: %s", request.request_id, exc.message)
                continue
            return call.target.instance_id, choices, usage

    async def generate_many(self, requests: list[GenerationRequest], capability: str) -> Merged:
        """Several prompts of one API call (``prompt`` as a list): choices are numbered
        prompt by prompt, usage is summed, and all run concurrently."""
        calls: list[Call] = []
        try:
            for req in requests:
                calls.append(await self.generate(req, capability))
        except BaseException:
            for call in calls:
                await call.close()
            raise
        return Merged(calls, requests[0].sampling.n)

    async def embed(self, request: EmbeddingRequest, event: RequestEvent | None = None) -> tuple[str, EmbeddingResult]:
        """The result and the id of the instance that computed it."""

        async def run(target: Target) -> EmbeddingResult:
            client = cast(Embedding, target.client)
            return await client.embed(request)

        return await self._unary(request.model, "embedding", run, event)

    async def rerank(self, request: RerankRequest, event: RequestEvent | None = None) -> tuple[str, RerankResult]:
        async def run(target: Target) -> RerankResult:
            client = cast(Rerank, target.client)
            return await client.rerank(request)

        return await self._unary(request.model, "rerank", run, event)

    async def _unary(
        self, model: str, capability: str, run: Callable[[Target], Awaitable[U]], event: RequestEvent | None
    ) -> tuple[str, U]:
        """A request with one answer (no stream): dispatch with retries, then release."""
        tried: set[str] = set()
        target, result = await self._dispatch(model, capability, None, run, tried)
        self._router.release(target)
        _served_by(event, target, len(tried))
        if event is not None:
            event.prompt_tokens = result.usage.prompt_tokens
        return target.instance_id, result


def _served_by(event: RequestEvent | None, target: Target, retries: int) -> None:
    if event is not None:
        record = target.record
        event.instance_id, event.engine, event.worker_id = record.instance_id, record.engine, record.worker_id
        event.retries = retries


class Choice(NamedTuple):
    """One whole choice of a non-streamed answer."""

    text: str
    finish: str | None
    tool_calls: tuple[ToolCall, ...] = ()


Choices = list[Choice]


async def collect(stream: AsyncIterator[GenerationChunk | GenerationEnd], n: int) -> tuple[Choices, Usage]:
    texts: list[list[str]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    calls: list[dict[int, list[str]]] = [{} for _ in range(n)]  # per choice: call index -> [id, name, args...]
    usage = Usage(0, 0)
    async for item in stream:
        if isinstance(item, GenerationEnd):
            usage = item.usage
            continue
        texts[item.index].append(item.text)
        for delta in item.tool_calls:
            parts = calls[item.index].setdefault(delta.index, ["", ""])
            if delta.id:
                parts[0] = delta.id
            if delta.name:
                parts[1] = delta.name
            parts.append(delta.arguments)
        if item.finish_reason is not None:
            finish[item.index] = item.finish_reason.value
    return [
        Choice("".join(t), f, tuple(ToolCall(p[0], p[1], "".join(p[2:])) for _, p in sorted(c.items())))
        for t, f, c in zip(texts, finish, calls)
    ], usage


class Merged:
    """Several calls of one API request as one stream; ``close`` closes them all,
    whether the stream was iterated or not."""

    def __init__(self, calls: list[Call], n: int) -> None:
        self._calls = calls
        self._n = n

    def __aiter__(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        return _merge(self._calls, self._n)

    async def close(self) -> None:
        for call in self._calls:
            await call.close()


async def _merge(calls: list[Call], n: int) -> AsyncIterator[GenerationChunk | GenerationEnd]:
    queue: asyncio.Queue[tuple[int, GenerationChunk | GenerationEnd | BaseException]] = asyncio.Queue()

    async def pump(i: int, call: Call) -> None:
        try:
            async for item in call:
                await queue.put((i, item))
        except BaseException as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, c)) for i, c in enumerate(calls)]
    prompt = completion = 0
    open_calls = len(calls)
    try:
        while open_calls:
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, GenerationEnd):
                open_calls -= 1
                prompt += item.usage.prompt_tokens
                completion += item.usage.completion_tokens
                continue
            yield replace(item, index=i * n + item.index)
        yield GenerationEnd(Usage(prompt, completion))
    finally:
        for task in tasks:
            task.cancel()
        for call in calls:
            await call.close()
