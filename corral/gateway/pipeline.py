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

from corral.core.engine import Embedding, Rerank, TextGeneration, TokenCounting
from corral.core.errors import CorralError, EngineError, InstanceLost, Overloaded, Unavailable
from corral.core.observe import MAX_GAPS, RequestEvent
from corral.observe.tracing import FIRST_TOKEN, new_id, span, span_event
from corral.core.types import (
    COUNT_TOKENS,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    RawEvent,
    RerankRequest,
    RerankResult,
    ToolCall,
    Usage,
)
from corral.gateway.limits import Limiter, admit
from corral.gateway.router import Router, Target
from corral.gateway.tracking import MULTIPLE, lost_attempt, served_by

log = logging.getLogger("corral.requests")

# Prompts of one request (``prompt`` as a list) running at once: enough to fill a batch,
# few enough that one request never overflows an engine's queue by itself and gets a
# 429 that no retry could cure; its other prompts wait their turn here.
PROMPTS_AT_ONCE = 8


@dataclass(eq=False)
class Call:
    """A generation in progress on one target (one attempt of a request). Iterate it
    once; closing it early cancels the engine's work.

    It measures itself (time to first token, gaps, text, tokens, spans, outcome) and
    ``commit`` adds that to the request's event, once: at ``close``, unless ``deferred``,
    when the pipeline commits only the attempt whose answer the client gets."""

    router: Router
    target: Target
    stream: AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]
    request: GenerationRequest
    event: RequestEvent | None = None
    deferred: bool = False
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    usage: Usage | None = None
    outcome: str = "cancelled"
    error: CorralError | None = None
    gaps: list[float] = field(default_factory=list)
    text: list[str] | None = None  # the completion's deltas, when the event captures text
    spans: list[dict[str, Any]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # in the order the choices ended
    _closed: bool = False
    _committed: bool = False

    def __post_init__(self) -> None:
        if self.event is not None and self.event.completion_text is not None:
            self.text = []

    async def __aiter__(self) -> AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]:
        outcome = "cancelled"
        gaps, text = self.gaps, self.text
        last = self.started
        try:
            async for item in self.stream:
                if isinstance(item, (GenerationChunk, RawEvent)):
                    now = time.perf_counter()
                    if self.first_token_at is None:
                        self.first_token_at = now
                        self.router.observe_ttft(self.target, now - self.started)
                    elif len(gaps) < MAX_GAPS:
                        gaps.append(now - last)
                    last = now
                    if text is not None and isinstance(item, GenerationChunk):  # no RawEvent when capturing
                        text.append(item.text)
                    if item.finish_reason is not None:
                        self.finish_reasons.append(item.finish_reason.value)
                elif isinstance(item, GenerationEnd):
                    self.usage = item.usage
                    if self.event is not None:
                        self.spans.extend(item.spans or self._local_spans(item))
                yield item
            outcome = "ok"
        except CorralError as exc:
            outcome, self.error = "error", exc
            raise
        except Exception as exc:  # an engine bug must reach the client as an error, not a hang
            outcome = "error"
            log.exception("engine failure in request %s", self.request.request_id)
            self.error = EngineError(f"model {self.request.model!r} failed: {type(exc).__name__}")
            raise self.error from exc
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
            "corral.instance_id": self.target.instance_id, "corral.model": self.target.record.model,
            "corral.engine": self.target.record.engine, "corral.ttft_s": ttft,
            "corral.engine.input_tokens": end.usage.prompt_tokens, "corral.engine.output_tokens": end.usage.completion_tokens,
        }
        events = [span_event(FIRST_TOKEN, start + ttft)] if ttft is not None else None
        return [span("corral.engine.generate", event.trace_id, new_id(8), event.span_id, start, now, attrs, events=events)]

    def commit(self) -> None:
        """Add this attempt to the request's event (the calls of several prompts add up)."""
        event = self.event
        if event is None or self._committed:
            return
        self._committed = True
        served_by(event, self.target.record)
        if self.first_token_at is not None:
            ttft = self.first_token_at - event.clock_start
            if event.ttft_s is None or ttft < event.ttft_s:
                event.ttft_s = ttft
        room = MAX_GAPS - len(event.token_gaps_s)
        if room > 0 and self.gaps:
            event.token_gaps_s.extend(self.gaps[:room])
        if self.text is not None and event.completion_text is not None:
            event.completion_text += "".join(self.text)
        if self.usage is not None:
            event.prompt_tokens += self.usage.prompt_tokens
            event.completion_tokens += self.usage.completion_tokens
        event.spans.extend(self.spans)
        event.finish_reasons.extend(self.finish_reasons)
        if self.outcome != "ok" and event.outcome == "ok":
            # a stream that failed or was cancelled after its answer started (a failure
            # before that is the handler's exception, which the Tracker records)
            event.outcome = self.outcome
            if self.error is not None and event.error is None:
                event.error = self.error.message

    async def close(self, outcome: str = "cancelled") -> None:
        if self._closed:
            return
        self._closed = True
        # closed after its last item (GenerationEnd, which sets usage) reached the
        # consumer, e.g. by a merge that ends before this call's iterator resumed: done
        self.outcome = "ok" if outcome == "cancelled" and self.usage is not None else outcome
        self.router.release(self.target)
        aclose = getattr(self.stream, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            if not self.deferred:
                self.commit()
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

    def __init__(self, router: Router, attempts: int = 3, limiter: Limiter | None = None) -> None:
        self._router = router
        self._attempts = attempts
        self._limiter = limiter or Limiter()

    async def _dispatch(
        self,
        model: str,
        capability: str,
        request: GenerationRequest | None,
        call: Callable[[Target], Awaitable[R]],
        tried: set[str],
        event: RequestEvent | None,
    ) -> tuple[Target, R]:
        """Acquire an instance and run ``call`` on it; on ``Unavailable`` (unreachable,
        draining) or ``Overloaded`` try another. The target stays acquired on success."""
        needs = request.features() if request is not None else frozenset()
        if event is not None:  # the caller's key: its models (403/404) and limits (429), once per request
            admit(self._limiter, self._router.models, model, request, event)
        while True:
            asked = time.perf_counter()
            target = await self._router.acquire(model, capability, request, tried)
            if event is not None:  # a wait for a free slot under max_concurrency, or for a cold start
                event.queue_wait_s = (event.queue_wait_s or 0.0) + time.perf_counter() - asked
            started_at = time.time()
            try:
                result = await call(target)
            except (Unavailable, Overloaded) as exc:
                self._router.release(target)
                if isinstance(exc, Unavailable):
                    self._router.failed(target)
                tried.add(target.instance_id)
                retry = len(tried) < self._attempts and self._router.has_routable(model, capability, tried, needs)
                lost_attempt(event, target.record, started_at, exc, retry)
                if not retry:
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
        deferred: bool = False,
    ) -> Call:
        """A started generation; the call commits its accounting to ``event`` when it
        closes (``deferred``: when the caller says so)."""

        async def start(target: Target) -> AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]:
            # the router chose it by the capabilities its record lists (a Protocol
            # isinstance check here would cost more than the rest of the dispatch)
            client = cast(TextGeneration, target.client)
            return await client.generate(_with_model_defaults(request, target.record.sampling, event))

        tried = set() if tried is None else tried
        target, stream = await self._dispatch(request.model, capability, request, start, tried, event)
        return Call(self._router, target, stream, request, event, deferred)

    async def complete(
        self, request: GenerationRequest, capability: str, event: RequestEvent | None = None
    ) -> tuple[str, Choices, Usage]:
        """A whole (non-streamed) generation. Nothing has reached the client until it
        ends, so an instance lost mid-way is retried from the start on another one; only
        the attempt that answers is committed to ``event``, a lost one is a span."""
        tried: set[str] = set()
        while True:
            call = await self.generate(request, capability, event, tried, deferred=True)
            try:
                choices, usage = await collect(aiter(call), request.sampling.n)
            except InstanceLost as exc:
                self._router.failed(call.target)
                tried.add(call.target.instance_id)
                if len(tried) >= self._attempts or not self._router.has_routable(
                    request.model, capability, tried, request.features()
                ):
                    call.commit()  # the last attempt: the request's outcome is its error
                    raise
                lost_attempt(event, call.target.record, call.started_at, exc, retried=True)
                log.info("instance lost mid-generation, retrying %s elsewhere: %s", request.request_id, exc.message)
                continue
            except BaseException:
                call.commit()
                raise
            call.commit()
            return call.target.instance_id, choices, usage

    async def complete_many(
        self, requests: list[GenerationRequest], capability: str, event: RequestEvent | None = None
    ) -> tuple[str, Choices, Usage]:
        """Several prompts of one API call, whole: each is a ``complete`` (with its own
        failover), ``PROMPTS_AT_ONCE`` at a time; choices numbered prompt by prompt,
        usage summed."""
        slots = asyncio.Semaphore(PROMPTS_AT_ONCE)

        async def one(req: GenerationRequest) -> tuple[str, Choices, Usage]:
            async with slots:
                return await self.complete(req, capability, event)

        tasks = [asyncio.ensure_future(one(req)) for req in requests]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            # one failed, or the client left: stop the others, and let them account
            # before the request's event is finished
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        served = {instance for instance, _, _ in results}
        choices = [choice for _, prompt_choices, _ in results for choice in prompt_choices]
        usage = Usage(sum(u.prompt_tokens for _, _, u in results), sum(u.completion_tokens for _, _, u in results))
        return (served.pop() if len(served) == 1 else MULTIPLE), choices, usage

    async def generate_many(
        self, requests: list[GenerationRequest], capability: str, event: RequestEvent | None = None
    ) -> Merged:
        """Several prompts of one API call (``prompt`` as a list), streamed: choices are
        numbered prompt by prompt and usage is summed. The first ``PROMPTS_AT_ONCE`` are
        started now (so that a refusal is an error status, not an error in the stream);
        each of the others starts when a running one ends. Each call adds its accounting
        to ``event`` when it closes."""
        calls: list[Call] = []
        try:
            for req in requests[:PROMPTS_AT_ONCE]:
                calls.append(await self.generate(req, capability, event))
        except BaseException:
            for call in calls:
                await call.close()
            raise

        async def start(req: GenerationRequest) -> Call:
            return await self.generate(req, capability, event)

        return Merged(calls, requests[0].sampling.n, requests[PROMPTS_AT_ONCE:], start)

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

    async def count_tokens(self, request: GenerationRequest, event: RequestEvent | None = None) -> tuple[str, int]:
        """The prompt tokens of ``request`` as a model's engine counts them (nothing is
        generated), and the instance that counted."""

        async def run(target: Target) -> int:
            client = cast(TokenCounting, target.client)
            return await client.count_tokens(request)  # sampling plays no part in a count

        target, count = await self._dispatch(request.model, COUNT_TOKENS, request, run, set(), event)
        self._router.release(target)
        served_by(event, target.record)
        if event is not None:
            event.prompt_tokens = count
        return target.instance_id, count

    async def _unary(
        self, model: str, capability: str, run: Callable[[Target], Awaitable[U]], event: RequestEvent | None
    ) -> tuple[str, U]:
        """A request with one answer (no stream): dispatch with retries, then release."""
        target, result = await self._dispatch(model, capability, None, run, set(), event)
        self._router.release(target)
        served_by(event, target.record)
        if event is not None:
            event.prompt_tokens = result.usage.prompt_tokens
        return target.instance_id, result


