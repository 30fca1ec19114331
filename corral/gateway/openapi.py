"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``).

Built from the routes the app actually serves, so a route cannot be served and missing
from the document: each route is described by an ``Operation`` when one is known (its
request body the JSON Schema of the pydantic model that validates it, which is JSON
Schema 2020-12, the dialect OpenAPI 3.1 uses), and otherwise listed with its path
parameters and a JSON answer. The document is built once, on the first request.

A route served by another package (the admin API's) names the model of its body as
its endpoint's ``request_body`` attribute (``REQUEST_BODY``): the gateway does not
import the controller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral.observe.records import FeedbackRequest
from corral.protocol.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, RerankRequestIn
from corral.protocol.openai.responses_api import ResponsesRequest

OPENAPI_PATH = "/openapi.json"
REQUEST_BODY = "request_body"  # an endpoint's attribute: the pydantic model of its JSON body
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")  # starlette's {name} and {name:path}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    statuses: tuple[int, ...] = (200,)  # the answers besides the errors every route has
    stream: bool = False  # may answer text/event-stream


_INFER = (400, 404, 413, 429, 503, 504)  # the errors of a call that reaches a model
GATEWAY_OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/v1/chat/completions", "Create a chat completion", "openai", ChatCompletionRequest,
              (200, *_INFER), stream=True),
    Operation("POST", "/v1/completions", "Create a text completion", "openai", CompletionRequest, (200, *_INFER),
              stream=True),
    Operation("POST", "/v1/embeddings", "Create embeddings", "openai", EmbeddingsRequest, (200, *_INFER)),
    Operation("POST", "/v1/rerank", "Rank documents by relevance to a query", "openai", RerankRequestIn,
              (200, *_INFER)),
    Operation("POST", "/v1/responses", "Create a model response (Responses API)", "openai", ResponsesRequest,
              (200, *_INFER), stream=True),
    Operation("GET", "/v1/responses/{response_id}", "A stored response", "openai", statuses=(200, 404, 503)),
    Operation("DELETE", "/v1/responses/{response_id}", "Delete a stored response", "openai", statuses=(200, 404, 503)),
    Operation("GET", "/v1/models", "List the models served", "openai"),
    Operation("GET", "/v1/models/{model}", "One model served", "openai", statuses=(200, 404)),
    Operation("POST", "/v1/feedback", "Attach a rating to a recorded request", "feedback", FeedbackRequest,
              (200, 400, 404, 413, 503)),
    Operation("GET", "/health", "Liveness", "health"),
    Operation("GET", "/health/ready", "Readiness: every deployed model has a ready instance", "health", None,
              (200, 503)),
    Operation("GET", "/metrics", "Prometheus metrics (text exposition format)", "metrics"),
    Operation("GET", OPENAPI_PATH, "This document", "meta"),
)


def document(routes: Sequence[BaseRoute], operations: Iterable[Operation] = GATEWAY_OPERATIONS,
             version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (the app's own list, in serving order)."""
    known = {(op.method, _template(op.path)): op for op in operations}
    described: list[tuple[str, str, Operation]] = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _template(route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            op = known.get((method, path)) or _generic(method, path, getattr(route.endpoint, REQUEST_BODY, None))
            described.append((method.lower(), path, op))
    models = {op.body for _, _, op in described if op.body is not None}
    schemas = _schemas(models)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in described:
        paths.setdefault(path, {})[method] = _operation(op, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Corral gateway", "version": version,
                 "description": "OpenAI-compatible inference API, admin API, feedback, health and metrics."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],  # keys are optional: a server may run without them
    }


def openapi_route(routes: Callable[[], Sequence[BaseRoute]], version: str = "0") -> Route:
    """``GET /openapi.json``: the document of what ``routes()`` returns (called once)."""
    built: list[bytes] = []

    async def openapi(request: Request) -> Response:
        if not built:  # the routes are complete once the app serves: build on first use
            built.append(orjson.dumps(document(routes(), version=version)))
        return Response(built[0], 200, media_type="application/json")

    return Route(OPENAPI_PATH, openapi, methods=["GET"])


def _template(path: str) -> str:
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _generic(method: str, path: str, body: type[BaseModel] | None) -> Operation:
    tag = "admin" if path.startswith("/admin/") else "other"
    statuses = (200, 201, 202, 400, 404, 409, 413) if method != "GET" else (200, 400, 404)
    return Operation(method, path, f"{method} {path} (see docs/admin-api.md)" if tag == "admin" else f"{method} {path}",
                     tag, body, statuses)


def _schemas(models: set[type[BaseModel]]) -> dict[str, Any]:
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
        }},
    }
    return schemas


def _operation(op: Operation, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{op.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
        "responses": {str(s): _response(s, op) for s in sorted(set(op.statuses) | {401, 500})},
    }
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PARAM.findall(path)]
    if path == "/admin/v1/audit":
        # clamped, not refused: out-of-range values are valid requests
        params.append({"name": "limit", "in": "query", "required": False, "description": "clamped to 1..10000",
                       "schema": {"type": "integer", "default": 100}})
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
    elif op.method in ("POST", "PUT", "PATCH"):  # a body this document has no model of
        out["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    return out


def _response(status: int, op: Operation) -> dict[str, Any]:
    if status >= 400:
        return {"description": _REASONS.get(status, "error"), "content": {"application/json": {"schema": _ERROR_REF}}}
    if op.tag == "metrics":
        return {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if op.stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"description": "OK" if status == 200 else _REASONS.get(status, "OK"), "content": content}


_REASONS = {
    201: "Created", 202: "Accepted", 400: "Invalid request (param names the field)", 401: "Missing or wrong API key",
    404: "Unknown model or route", 409: "Conflict", 413: "Request body too large",
    429: "Overloaded (Retry-After)", 500: "Internal or engine error", 503: "Model unavailable (Retry-After)",
    504: "Upstream timeout",
}
