"""HTTP handlers of the OpenAI-compatible API (/v1/...)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from corral.core.errors import ModelNotFound
from corral.core.registry import InstanceState
from corral.web.body import read_body
from corral.web.errors import from_validation
from corral.web.responses import json_response
from corral.gateway.openai import render, translate
from corral.core.types import Usage
from corral.gateway.pipeline import Choices, Pipeline, collect
from corral.gateway.router import Router
from corral.protocol.openai import responses
from corral.protocol.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    SamplingFields,
)

M = TypeVar("M", bound=BaseModel)

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
INSTANCE_HEADER = "x-corral-instance"  # which instance served the request


class OpenAIRoutes:
    def __init__(self, pipeline: Pipeline, router: Router, max_body_bytes: int) -> None:
        self._pipeline = pipeline
        self._router = router
        self._max_body = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
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
        req = await self._parse(request, ChatCompletionRequest)
        rid = request.scope["state"]["request_id"]
        gen = translate.chat(req, rid, request.headers.get("x-session-id"))
        id_ = f"chatcmpl-{rid}"
        if req.stream:
            call = await self._pipeline.generate(gen, "chat")
            return _stream(aiter(call), req, id_, "chat.completion.chunk", render.chat_choice, call.target.instance_id)
        served_by, choices, usage = await self._pipeline.complete(gen, "chat")
        return _whole(responses.chat_completion, id_, req.model, choices, usage, served_by)

    async def completions(self, request: Request) -> Response:
        req = await self._parse(request, CompletionRequest)
        rid = request.scope["state"]["request_id"]
        gens = translate.completions(req, rid, request.headers.get("x-session-id"))
        id_ = f"cmpl-{rid}"
        if len(gens) > 1:
            stream = await self._pipeline.generate_many(gens, "completion")
            if req.stream:
                return _stream(stream, req, id_, "text_completion", render.text_choice, "multiple")
            choices, usage = await collect(stream, req.n * len(gens))
            return _whole(responses.text_completion, id_, req.model, choices, usage, "multiple")
        if req.stream:
            call = await self._pipeline.generate(gens[0], "completion")
            return _stream(aiter(call), req, id_, "text_completion", render.text_choice, call.target.instance_id)
        served_by, choices, usage = await self._pipeline.complete(gens[0], "completion")
        return _whole(responses.text_completion, id_, req.model, choices, usage, served_by)

    async def embeddings(self, request: Request) -> Response:
        req = await self._parse(request, EmbeddingsRequest)
        rid = request.scope["state"]["request_id"]
        served_by, result = await self._pipeline.embed(translate.embeddings(req, rid))
        body = responses.embeddings(req.model, result.vectors, req.encoding_format, result.usage.prompt_tokens)
        return json_response(200, body, {INSTANCE_HEADER: served_by})


def _stream(
    stream: render.Stream, req: SamplingFields, id_: str, chunk_object: str, choice: render.ChoiceDelta, served_by: str
) -> Response:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    body = render.sse_stream(stream, id_=id_, model=req.model, obj=chunk_object, choice=choice, include_usage=include_usage)
    return StreamingResponse(body, media_type="text/event-stream", headers={**_SSE_HEADERS, INSTANCE_HEADER: served_by})


def _whole(build: Builder, id_: str, model: str, choices: Choices, usage: Usage, served_by: str) -> Response:
    usage_body = responses.usage_dict(usage.prompt_tokens, usage.completion_tokens)
    return json_response(200, build(id_, int(time.time()), model, choices, usage_body), {INSTANCE_HEADER: served_by})


Builder = Callable[[str, int, str, Choices, dict[str, int]], dict[str, Any]]