class Choice(NamedTuple):
    """One whole choice of a non-streamed answer."""

    text: str
    finish: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    stop_sequence: str | None = None  # the stop string that ended it, when the engine said


Choices = list[Choice]


async def collect(stream: AsyncIterator[GenerationChunk | GenerationEnd | RawEvent], n: int) -> tuple[Choices, Usage]:
    texts: list[list[str]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    stops: list[str | None] = [None] * n
    calls: list[dict[int, list[str]]] = [{} for _ in range(n)]  # per choice: call index -> [id, name, args...]
    usage = Usage(0, 0)
    async for item in stream:
        if isinstance(item, GenerationEnd):
            usage = item.usage
            continue
        if isinstance(item, RawEvent):  # only streamed requests ask for pass-through
            raise EngineError("an engine passed its events through to a whole answer")
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
            stops[item.index] = item.stop_sequence
    return [
        Choice("".join(t), f, tuple(ToolCall(p[0], p[1], "".join(p[2:])) for _, p in sorted(c.items())), s)
        for t, f, c, s in zip(texts, finish, calls, stops)
    ], usage


class Merged:
    """Several calls of one API request as one stream; ``close`` closes them all,
    whether the stream was iterated or not. ``pending`` requests are started by
    ``start`` as running calls end, so that as many run at once as were started."""

    def __init__(
        self, calls: list[Call], n: int, pending: list[GenerationRequest] | None = None,
        start: Callable[[GenerationRequest], Awaitable[Call]] | None = None,
    ) -> None:
        self._calls = calls
        self._n = n
        self._pending = pending or []
        self._start = start

    @property
    def served_by(self) -> str:
        """The instance that serves every prompt (known once all have started), else ``MULTIPLE``."""
        served = {call.target.instance_id for call in self._calls}
        return served.pop() if len(served) == 1 and not self._pending else MULTIPLE

    def __aiter__(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        return self._merge()

    async def close(self) -> None:
        self._pending = []
        for call in self._calls:
            await call.close()

    async def _merge(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        queue: asyncio.Queue[tuple[int, GenerationChunk | GenerationEnd | BaseException]] = asyncio.Queue()

        async def pump(i: int, call: Call) -> None:
            try:
                async for item in call:
                    await queue.put((i, item))
            except BaseException as exc:
                await queue.put((i, exc))

        tasks = [asyncio.create_task(pump(i, c)) for i, c in enumerate(self._calls)]
        prompt = completion = 0
        open_calls = len(self._calls)
        try:
            while open_calls:
                i, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenerationChunk):
                    yield replace(item, index=i * self._n + item.index)
                    continue
                open_calls -= 1
                prompt += item.usage.prompt_tokens
                completion += item.usage.completion_tokens
                if self._pending and self._start is not None:
                    call = await self._start(self._pending.pop(0))
                    self._calls.append(call)
                    tasks.append(asyncio.create_task(pump(len(self._calls) - 1, call)))
                    open_calls += 1
            yield GenerationEnd(Usage(prompt, completion))
        finally:
            for task in tasks:
                task.cancel()
            await self.close()


def _with_model_defaults(
    request: GenerationRequest, defaults: tuple[tuple[str, float], ...], event: RequestEvent | None
) -> GenerationRequest:
    """``request`` with the serving model's sampling defaults in place of what the client
    left out; the record's parameters then say what the engine was given."""
    if not defaults or not request.sampling.unset:
        return request
    sampling = request.sampling.with_defaults(defaults)
    if sampling is request.sampling:
        return request
    if event is not None and event.params:
        for name in request.sampling.unset - sampling.unset:
            event.params[name] = getattr(sampling, name)
    return replace(request, sampling=sampling)
