"""The Anthropic Messages front-end: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``, on the gateway's port beside the OpenAI API.

Clients send their key as ``x-api-key`` (Anthropic's SDKs) or ``Authorization: Bearer``
(the same keys as ``/v1``). The ``anthropic-version`` and ``anthropic-beta`` headers are
accepted and not required: this server speaks one version of the API (its docs say
which fields). Everything past the translation is the shared pipeline.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError
from corral.core.types import SamplingParams
from corral.gateway.anthropic import render, translate
from corral.gateway.anthropic.errors import render_error
from corral.gateway.frontend import INSTANCE_HEADER, AuthScheme, Kit, traceparent
from corral.protocol.anthropic import responses as wire
from corral.protocol.anthropic.requests import CountTokensRequest, MessagesRequest
from corral.web.disconnect import unless_client_leaves
from corral.web.responses import json_response

_SSE_KEEPALIVE = (b": keep-alive\n\n", 15.0)  # an SSE comment: Anthropic's SDKs skip it
_SESSION_HEADER = "x-session-id"


class AnthropicFrontend:
    name = "anthropic"
    prefixes = ("/v1/messages",)
    auth = AuthScheme(
        bearer=True, key_headers=("x-api-key",), hint="send 'x-api-key: YOUR_KEY' (or 'Authorization: Bearer YOUR_KEY')"
    )

    def __init__(self, kit: Kit) -> None:
        self._kit = kit
        self._pipeline = kit.pipeline

    def render_error(self, exc: CorralError) -> Response:
        return render_error(exc)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
        ]

    async def messages(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "messages") as event:
            req = await self._kit.parse(request, MessagesRequest)
            gen = translate.messages(req, rid, request.headers.get(_SESSION_HEADER), traceparent(event))
            self._kit.describe(event, gen, req.stream)
            id_ = f"msg_{rid}"
            if req.stream:
                call = await self._pipeline.generate(gen, "chat", event)
                body = render.sse_stream(aiter(call), id_=id_, model=req.model)
                return self._kit.stream(call, body, event, "text/event-stream", _SSE_KEEPALIVE)
            served_by, choices, usage = await unless_client_leaves(request, self._pipeline.complete(gen, "chat", event))
            return json_response(200, render.whole(id_, req.model, choices[0], usage), {INSTANCE_HEADER: served_by})

    async def count_tokens(self, request: Request) -> Response:
        rid = request.scope["state"]["request_id"]
        async with self._kit.track(request, "count_tokens") as event:
            req = await self._kit.parse(request, CountTokensRequest)
            gen = translate.prompt(req, rid, SamplingParams(max_tokens=1))
            event.model = req.model
            served_by, count = await self._pipeline.count_tokens(gen, event)
            return json_response(200, wire.token_count(count), {INSTANCE_HEADER: served_by})

    # the OpenAPI document describes each route's body by its model
    messages.request_body = MessagesRequest  # type: ignore[attr-defined]
    count_tokens.request_body = CountTokensRequest  # type: ignore[attr-defined]
