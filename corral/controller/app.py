"""The controller's HTTP API.

- ``/cluster/v1/...`` (cluster token): the registry for workers and gateways that join
  with ``--controller URL``: put (with a lease ttl), remove, list, and a watch stream
  (NDJSON: a snapshot, then changes, with a keep-alive line every 5 s).
- ``/admin/v1/...`` (admin token): what operators and the CLI read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from corral.controller.admin import admin_routes
from corral.controller.manager import Manager
from corral.controller.demand import DemandTable
from corral.core.demand import demand_from_json
from corral.core.errors import InvalidRequest
from corral.core.registry import InstanceRecord, Registry, Synced, WatchItem, record_from_json, record_to_json
from corral.web.errors import catch_unexpected, exception_handlers
from corral.web.body import read_body
from corral.web.middleware import ApiKeys, LingeringClose, RequestId
from corral.web.responses import json_response

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 5.0


def _record_dict(record: InstanceRecord) -> object:
    return orjson.loads(record_to_json(record))


def create_controller_app(
    registry: Registry,
    manager: Manager,
    cluster_token: str | None,
    admin_token: str | None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    closing: asyncio.Event | None = None,
    demand: DemandTable | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """``closing`` set ends every watch stream, so gateways keep their views and
    reconnect (to this controller restarted, or another one) instead of waiting."""
    started = time.time()
    closing = closing or asyncio.Event()

    async def put_instance(request: Request) -> Response:
        body = await read_body(request, 1024 * 1024)
        try:
            record = record_from_json(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"malformed instance record: {exc}") from None
        if record.instance_id != request.path_params["instance_id"]:
            raise InvalidRequest("instance id in the path and the body differ", param="instance_id")
        ttl_text = request.query_params.get("ttl")
        try:
            ttl = float(ttl_text) if ttl_text is not None else None
        except ValueError:
            raise InvalidRequest("ttl must be a number of seconds", param="ttl") from None
        if ttl is not None and not 0.5 <= ttl <= 3600:
            raise InvalidRequest("ttl must be between 0.5 and 3600 seconds", param="ttl")
        await registry.put(record, ttl=ttl)
        return json_response(200, {"ok": True})

    async def remove_instance(request: Request) -> Response:
        await registry.remove(request.path_params["instance_id"])
        return json_response(200, {"ok": True})

    async def list_instances(request: Request) -> Response:
        records = await registry.list()
        return json_response(200, {"instances": [_record_dict(r) for r in records]})

    async def watch(request: Request) -> Response:
        return StreamingResponse(_watch_lines(registry, closing), media_type="application/x-ndjson")

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok", "uptime_s": round(time.time() - started, 1)})

    async def worker_heartbeat(request: Request) -> Response:
        body = orjson.loads(await read_body(request, 64 * 1024) or b"{}")
        try:
            ttl = float(request.query_params["ttl"])
            address = body.get("address")
            engines = [str(e) for e in body.get("engines", [])]
            max_instances = max(0, int(body.get("max_instances", 0)))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"malformed worker heartbeat: {exc}") from None
        manager.worker_seen(request.path_params["worker_id"], address, engines, ttl, max_instances)
        return json_response(200, {"ok": True})

    async def gateway_demand(request: Request) -> Response:
        try:
            report = demand_from_json(orjson.loads(await read_body(request, 1024 * 1024) or b"{}"))
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"malformed demand report: {exc}") from None
        if demand is not None:
            demand.report(request.path_params["gateway_id"][:128], report)
        return json_response(200, {"ok": True})

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/cluster/v1/instances", list_instances, methods=["GET"]),
            Route("/cluster/v1/instances/{instance_id}", put_instance, methods=["PUT"]),
            Route("/cluster/v1/instances/{instance_id}", remove_instance, methods=["DELETE"]),
            Route("/cluster/v1/watch", watch, methods=["GET"]),
            Route("/cluster/v1/workers/{worker_id}", worker_heartbeat, methods=["PUT"]),
            Route("/cluster/v1/gateways/{gateway_id}/demand", gateway_demand, methods=["PUT"]),
            Route("/admin/v1/instances", list_instances, methods=["GET"]),
            *admin_routes(manager),
            *(extra_routes or []),
        ],
        middleware=[
            Middleware(LingeringClose),  # a 413 is read by the client, not cut by a reset
            Middleware(RequestId),
            Middleware(ApiKeys, keys=(cluster_token,) if cluster_token else (), prefix="/cluster"),
            Middleware(ApiKeys, keys=(admin_token,) if admin_token else (), prefix="/admin"),
            catch_unexpected(),  # last: sees every route's exception, after the request id is set
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )


async def _watch_lines(registry: Registry, closing: asyncio.Event) -> AsyncIterator[bytes]:
    """The registry's watch as NDJSON (``put``, ``removed``, ``synced`` lines), with a
    keep-alive line when idle so clients notice a dead connection within seconds."""
    events = registry.watch()
    pending: asyncio.Task[WatchItem] | None = None
    closed = asyncio.ensure_future(closing.wait())
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending, closed}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                return
            if not done:
                yield b"{}\n"
                continue
            event = pending.result()
            pending = None
            if isinstance(event, Synced):
                yield b'{"synced":true}\n'
            else:
                yield orjson.dumps({"removed" if event.removed else "put": _record_dict(event.record)}) + b"\n"
    finally:
        closed.cancel()
        if pending is not None:
            # the generator is running inside this task until it has taken the cancel:
            # closing it before that raises "asynchronous generator is already running"
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await events.aclose()  # type: ignore[attr-defined]
