"""The worker's HTTP API (internal: gateways call it, with the cluster token).

Routes the internal protocol of ``corral.cluster.wire`` to the worker's in-process
engines. Streams are plain deltas; a gateway that disconnects closes the engine
iterator, which cancels the generation.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import orjson
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.cluster import wire
from corral.core.errors import Conflict, CorralError, EngineError, EngineNotInstalled, InvalidRequest, Unavailable
from corral.core.state import spec_from_json
from corral.engines.catalog import get_entry
from corral.core.registry import InstanceState
from corral.core.types import COUNT_TOKENS, GenerationEnd, GenerationRequest
from corral.observe import tracing
from corral.observe.metrics import WorkerMetrics, metrics_route
from corral.web.body import read_body
from corral.web.errors import catch_unexpected, exception_handlers
from corral.web.streaming import ClosingStreamingResponse
from corral.web.responses import json_response
from corral.web.middleware import ApiKeys, LingeringClose, RequestId
from corral.worker.instance import Instance
from corral.worker.worker import Worker

log = logging.getLogger(__name__)

MAX_INTERNAL_BODY = 64 * 1024 * 1024
KEEPALIVE_S = 5.0  # a generation silent this long gets a blank line (gateways time out at 30 s by default)


def create_worker_app(
    worker: Worker,
    token: str | None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    def instance_for(request: Request, capability: str) -> Instance:
        instance = worker.get(request.path_params["instance_id"])
        if instance is None or instance.state is not InstanceState.READY:
            raise Unavailable(f"instance {request.path_params['instance_id']} is not serving on this worker")
        if capability not in instance.capabilities:
            raise InvalidRequest(f"instance {instance.instance_id} cannot serve this request", param="model")
        return instance

    async def generate(request: Request) -> Response:
        received = time.time()
        instance = instance_for(request, "chat")
        req = wire.decode_generation(await read_body(request, MAX_INTERNAL_BODY))
        call = _Generation(worker, instance, req, received)
        lines = call.lines() if req.stream else _joined(call.lines())  # whole answer wanted: one write
        # the answer starts at once and carries blank lines while the engine is silent
        # (admission, a long prefill): the gateway can bound silence with a read timeout
        # and tell a slow engine from a dead worker; an engine's refusal is the first line
        return ClosingStreamingResponse(
            lines, on_close=call.close, media_type="application/x-ndjson", keepalive=(b"\n", KEEPALIVE_S)
        )

    async def embed(request: Request) -> Response:
        instance = instance_for(request, "embedding")
        req = wire.decode_embedding(await read_body(request, MAX_INTERNAL_BODY))
        with worker.track(instance):
            result = await instance.engine.embed(req)  # type: ignore[attr-defined]
        return json_response(200, {"v": result.vectors, "u": [result.usage.prompt_tokens, 0]})

    async def rerank(request: Request) -> Response:
        instance = instance_for(request, "rerank")
        req = wire.decode_rerank(await read_body(request, MAX_INTERNAL_BODY))
        with worker.track(instance):
            result = await instance.engine.rerank(req)  # type: ignore[attr-defined]
        return json_response(200, {"s": result.scores, "u": [result.usage.prompt_tokens, 0]})

    async def count_tokens(request: Request) -> Response:
        instance = instance_for(request, COUNT_TOKENS)
        req = wire.decode_generation(await read_body(request, MAX_INTERNAL_BODY))
        with worker.track(instance):
            count = await instance.engine.count_tokens(req)  # type: ignore[attr-defined]
        return json_response(200, {"n": count})

    async def start_instance(request: Request) -> Response:
        raw = await read_body(request, 1024 * 1024)
        try:
            body = orjson.loads(raw or b"{}")
            spec = spec_from_json(orjson.dumps(body["spec"]))
            instance_id = str(body["instance_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"malformed start request: {exc}") from None
        if worker.max_instances and len(worker.instances()) >= worker.max_instances:
            raise Conflict(f"worker {worker.worker_id} is full: it takes at most {worker.max_instances} instances",
                           code="worker_full")
        entry = get_entry(spec.engine)  # an unknown engine fails now, not in the background
        if not entry.installed():
            raise EngineNotInstalled(f"worker {worker.worker_id} cannot run engine {spec.engine!r}: {entry.install_hint()}")
        if worker.get(instance_id) is None:
            worker.spawn(worker.start_instance(spec, instance_id, managed=True), f"start {instance_id}")
        return json_response(202, {"instance_id": instance_id})

    async def stop_instance(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        try:
            timeout = float(request.query_params.get("drain_timeout", "30"))
        except ValueError:
            raise InvalidRequest("drain_timeout must be a number of seconds", param="drain_timeout") from None
        worker.spawn(worker.drain_instance(instance_id, timeout), f"drain {instance_id}")
        return json_response(202, {"instance_id": instance_id})

    async def offline(request: Request) -> Response:
        instance = await worker.set_offline(request.path_params["instance_id"], True)
        return json_response(200, {"instance_id": instance.instance_id, "state": instance.state.value})

    async def online(request: Request) -> Response:
        instance = await worker.set_offline(request.path_params["instance_id"], False)
        return json_response(200, {"instance_id": instance.instance_id, "state": instance.state.value})

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok", "worker_id": worker.worker_id})

    async def status(request: Request) -> Response:
        return json_response(200, worker.status())

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/internal/v1/status", status, methods=["GET"]),
            metrics_route(WorkerMetrics(worker)),
            Route("/internal/v1/instances/{instance_id}/generate", generate, methods=["POST"]),
            Route("/internal/v1/instances/{instance_id}/embed", embed, methods=["POST"]),
            Route("/internal/v1/instances/{instance_id}/rerank", rerank, methods=["POST"]),
            Route("/internal/v1/instances/{instance_id}/count_tokens", count_tokens, methods=["POST"]),
            Route("/internal/v1/instances", start_instance, methods=["POST"]),
            Route("/internal/v1/instances/{instance_id}", stop_instance, methods=["DELETE"]),
            Route("/internal/v1/instances/{instance_id}/offline", offline, methods=["POST"]),
            Route("/internal/v1/instances/{instance_id}/online", online, methods=["POST"]),
        ],
        middleware=[
            Middleware(LingeringClose),
            Middleware(RequestId),
            Middleware(ApiKeys, keys=(token,) if token else (), prefix="/internal"),
            catch_unexpected(),  # unexpected exceptions as JSON 500s, the connection kept for the gateway's pool
        ],
        # the one renderer of every server (corral.web.errors): a gateway rebuilds the
        # error from the status and the body
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )


class WorkerTrace:
    """The worker's and the engine's spans of one traced request, sent back at its end."""

    def __init__(self, traceparent: str, instance: Instance, received: float, started: float) -> None:
        self.parent = tracing.parse_traceparent(traceparent)
        self.instance = instance
        self.received = received  # the worker's span: from the request's arrival
        self.started = started  # the engine's span: from the call into the engine
        self.first_token: float | None = None

    def spans(self, end: GenerationEnd) -> tuple[dict[str, Any], ...]:
        if self.parent is None:
            return ()
        trace_id, parent, _ = self.parent
        worker_span, engine_span = tracing.new_id(8), tracing.new_id(8)
        now = time.time()
        attrs = {"corral.instance_id": self.instance.instance_id, "corral.model": self.instance.spec.name,
                 "corral.engine": self.instance.spec.engine, "corral.worker_id": self.instance.worker_id}
        ttft = (self.first_token - self.started) if self.first_token else None
        engine_attrs = {**attrs, "corral.engine.input_tokens": end.usage.prompt_tokens,
                        "corral.engine.output_tokens": end.usage.completion_tokens, "corral.ttft_s": ttft}
        first = [tracing.span_event(tracing.FIRST_TOKEN, self.first_token)] if self.first_token else None
        worker = tracing.span("corral.worker", trace_id, worker_span, parent, self.received, now, attrs, tracing.SERVER)
        engine = tracing.span("corral.engine.generate", trace_id, engine_span, worker_span, self.started, now,
                              engine_attrs, events=first)
        for s in (worker, engine):  # exported under the worker's service name, not the gateway's
            s["service"] = tracing.WORKER_SERVICE
        return worker, engine


class _Generation:
    """One generation on this worker, from admission to its last line."""

    def __init__(self, worker: Worker, instance: Instance, request: GenerationRequest, received: float) -> None:
        self._worker = worker
        self._instance = instance
        self._request = request
        self._received = received
        self._stream: Any = None

    async def lines(self) -> AsyncIterator[bytes]:
        worker, instance, req = self._worker, self._instance, self._request
        started = time.time()
        with worker.track(instance):
            try:
                self._stream = await instance.engine.generate(req)  # type: ignore[attr-defined]
            except CorralError as exc:
                yield _error_line(exc)
                return
            except Exception as exc:  # an engine bug: an error line, not a cut stream
                log.exception("generation failed to start on instance %s", instance.instance_id)
                yield _error_line(EngineError(f"engine failed: {type(exc).__name__}"))
                return
            trace = WorkerTrace(req.traceparent, instance, self._received, started) if req.traceparent else None
            try:
                async for item in self._stream:
                    if trace is not None:
                        if isinstance(item, GenerationEnd):
                            item = dataclasses.replace(item, spans=trace.spans(item))
                        elif trace.first_token is None:
                            trace.first_token = time.time()
                    yield wire.encode_item(item)
            except CorralError as exc:
                yield _error_line(exc)
            except Exception as exc:  # an engine bug: the gateway must get an error line, not a cut stream
                log.exception("generation failed on instance %s", instance.instance_id)
                yield _error_line(EngineError(f"engine failed: {type(exc).__name__}"))
            finally:
                await self.close()

    async def close(self) -> None:
        """Close the engine's stream (idempotent), however the answer ended."""
        stream, self._stream = self._stream, None
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _joined(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield b"".join([line async for line in lines])


def _error_line(exc: CorralError) -> bytes:
    return orjson.dumps(wire.error_to_wire(exc)) + b"\n"
