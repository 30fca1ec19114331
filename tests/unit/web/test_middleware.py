"""RequestId and ApiKeys middlewares around a tiny Starlette app."""

from __future__ import annotations

import re

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from corral.web.middleware import ApiKeys, RequestId

KEY = "sk-secret-key-123"
OTHER = "sk-other-key-456"


async def x(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "request_id": request.scope.get("state", {}).get("request_id")})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def make_app(keys: tuple[str, ...] = ()) -> TestClient:
    app = Starlette(routes=[Route("/v1/x", x, methods=["GET", "POST"]), Route("/health", health)])
    return TestClient(RequestId(ApiKeys(app, keys)))


# --------------------------------------------------------------------------- RequestId


def test_request_id_is_added() -> None:
    client = make_app()
    resp = client.get("/v1/x")
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert resp.json()["request_id"] == rid  # visible to the app


def test_request_ids_differ_between_requests() -> None:
    client = make_app()
    assert client.get("/health").headers["x-request-id"] != client.get("/health").headers["x-request-id"]


@pytest.mark.parametrize("rid", ["abc-123", "req_1.2:3", "A" * 128, "x"])
def test_sane_caller_id_is_kept(rid: str) -> None:
    resp = make_app().get("/v1/x", headers={"x-request-id": rid})
    assert resp.headers["x-request-id"] == rid
    assert resp.json()["request_id"] == rid


@pytest.mark.parametrize("rid", ["has spaces", "A" * 300, "A" * 129, "", "a/b", "<script>", "id\tx"])
def test_unsafe_caller_id_is_replaced(rid: str) -> None:
    resp = make_app().get("/v1/x", headers={"x-request-id": rid})
    got = resp.headers["x-request-id"]
    assert got != rid
    assert re.fullmatch(r"[0-9a-f]{32}", got)


def test_only_one_request_id_header_in_response() -> None:
    resp = make_app().get("/v1/x", headers={"x-request-id": "abc"})
    assert resp.headers.get_list("x-request-id") == ["abc"]


def test_request_id_on_error_responses() -> None:
    resp = make_app((KEY,)).get("/v1/x", headers={"x-request-id": "trace-1"})
    assert resp.status_code == 401
    assert resp.headers["x-request-id"] == "trace-1"
    assert make_app().get("/nowhere").headers["x-request-id"]


# --------------------------------------------------------------------------- ApiKeys


def test_no_keys_means_open() -> None:
    client = make_app(())
    assert client.get("/v1/x").status_code == 200
    assert client.get("/v1/x", headers={"authorization": "Bearer whatever"}).status_code == 200


def assert_invalid_key(resp) -> dict:
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["www-authenticate"] == "Bearer"
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["param"] is None
    assert KEY not in resp.text
    assert OTHER not in resp.text
    return body


def test_missing_key_is_401() -> None:
    body = assert_invalid_key(make_app((KEY,)).get("/v1/x"))
    assert "missing API key" in body["error"]["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Basic {KEY}",
        KEY,
        "Bearer",
        "Bearer ",
    ],
)
def test_wrong_key_is_401(authorization: str) -> None:
    body = assert_invalid_key(make_app((KEY,)).get("/v1/x", headers={"authorization": authorization}))
    assert body["error"]["message"] == "invalid API key"


def test_presented_value_containing_the_key_is_rejected_without_echo() -> None:
    resp = make_app((KEY,)).post("/v1/x", headers={"authorization": f"Bearer {KEY} extra"}, content=b"{}")
    assert_invalid_key(resp)


def test_paths_outside_v1_are_not_guarded_but_v1_subpaths_are() -> None:
    client = make_app((KEY,))
    assert client.get("/nowhere").status_code == 404
    assert_invalid_key(client.get("/v1/unknown"))


def test_right_key_passes() -> None:
    client = make_app((KEY, OTHER))
    for key in (KEY, OTHER):
        resp = client.get("/v1/x", headers={"authorization": f"Bearer {key}"})
        assert resp.status_code == 200
        assert resp.json()["ok"] is True


def test_scheme_is_case_insensitive() -> None:
    assert make_app((KEY,)).get("/v1/x", headers={"authorization": f"bearer {KEY}"}).status_code == 200


def test_post_with_right_key() -> None:
    resp = make_app((KEY,)).post("/v1/x", headers={"authorization": f"Bearer {KEY}"}, json={"a": 1})
    assert resp.status_code == 200


def test_health_is_open_without_key() -> None:
    client = make_app((KEY,))
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
