"""The one place where Corral errors become wire errors (OpenAI's error JSON)."""

from __future__ import annotations

import logging
import math

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from corral.core.errors import CorralError, InvalidRequest, Overloaded, Unavailable
from corral.protocol.openai.errors import error_body
from corral.web.responses import json_response

log = logging.getLogger(__name__)

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def error_response(exc: CorralError) -> Response:
    headers = None
    if isinstance(exc, Overloaded | Unavailable):
        retry = exc.retry_after if isinstance(exc, Overloaded) else 1.0
        headers = {"retry-after": str(max(1, math.ceil(retry)))}
    return json_response(exc.status, error_body(exc.message, exc.type, exc.param, exc.code), headers)


def error_event(exc: CorralError) -> dict[str, object]:
    """The body of an error sent inside an already-started stream."""
    return error_body(exc.message, exc.type, exc.param, exc.code)


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


async def corral_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    if exc.status >= 500:
        log.warning("request %s failed: %s", request.scope.get("state", {}).get("request_id"), exc.message)
    return error_response(exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
    message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
    return json_response(exc.status_code, error_body(str(message), type_, None, None), dict(exc.headers or {}))


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    rid = request.scope.get("state", {}).get("request_id")
    log.exception("unexpected error in request %s", rid, exc_info=exc)
    return json_response(500, error_body(f"internal error (request id {rid})", "server_error", None, "internal_error"))
