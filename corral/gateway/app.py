"""The gateway's ASGI application factory."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError
from corral.core.observe import Observers
from corral.core.spec import ServerSettings
from corral.web.errors import corral_error_handler, http_error_handler, unexpected_error_handler
from corral.web.responses import json_response
from corral.web.middleware import ApiKeys, RequestId
from corral.gateway.openai.routes import OpenAIRoutes
from corral.gateway.pipeline import Pipeline
from corral.gateway.router import Router
from corral.gateway.tracking import Tracker

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def create_gateway_app(
    router: Router,
    server: ServerSettings,
    readiness: Readiness,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra_routes: list[Route] | None = None,
    extra_middleware: list[Middleware] | None = None,
    tracker: Tracker | None = None,
) -> Starlette:
    """The OpenAI API plus health; ``extra_routes`` (the standalone admin API) are served
    by the same app, behind ``extra_middleware``."""
    tracker = tracker or Tracker(Observers())
    openai = OpenAIRoutes(Pipeline(router), router, server.max_body_bytes, tracker)

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def ready(request: Request) -> Response:
        ok, detail = readiness()
        return json_response(200 if ok else 503, {"status": "ready" if ok else "not_ready", **detail})

    routes = openai.routes()  # first: the router tries routes in order
    routes += [Route("/health", health, methods=["GET"]), Route("/health/ready", ready, methods=["GET"])]
    routes += extra_routes or []
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestId), Middleware(ApiKeys, keys=server.api_keys), *(extra_middleware or [])],
        exception_handlers={
            CorralError: corral_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )

