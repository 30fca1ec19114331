"""HTTP handlers of the OpenAI-compatible API (/v1/...)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import ModelNotFound
from corral.core.registry import InstanceState
from corral.web.body import read_body
from corral.web.errors import from_validation
from corral.web.responses import json_response
from corral.web.disconnect import unless_client_leaves
from corral.web.streaming import ClosingStreamingResponse
from corral.gateway.openai import render, translate
from corral.core.observe import RequestEvent
from corral.core.types import GenerationRequest, Usage
from corral.gateway.pipeline import Call, Choices, Merged, Pipeline, collect
from corral.gateway.router import Router
from corral.gateway.tracking import Tracker
from corral.observe import tracing
from corral.protocol.openai import responses
from corral.protocol.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    RerankRequestIn,
    SamplingFields,
)

M = TypeVar("M", bound=BaseModel)

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
INSTANCE_HEADER = "x-corral-instance"  # which instance served the request
_SSE_KEEPALIVE = (b": keep-alive\n\n", 15.0)


class OpenAIRoutes:
    def __init__(self, pipeline: Pipeline, router: Router, max_body_bytes: int, tracker: Tracker) -> None:
        self._pipeline = pipeline
        self._router = router
        self._max_body = max_body_bytes
        self._tracker = tracker

    def routes(self) -> list[Route]:
        # the router tries routes in order: the ones every request takes come first
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
        ]

    async def _parse(self, request: Request, model: type[M]) -> M:
        body = await read_body(request, self._max_body)
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise from_validation(exc) from None

    def _model_entries(self) -> list[tuple[str, int]]:
        out = []
        for name, records in self._router.models().items():
            if any(r.state is not InstanceState.FAILED for r in records):
                out.append((name, int(min(r.started_at for r in records))))
        return sorted(out)

    async def list_models(self, request: Request) -> Response:
        return json_response(200, responses.models_list(self._model_entries()))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for entry in self._model_entries():
            if entry[0] == name:
                return json_response(200, responses.models_list([entry])["data"][0])
        raise ModelNotFound(f"the model {name!r} does not exist", param="model")

    async def chat(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._track(request, "chat") as event:
            req = await self._parse(request, ChatCompletionRequest)
            gen = translate.chat(req, rid, request.headers.get("x-session-id"), _traceparent(event))
            self._describe(event, gen, req.stream)
            id_ = f"chatcmpl-{rid}"
            if req.stream:
                call = await self._pipeline.generate(gen, "chat", event)
                return self._stream(call, req, id_, "chat.completion.chunk", render.chat_choice, event)
            served_by, choices, usage = await unless_client_leaves(request, self._pipeline.complete(gen, "chat", event))
            return _whole(responses.chat_completion, id_, req.model, choices, usage, served_by)

    async def completions(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._track(request, "completion") as event:
            req = await self._parse(request, CompletionRequest)
            gens = translate.completions(req, rid, request.headers.get("x-session-id"), _traceparent(event))
            self._describe(event, gens[0], req.stream)
            id_ = f"cmpl-{rid}"
            if len(gens) > 1:
                merged = await self._pipeline.generate_many(gens, "completion")
                if req.stream:
                    return self._stream(merged, req, id_, "text_completion", render.text_choice, event, "multiple")
                choices, usage = await unless_client_leaves(request, _whole_merged(merged, req.n * len(gens)))
                event.prompt_tokens, event.completion_tokens = usage.prompt_tokens, usage.completion_tokens
                return _whole(responses.text_completion, id_, req.model, choices, usage, "multiple")
            if req.stream:
                call = await self._pipeline.generate(gens[0], "completion", event)
                return self._stream(call, req, id_, "text_completion", render.text_choice, event)
            served_by, choices, usage = await unless_client_leaves(
                request, self._pipeline.complete(gens[0], "completion", event)
            )
            return _whole(responses.text_completion, id_, req.model, choices, usage, served_by)

    async def embeddings(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._track(request, "embedding") as event:
            req = await self._parse(request, EmbeddingsRequest)
            event.model = req.model
            event.params = {"encoding_format": req.encoding_format, "inputs": 1 if isinstance(req.input, str) else len(req.input)}
            served_by, result = await self._pipeline.embed(translate.embeddings(req, rid), event)
            body = responses.embeddings(req.model, result.vectors, req.encoding_format, result.usage.prompt_tokens)
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    async def rerank(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._track(request, "rerank") as event:
            req = await self._parse(request, RerankRequestIn)
            event.model = req.model
            event.params = {"documents": len(req.documents), "top_n": req.top_n}
            internal = translate.rerank(req, rid)
            served_by, result = await self._pipeline.rerank(internal, event)
            ranked = sorted(enumerate(result.scores), key=lambda p: p[1], reverse=True)[: req.top_n]
            documents = list(internal.documents) if req.return_documents else None
            body = responses.rerank(f"rerank-{rid}", req.model, ranked, documents, result.usage.prompt_tokens)
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    def _track(self, request: Request, route: str) -> AbstractAsyncContextManager[RequestEvent]:
        state = request.scope["state"]
        return self._tracker.track(
            state["request_id"], route, state.get("api_key_id"), request.headers.get("traceparent")
        )

    def _describe(self, event: RequestEvent, gen: GenerationRequest, stream: bool) -> None:
        s = gen.sampling
        event.model, event.stream = gen.model, stream
        event.params = {
            "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "n": s.n,
            "stop": list(s.stop), "seed": s.seed, "stream": stream,
        }
        if gen.tools:
            event.params["tools"] = [str((t.get("function") or {}).get("name")) for t in gen.tools]
            event.params["tool_choice"] = gen.tool_choice
        if gen.response_format is not None:
            event.params["response_format"] = gen.response_format.get("type")
        event.prompt_text = self._tracker.prompt_of(gen)
        event.completion_text = "" if self._tracker.capture.enabled else None

    def _stream(
        self,
        stream: Call | Merged,
        req: SamplingFields,
        id_: str,
        chunk_object: str,
        choice: render.ChoiceDelta,
        event: RequestEvent,
        served_by: str | None = None,
    ) -> Response:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = render.sse_stream(aiter(stream), id_=id_, model=req.model, obj=chunk_object, choice=choice, include_usage=include_usage)

        async def on_close() -> None:
            # runs however the response ended, even if the client left before its first
            # byte: the call's close releases the instance and marks the event cancelled
            # unless it completed, then the event is finished (recorded) once
            await stream.close()
            self._tracker.finish(event)

        headers = {**_SSE_HEADERS, INSTANCE_HEADER: served_by or event.instance_id or ""}
        # an SSE comment while the engine is silent (a long prefill): proxies and clients
        # with idle timeouts keep the stream open; SSE readers ignore comments
        return ClosingStreamingResponse(body, on_close, "text/event-stream", headers, keepalive=_SSE_KEEPALIVE)


async def _whole_merged(merged: Merged, n: int) -> tuple[Choices, Usage]:
    try:
        return await collect(aiter(merged), n)
    finally:
        await merged.close()


def _traceparent(event: RequestEvent) -> str:
    """The context the engine's side continues: this request's trace, its gateway span."""
    assert event.trace_id is not None and event.span_id is not None
    return tracing.traceparent(event.trace_id, event.span_id)


def _whole(build: Builder, id_: str, model: str, choices: Choices, usage: Usage, served_by: str) -> Response:
    usage_body = responses.usage_dict(usage.prompt_tokens, usage.completion_tokens)
    body = build(id_, int(time.time()), model, render.whole_choices(choices), usage_body)
    return json_response(200, body, {INSTANCE_HEADER: served_by})


Builder = Callable[[str, int, str, list[responses.ChoiceOut], dict[str, int]], dict[str, Any]]
