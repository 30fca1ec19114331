"""The protocol front-end seam, and the plumbing every front-end shares.

A front-end (``corral.gateway.openai``, ``.anthropic``, ``.ollama``) translates one
service protocol's wire format to Corral's internal types and back, and holds nothing
else: its routes, the path prefixes it owns, how a client presents its key in that
protocol, and how an error looks in it. Everything between the wire and the engine is
shared and lives here or below: body parsing, request tracking (records, metrics,
traces), the request pipeline (routing, failover, accounting), disconnect handling and
the streamed response that releases its instance however it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError
from corral.core.observe import RequestEvent
from corral.core.registry import InstanceState
from corral.core.types import GenerationRequest
from corral.gateway.pipeline import Call, Merged, Pipeline
from corral.gateway.router import Router
from corral.gateway.tracking import Tracker
from corral.observe import tracing
from corral.observe.stored_responses import ResponseStore
from corral.web.body import read_body
from corral.web.errors import from_validation
from corral.web.streaming import ClosingStreamingResponse

M = TypeVar("M", bound=BaseModel)

INSTANCE_HEADER = "x-corral-instance"  # which instance served the request
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True)
class AuthScheme:
    """Where a protocol's clients put their API key: ``Authorization: Bearer KEY``
    and/or a header holding the bare key (Anthropic's ``x-api-key``)."""

    bearer: bool = True
    key_headers: tuple[str, ...] = ()
    hint: str = "send 'Authorization: Bearer YOUR_KEY'"


class Frontend(Protocol):
    name: str  # the protocol's label in metrics, records and traces
    prefixes: tuple[str, ...]  # the paths it owns: its auth scheme and error format apply there
    auth: AuthScheme

    def routes(self) -> list[Route]: ...

    def render_error(self, exc: CorralError) -> Response:
        """``exc`` as this protocol's error response (status, body, headers)."""
        ...


@dataclass(frozen=True)
class ModelEntry:
    name: str
    created: int  # unix seconds: when its oldest instance started
    engine: str
    kind: str  # llm | embedding | rerank
    capabilities: frozenset[str]  # chat, completion, embedding, rerank, tools, response_format


@dataclass(frozen=True)
class Kit:
    """What a front-end's handlers share: the pipeline and the request plumbing."""

    pipeline: Pipeline
    router: Router
    tracker: Tracker
    max_body: int
    stored: ResponseStore | None = None  # the Responses API's stored responses (OpenAI front-end)

    async def parse(self, request: Request, model: type[M]) -> M:
        """The body as ``model`` (bounded read; a validation error is a 400 naming the field)."""
        body = await read_body(request, self.max_body)
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise from_validation(exc) from None

    def track(self, request: Request, route: str) -> AbstractAsyncContextManager[RequestEvent]:
        """The request's event (see ``Tracker.track``), labelled with its protocol."""
        state = request.scope["state"]
        return self.tracker.track(
            state["request_id"], route, state.get("api_key_id"), request.headers.get("traceparent"),
            protocol=state.get("protocol", "openai"), grant=state.get("grant"),
        )

    def describe(self, event: RequestEvent, gen: GenerationRequest, stream: bool) -> None:
        """What a generation request asked for, on its event (every protocol alike)."""
        self.tracker.describe(event, gen, stream)

    async def models(self, request: Request | None = None) -> list[ModelEntry]:
        """The models that can be served (some instance not failed), by name; given the
        ``request``, only those its key may use."""
        await self.router.wait_synced()
        grant = request.scope["state"].get("grant") if request is not None else None
        out = []
        for name, records in self.router.models().items():
            if grant is not None and not grant.allows(name):
                continue
            live = [r for r in records if r.state is not InstanceState.FAILED]
            if live:
                created = int(min(r.started_at for r in records))
                out.append(ModelEntry(name, created, live[0].engine, live[0].kind.value, live[0].capabilities))
        return sorted(out, key=lambda e: e.name)

    def stream(
        self,
        call: Call | Merged,
        body: AsyncIterator[bytes],
        event: RequestEvent,
        media_type: str,
        keepalive: tuple[bytes, float] | None = None,
    ) -> Response:
        """A streamed answer whose body ``body`` renders from ``call``: whenever it ends
        (done, failed, client gone before its first byte) the call is closed, which
        releases the instance and marks the event cancelled unless it completed, and
        the event is finished (recorded) once. ``keepalive``: bytes the protocol's
        readers ignore, sent while the engine is silent (a long prefill) so that idle
        timeouts of proxies and clients keep the stream open."""

        async def on_close() -> None:
            await call.close()
            self.tracker.finish(event)

        served_by = call.served_by if isinstance(call, Merged) else call.target.instance_id
        headers = {**STREAM_HEADERS, INSTANCE_HEADER: served_by}
        return ClosingStreamingResponse(body, on_close, media_type, headers, keepalive=keepalive)


def traceparent(event: RequestEvent) -> str:
    """The context the engine's side continues: this request's trace, its gateway span."""
    assert event.trace_id is not None and event.span_id is not None
    return tracing.traceparent(event.trace_id, event.span_id)
