"""The protocol seam over HTTP: the front-end owning a path (longest prefix) labels the
request, takes the key in its own scheme and renders every error of its paths (401,
a Corral error, no such route, wrong method, an unexpected exception) in its own format;
paths no front-end owns keep OpenAI's format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.core.errors import CorralError, ModelNotFound
from corral.gateway.frontend import AuthScheme
from corral.gateway.limits import Limiter
from corral.gateway.protocols import Protocols
from corral.web.errors import catch_unexpected, error_response, exception_handlers
from corral.web.middleware import KeySet, RequestId
from corral.web.responses import json_response


class Plain:
    """A front-end of bare-text errors with ``x-api-key`` auth, owning ``/v1/plain``."""

    name = "plain"
    prefixes = ("/v1/plain",)
    auth = AuthScheme(bearer=True, key_headers=("x-api-key",), hint="send x-api-key")

    def render_error(self, exc: CorralError) -> Response:
        return Response(f"plain {exc.status} {exc.kind.value}: {exc.message}", status_code=exc.status)

    def routes(self) -> list[Route]:
        return [Route("/v1/plain/echo", self.echo, methods=["POST"]), Route("/v1/plain/boom", self.boom)]

    async def echo(self, request: Request) -> Response:
        state = request.scope["state"]
        return json_response(200, {"protocol": state["protocol"], "key": state.get("api_key_id")})

    async def boom(self, request: Request) -> Response:
        raise ZeroDivisionError("hidden")


class Json:
    name = "json"
    prefixes = ("/v1",)
    auth = AuthScheme()

    def render_error(self, exc: CorralError) -> Response:
        return error_response(exc)

    def routes(self) -> list[Route]:
        return [Route("/v1/thing", self.thing)]

    async def thing(self, request: Request) -> Response:
        raise ModelNotFound("no such model", param="model")


def app(keys: tuple[str, ...]) -> Starlette:
    frontends = [Json(), Plain()]
    renderers = {f.name: f.render_error for f in frontends}
    return Starlette(
        routes=[r for f in frontends for r in f.routes()] + [Route("/health", lambda r: json_response(200, {}))],
        middleware=[Middleware(RequestId), Middleware(Protocols, frontends=frontends, keys=KeySet(keys), limiter=Limiter()),
                    catch_unexpected(renderers)],
        exception_handlers=exception_handlers(renderers),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app(("k1",)), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_the_longest_prefix_owns_the_path_and_labels_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/plain/echo", headers={"x-api-key": "k1"})
    assert r.status_code == 200 and r.json()["protocol"] == "plain" and len(r.json()["key"]) == 12
    bearer = await client.post("/v1/plain/echo", headers={"authorization": "Bearer k1"})
    assert bearer.json() == r.json()  # the same key, by either header: the same id


async def test_a_refused_key_is_a_401_in_the_owners_format(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/plain/echo")
    assert missing.status_code == 401 and missing.text == "plain 401 authentication: missing API key: send x-api-key"
    wrong = await client.post("/v1/plain/echo", headers={"x-api-key": "nope"})
    assert wrong.text == "plain 401 authentication: invalid API key"
    assert wrong.headers["www-authenticate"] == "Bearer"
    # the other front-end takes only Bearer: its clients' x-api-key is no key
    other = await client.get("/v1/thing", headers={"x-api-key": "k1"})
    assert other.status_code == 401 and other.json()["error"]["type"] == "authentication_error"


async def test_every_error_of_a_path_speaks_its_protocol(client: httpx.AsyncClient) -> None:
    key = {"x-api-key": "k1", "authorization": "Bearer k1"}
    no_route = await client.get("/v1/plain/nothing", headers=key)
    assert no_route.status_code == 404 and no_route.text.startswith("plain 404 not_found: no route GET")
    method = await client.get("/v1/plain/echo", headers=key)
    assert method.status_code == 405 and method.text.startswith("plain 405 invalid_request")
    boom = await client.get("/v1/plain/boom", headers=key)
    assert boom.status_code == 500 and boom.text.startswith("plain 500 server: internal error (request id ")
    assert "hidden" not in boom.text
    json = await client.get("/v1/thing", headers=key)
    assert json.status_code == 404
    assert json.json()["error"] == {"message": "no such model", "type": "invalid_request_error", "param": "model",
                                    "code": "model_not_found"}


async def test_paths_no_front_end_owns_are_open_and_openai_shaped(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200  # no key asked
    missing = await client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
