"""Corral errors as HTTP responses: the handlers every server installs, and OpenAI's
error JSON, the format of every route that belongs to no other protocol front-end
(the OpenAI API, the admin and internal APIs).

A protocol front-end with its own error format (Anthropic, Ollama) registers an
``ErrorRenderer`` under its protocol name; a request carries its protocol in
``scope["state"]["protocol"]`` (set by the gateway's protocol middleware), and the
handlers render through that front-end, so a route's errors, its 404s and 405s and the
last-resort 500 all speak its protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response

from corral.core.errors import CorralError, EngineError, ErrorKind, HttpError, InvalidRequest, Overloaded, RateLimited, Unavailable
from corral.protocol.openai.errors import error_body
from corral.web.responses import json_response

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[CorralError], Response]
"""A protocol's error response for one Corral error."""

_HTTP_KINDS = {401: ErrorKind.AUTHENTICATION, 403: ErrorKind.PERMISSION, 404: ErrorKind.NOT_FOUND, 429: ErrorKind.RATE_LIMITED}


def retry_headers(exc: CorralError) -> dict[str, str] | None:
    """``Retry-After`` for the errors a client should retry (every protocol sends it)."""
    if isinstance(exc, RateLimited):
        return {"retry-after": str(max(1, math.ceil(exc.retry_after))), **exc.headers}
    if isinstance(exc, Overloaded | Unavailable):
        retry = exc.retry_after if isinstance(exc, Overloaded) else 1.0
        return {"retry-after": str(max(1, math.ceil(retry)))}
    return None


def error_response(exc: CorralError) -> Response:
    """OpenAI's rendering (the default)."""
    return json_response(exc.status, error_event(exc), retry_headers(exc))


def error_event(exc: CorralError) -> dict[str, object]:
    """OpenAI's error body, also what an already-started OpenAI stream sends."""
    return error_body(exc.message, exc.kind.value, exc.param, exc.code)


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The first validation problem, with ``param`` naming the field as OpenAI does."""
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return InvalidRequest(f"the request body is not valid JSON: {err['msg']}", code="invalid_json")
    if err["type"] == "model_type" and not err["loc"]:
        return InvalidRequest("the request body must be a JSON object", code="invalid_json")
    param = _param(err["loc"])
    return InvalidRequest(f"{param}: {err['msg']}", param=param, code="invalid_value")


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "function-after", "constrained-int", "int", "float") or "[" in str(part):
            continue  # union branch names pydantic adds to locations, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


Handler = Callable[[Request, Exception], Awaitable[Response]]


class _Handlers:
    def __init__(self, renderers: Mapping[str, ErrorRenderer]) -> None:
        self._renderers = renderers

    def render(self, request: Request, exc: CorralError) -> Response:
        protocol = request.scope.get("state", {}).get("protocol")
        return self._renderers.get(protocol, error_response)(exc) if protocol else error_response(exc)

    async def corral_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CorralError)
        if exc.status >= 500:
            log.warning("request %s failed: %s", request.scope.get("state", {}).get("request_id"), exc.message)
        return self.render(request, exc)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _HTTP_KINDS.get(exc.status_code, ErrorKind.INVALID_REQUEST)
        message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        response = self.render(request, HttpError(exc.status_code, str(message), kind))
        response.headers.update(dict(exc.headers or {}))
        return response

    async def unexpected(self, request: Request, exc: Exception) -> Response:
        rid = request.scope.get("state", {}).get("request_id")
        log.exception("unexpected error in request %s", rid, exc_info=exc)
        return self.render(request, EngineError(f"internal error (request id {rid})", code="internal_error"))


def exception_handlers(renderers: Mapping[str, ErrorRenderer] | None = None) -> dict[type[Exception], Handler]:
    """Starlette's ``exception_handlers`` of every server: Corral and HTTP errors, in
    the request's protocol (``renderers`` by protocol name; OpenAI's otherwise)."""
    h = _Handlers(renderers or {})
    return {CorralError: h.corral_error, HTTPException: h.http_error}


def catch_unexpected(renderers: Mapping[str, ErrorRenderer] | None = None) -> Middleware:
    """The last middleware of every server: an unexpected exception becomes a 500 in
    the request's protocol, logged once with its traceback. Rendered here rather than
    through Starlette's ``Exception`` handler, which re-raises after answering, so that
    uvicorn logs the traceback twice and closes the connection a client's pool would reuse."""
    return Middleware(ExceptionMiddleware, handlers={Exception: _Handlers(renderers or {}).unexpected})
