"""``GET /openapi.json``: an OpenAPI 3.1 document listing every route the gateway app
serves (the OpenAI routes, health, and whatever extra routes it is given: the admin API,
feedback, metrics), with request bodies from the pydantic models that validate them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.spec import ServerSettings
from corral.gateway.app import create_gateway_app
from corral.gateway.openapi import _template
from corral.gateway.router import Router
from corral.protocol.openai.requests import ChatCompletionRequest
from corral.registry.embedded import EmbeddedRegistry


async def _ok(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


class ScaleStandIn(BaseModel):
    replicas: int


async def _scale(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


_scale.request_body = ScaleStandIn  # type: ignore[attr-defined]  # as the admin API's handlers name theirs


# stand-ins with the shapes of the standalone server's extra routes (the admin API's
# {name:path} convertor, feedback, metrics): the document lists whatever the app serves
EXTRA = [
    Route("/admin/v1/models", _ok, methods=["GET", "POST"]),
    Route("/admin/v1/models/{name:path}/scale", _scale, methods=["POST"]),
    Route("/admin/v1/audit", _ok, methods=["GET"]),
    Route("/v1/feedback", _ok, methods=["POST"]),
    Route("/metrics", _ok, methods=["GET"]),
]


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[list[Route], dict[str, Any]]]:
    app = create_gateway_app(
        Router(EmbeddedRegistry(), lambda record: None), ServerSettings(api_keys=("k",)), lambda: (True, {}),
        extra_routes=EXTRA,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        resp = await client.get("/openapi.json")  # no key: the document is public, as /health
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/json"
        again = await client.get("/openapi.json")
        assert again.content == resp.content
        yield [r for r in app.routes if isinstance(r, Route)], resp.json()


def test_every_served_route_is_in_the_document(served: tuple[list[Route], dict[str, Any]]) -> None:
    routes, doc = served
    served_ops = {(m.lower(), _template(r.path)) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert served_ops == documented
    for must in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/models",
                 "/v1/models/{model}", "/health", "/health/ready", "/openapi.json", "/admin/v1/models",
                 "/admin/v1/models/{name}/scale", "/v1/feedback", "/metrics"]:
        assert must in doc["paths"], must


def test_request_bodies_are_the_wire_models_schemas(served: tuple[list[Route], dict[str, Any]]) -> None:
    _, doc = served
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    schema = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert set(schema["required"]) == {"model", "messages"}
    assert (schema["properties"]["n"]["minimum"], schema["properties"]["n"]["maximum"]) == (1, 128)
    expected = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schema["properties"].keys() == expected["properties"].keys()
    feedback = doc["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert feedback == {"$ref": "#/components/schemas/FeedbackRequest"}
    scale = doc["paths"]["/admin/v1/models/{name}/scale"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert scale == {"$ref": "#/components/schemas/ScaleStandIn"}
    assert doc["components"]["schemas"]["ScaleStandIn"]["required"] == ["replicas"]
    # 400s are OpenAI error objects
    assert chat["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_reference_resolves(served: tuple[list[Route], dict[str, Any]]) -> None:
    _, doc = served
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_path_parameters_are_declared(served: tuple[list[Route], dict[str, Any]]) -> None:
    _, doc = served
    scale = doc["paths"]["/admin/v1/models/{name}/scale"]["post"]
    assert scale["parameters"] == [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["name"] == "model"


def test_the_document_validates_as_openapi_3_1(served: tuple[list[Route], dict[str, Any]]) -> None:
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")
    _, doc = served
    assert doc["openapi"] == "3.1.0"
    validator.validate(doc)  # raises on an invalid document (schemas checked as JSON Schema 2020-12)
    from corral.controller.admin import admin_routes
    from corral.gateway.openapi import document

    validator.validate(document(admin_routes(manager=None)))  # type: ignore[arg-type]  # the real admin bodies


def test_the_admin_api_names_its_bodies() -> None:
    """The real admin routes carry their body models, which the document then uses."""
    from corral.controller.admin import DeployBody, ScaleBody, UpdateBody, admin_routes
    from corral.gateway.openapi import document

    routes = admin_routes(manager=None)  # type: ignore[arg-type]  # handlers are not called
    doc = document(routes)
    bodies = {(m, p): op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
              for p, item in doc["paths"].items() for m, op in item.items()}
    assert bodies[("post", "/admin/v1/models")] == "#/components/schemas/DeployBody"
    assert bodies[("post", "/admin/v1/models/{name}/scale")] == "#/components/schemas/ScaleBody"
    assert bodies[("patch", "/admin/v1/models/{name}")] == "#/components/schemas/UpdateBody"
    for model in (DeployBody, ScaleBody, UpdateBody):
        assert model.__name__ in doc["components"]["schemas"]
