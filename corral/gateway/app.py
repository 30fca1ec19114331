"""The gateway's ASGI application factory."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.keys import KeyResolver
from corral.core.observe import Observers
from corral.core.spec import ServerSettings
from corral.web.errors import catch_unexpected, exception_handlers
from corral.web.responses import json_response
from corral.web.middleware import KeySet, LingeringClose, RequestId
from corral import __version__
from corral.gateway.frontend import Kit
from corral.gateway.frontends import build_frontends
from corral.gateway.openapi import openapi_route
from corral.gateway.limits import Limiter
from corral.gateway.pipeline import Pipeline
from corral.gateway.protocols import Protocols
from corral.gateway.router import Router
from corral.gateway.tracking import Tracker
from corral.observe.stored_responses import ResponseStore

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def create_gateway_app(
    router: Router,
    server: ServerSettings,
    readiness: Readiness,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra_routes: list[Route] | None = None,
    extra_middleware: list[Middleware] | None = None,
    tracker: Tracker | None = None,
    stored_responses: ResponseStore | None = None,
    keys: KeyResolver | None = None,
    limiter: Limiter | None = None,
    health_detail: dict[str, Any] | None = None,
) -> Starlette:
    """The protocol front-ends of ``server.protocols`` plus health; ``extra_routes``
    (the standalone admin API) are served by the same app, behind ``extra_middleware``.
    ``keys``: how a public request's key is checked (default: ``server.api_keys``);
    ``limiter``: the keys' counters (the caller's, when it shares them with other gateways).
    ``health_detail``: more fields of ``GET /health`` (one of several processes on a
    port says which one answered)."""
    tracker = tracker or Tracker(Observers())
    limiter = limiter or Limiter()
    kit = Kit(Pipeline(router, limiter=limiter), router, tracker, server.max_body_bytes, stored_responses)
    frontends = build_frontends(server.protocols, kit)
    renderers = {f.name: f.render_error for f in frontends}

    health_body = {"status": "ok", **(health_detail or {})}

    async def health(request: Request) -> Response:
        return json_response(200, health_body)

    async def ready(request: Request) -> Response:
        ok, detail = readiness()
        return json_response(200 if ok else 503, {"status": "ready" if ok else "not_ready", **detail})

    routes = [route for f in frontends for route in f.routes()]  # first: the router tries routes in order
    routes += [Route("/health", health, methods=["GET"]), Route("/health/ready", ready, methods=["GET"])]
    routes += extra_routes or []
    routes.append(openapi_route(lambda: routes, version=__version__))  # describes every route above
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(LingeringClose),  # a 413 is read by the client, not cut by a reset
            Middleware(RequestId),
            Middleware(Protocols, frontends=frontends, keys=keys if keys is not None else KeySet(server.api_keys),
                       limiter=limiter),
            *(extra_middleware or []),
            catch_unexpected(renderers),  # last: sees every route's exception, after the request id is set
        ],
        exception_handlers=exception_handlers(renderers),
        lifespan=lifespan,
    )

