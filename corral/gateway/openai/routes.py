"""The OpenAI front-end: HTTP handlers of the OpenAI-compatible API (/v1/...)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, ModelNotFound
from corral.core.observe import RequestEvent
from corral.core.types import GenerationRequest, PassThrough, Usage
from corral.gateway.frontend import INSTANCE_HEADER, AuthScheme, Kit, ModelEntry, traceparent
from corral.gateway.openai import render, translate
from corral.gateway.openai.responses import ResponsesRoutes
from corral.gateway.pipeline import Call, Choices, Merged
from corral.protocol.openai import responses
from corral.protocol.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    RerankRequestIn,
    SamplingFields,
)
from corral.web.disconnect import unless_client_leaves
from corral.web.errors import error_response
from corral.web.responses import json_response

_SSE_KEEPALIVE = (b": keep-alive\n\n", 15.0)


class OpenAIFrontend:
    name = "openai"
    prefixes = ("/v1",)
    auth = AuthScheme()

    def __init__(self, kit: Kit) -> None:
        self._kit = kit
        self._pipeline = kit.pipeline
        self._responses = ResponsesRoutes(kit)  # the Responses API (/v1/responses)

    def render_error(self, exc: CorralError) -> Response:
        return error_response(exc)

    def routes(self) -> list[Route]:
        # the router tries routes in order: the ones every request takes come first
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
            *self._responses.routes(),
        ]

    async def list_models(self, request: Request) -> Response:
        return json_response(200, responses.models_list([_entry(m) for m in await self._kit.models(request)]))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for model in await self._kit.models(request):
            if model.name == name:
                return json_response(200, responses.models_list([_entry(model)])["data"][0])
        raise ModelNotFound(f"the model {name!r} does not exist", param="model")

    async def chat(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "chat") as event:
            req = await self._kit.parse(request, ChatCompletionRequest)
            gen = translate.chat(req, rid, request.headers.get("x-session-id"), traceparent(event))
            self._kit.describe(event, gen, req.stream)
            id_ = f"chatcmpl-{rid}"
            if req.stream:
                call = await self._pipeline.generate(self._passing(gen, req, id_), "chat", event)
                return self._stream(call, req, id_, "chat.completion.chunk", render.chat_choice, event)
            served_by, choices, usage = await unless_client_leaves(request, self._pipeline.complete(gen, "chat", event))
            return _whole(responses.chat_completion, id_, req.model, choices, usage, served_by)

    async def completions(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "completion") as event:
            req = await self._kit.parse(request, CompletionRequest)
            gens = translate.completions(req, rid, request.headers.get("x-session-id"), traceparent(event))
            self._kit.describe(event, gens[0], req.stream)
            id_ = f"cmpl-{rid}"
            if len(gens) > 1:
                if req.stream:
                    merged = await self._pipeline.generate_many(gens, "completion", event)
                    return self._stream(merged, req, id_, "text_completion", render.text_choice, event)
                served_by, choices, usage = await unless_client_leaves(
                    request, self._pipeline.complete_many(gens, "completion", event)
                )
                return _whole(responses.text_completion, id_, req.model, choices, usage, served_by)
            if req.stream:
                call = await self._pipeline.generate(self._passing(gens[0], req, id_), "completion", event)
                return self._stream(call, req, id_, "text_completion", render.text_choice, event)
            served_by, choices, usage = await unless_client_leaves(
                request, self._pipeline.complete(gens[0], "completion", event)
            )
            return _whole(responses.text_completion, id_, req.model, choices, usage, served_by)

    async def embeddings(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "embedding") as event:
            req = await self._kit.parse(request, EmbeddingsRequest)
            event.model = req.model
            event.params = {"encoding_format": req.encoding_format, "inputs": 1 if isinstance(req.input, str) else len(req.input)}
            served_by, result = await self._pipeline.embed(translate.embeddings(req, rid), event)
            body = responses.embeddings(req.model, result.vectors, req.encoding_format, result.usage.prompt_tokens)
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    async def rerank(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "rerank") as event:
            req = await self._kit.parse(request, RerankRequestIn)
            event.model = req.model
            event.params = {"documents": len(req.documents), "top_n": req.top_n}
            internal = translate.rerank(req, rid)
            served_by, result = await self._pipeline.rerank(internal, event)
            ranked = sorted(enumerate(result.scores), key=lambda p: p[1], reverse=True)[: req.top_n]
            documents = list(internal.documents) if req.return_documents else None
            body = responses.rerank(f"rerank-{rid}", req.model, ranked, documents, result.usage.prompt_tokens)
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    def _passing(self, gen: GenerationRequest, req: SamplingFields, id_: str) -> GenerationRequest:
        """``gen`` allowed to come back as the upstream's own events (``PassThrough``)
        where nothing here needs its deltas: its text is not captured for the records."""
        if self._kit.tracker.capture.enabled:
            return gen
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return dataclasses.replace(gen, passthrough=PassThrough(id_, include_usage))

    def _stream(
        self,
        stream: Call | Merged,
        req: SamplingFields,
        id_: str,
        chunk_object: str,
        choice: render.ChoiceDelta,
        event: RequestEvent,
    ) -> Response:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = render.sse_stream(aiter(stream), id_=id_, model=req.model, obj=chunk_object, choice=choice, include_usage=include_usage)
        return self._kit.stream(stream, body, event, "text/event-stream", _SSE_KEEPALIVE)


def _entry(model: ModelEntry) -> tuple[str, int]:
    return model.name, model.created


def _whole(build: Builder, id_: str, model: str, choices: Choices, usage: Usage, served_by: str) -> Response:
    usage_body = responses.usage_dict(usage.prompt_tokens, usage.completion_tokens)
    body = build(id_, int(time.time()), model, render.whole_choices(choices), usage_body)
    return json_response(200, body, {INSTANCE_HEADER: served_by})


Builder = Callable[[str, int, str, list[responses.ChoiceOut], dict[str, int]], dict[str, Any]]
