"""The OpenAI Responses API, part of the OpenAI front-end: ``POST /v1/responses``,
``GET /v1/responses/{id}`` and ``DELETE /v1/responses/{id}``.

A create runs through the same pipeline as a chat completion (route label
``responses``, capability ``chat``). With ``store`` (the default, as in OpenAI's API) the
response, with the input items the model saw, is kept in the stored-responses table next
to the request records (``corral.observe.stored_responses``), for ``GET`` and for
``previous_response_id``, which makes the previous response's context and output the
history of the next turn. A server whose records database could not be opened serves
without storing (the response says ``"store": false``), and a ``GET`` there is a 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, InvalidRequest, NotFound, Unavailable
from corral.core.observe import RequestEvent
from corral.core.types import Usage
from corral.gateway.frontend import INSTANCE_HEADER, Kit, traceparent
from corral.gateway.openai import responses_translate as translate
from corral.gateway.openai.responses_stream import sse_events
from corral.observe.stored_responses import ResponseStore, StoredResponse
from corral.protocol.openai.responses_api import ResponsesRequest, deleted, response_object, usage
from corral.web.disconnect import unless_client_leaves
from corral.web.responses import json_response

log = logging.getLogger(__name__)

_SSE_KEEPALIVE = (b": keep-alive\n\n", 15.0)


class ResponsesRoutes:
    def __init__(self, kit: Kit) -> None:
        self._kit = kit

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", self.get, methods=["GET"]),
            Route("/v1/responses/{response_id}", self.delete, methods=["DELETE"]),
        ]

    def _store(self) -> ResponseStore | None:
        stored = self._kit.stored
        return stored if stored is not None and stored.enabled else None

    async def create(self, request: Request) -> Response:
        state = request.scope["state"]
        rid, key = state["request_id"], state.get("api_key_id")
        async with self._kit.track(request, "responses") as event:
            req = await self._kit.parse(request, ResponsesRequest)
            translate.refuse_unsupported(req)
            own = translate.own_items(req)
            history, context = await self._history(req, key)
            context += translate.stored_items(own)
            store = self._store() if req.store else None
            if store is not None and not store.fits(len(orjson.dumps(context))):
                param = "input" if req.previous_response_id is None else "previous_response_id"
                raise InvalidRequest(f"the conversation is over {store.limits.max_response_bytes} bytes, the most a "
                                     "stored response holds: send it whole with store false", param=param,
                                     code="conversation_too_large")
            gen = translate.generation(req, history + own, len(history), rid, request.headers.get("x-session-id"),
                                       traceparent(event))
            self._kit.describe(event, gen, req.stream)
            event.params["store"] = store is not None  # what the record says of the request: kept or not
            if req.previous_response_id is not None:
                event.params["previous_response_id"] = req.previous_response_id
            turn = _Turn(translate.new_id("resp"), int(time.time()), req, translate.echo(req, store is not None),
                         context, key, store, event)
            pipeline = self._kit.pipeline
            if req.stream:
                with _wire_names():
                    call = await pipeline.generate(gen, "chat", event)
                head = turn.body("in_progress", [], None)
                body = sse_events(aiter(call), head, turn.finish)
                return self._kit.stream(call, body, event, "text/event-stream", _SSE_KEEPALIVE)
            with _wire_names():
                served_by, choices, used = await unless_client_leaves(request, pipeline.complete(gen, "chat", event))
            choice = choices[0]
            body = await turn.finish(translate.output_items(choice), choice.finish, used)
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    async def _history(self, req: ResponsesRequest, key: str | None) -> tuple[list[translate.Item], list[dict[str, Any]]]:
        """The previous response's context and output: as items for the model, and as
        stored (the start of this response's context)."""
        if req.previous_response_id is None:
            return [], []
        previous = await self._read(req.previous_response_id, key, "previous_response_id")
        output = previous.response.get("output", [])
        return translate.history_items(previous.context, output), previous.context + output

    async def get(self, request: Request) -> Response:
        id_ = request.path_params["response_id"]
        found = await self._read(id_, request.scope["state"].get("api_key_id"), None)
        return json_response(200, found.response)

    async def delete(self, request: Request) -> Response:
        id_ = request.path_params["response_id"]
        store = self._reader()
        if not await store.delete(id_, request.scope["state"].get("api_key_id")):
            raise _not_found(id_, None)
        return json_response(200, deleted(id_))

    def _reader(self) -> ResponseStore:
        stored = self._kit.stored
        if stored is None:
            raise NotFound("this server keeps no responses", code="not_found")
        if not stored.enabled:
            raise Unavailable("stored responses are unavailable: the records database could not be opened",
                              code="records_unavailable")
        return stored

    async def _read(self, id_: str, key: str | None, param: str | None) -> StoredResponse:
        found = await self._reader().get(id_, key)
        if found is None:
            raise _not_found(id_, param)
        return found


@contextmanager
def _wire_names() -> Iterator[None]:
    """A refusal from below names the internal field: say it in this API's words."""
    try:
        yield
    except CorralError as exc:
        if exc.param in _WIRE_NAMES:
            exc.param = _WIRE_NAMES[exc.param]
        raise


_WIRE_NAMES = {"response_format": "text.format", "max_tokens": "max_output_tokens"}


def _not_found(id_: str, param: str | None) -> NotFound:
    return NotFound(f"Response with id {id_[:256]!r} not found.", param=param, code="not_found")


class _Turn:
    """One create request's answer: the response object, and keeping it when asked."""

    def __init__(
        self, id_: str, created_at: int, req: ResponsesRequest, echo: dict[str, Any], context: list[dict[str, Any]],
        key: str | None, store: ResponseStore | None, event: RequestEvent,
    ) -> None:
        self.id, self.created_at, self.req, self.echo = id_, created_at, req, echo
        self.context, self.key, self.store, self.event = context, key, store, event

    def body(self, status: str, output: list[dict[str, Any]], used: Usage | None) -> dict[str, Any]:
        usage_body = usage(used.prompt_tokens, used.completion_tokens) if used is not None else None
        # the sampling the engine was given: the model's defaults fill what the request
        # left out once an instance is chosen (the pipeline updates the event's params)
        sampled = {k: self.event.params[k] for k in ("temperature", "top_p") if k in self.event.params}
        echo = {**self.echo, **sampled}
        return response_object(self.id, self.created_at, self.req.model, status, output, usage_body, echo)

    async def finish(self, output: list[dict[str, Any]], reason: str | None, used: Usage) -> dict[str, Any]:
        body = self.body(translate.status_of(reason), output, used)
        if body["status"] == "completed":
            body["completed_at"] = int(time.time())
        if self.store is not None:
            stored = StoredResponse(self.id, time.time(), self.key, self.req.model, body, self.context)
            try:
                await self.store.put(stored)
            except CorralError as exc:  # the answer is worth more than keeping it
                log.warning("response %s not stored: %s", self.id, exc.message)
                body["store"] = False
        return body
