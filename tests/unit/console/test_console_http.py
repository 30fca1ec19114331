"""The console's server side over HTTP: the page and its files under a strict CSP, the
read-only rule of config.json, no inline script or HTML injection points in the page's
code, the controller's gateway proxy (only the console's routes, the caller's own key,
the admin token), and the records routes the Requests panel reads."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from corral.console.proxy import gateway_proxy
from corral.console.routes import CSP, STATIC, ConsoleSettings, console_routes
from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.records_api import records_routes
from corral.web.errors import exception_handlers
from corral.web.middleware import ApiKeys

ADMIN = "admin-secret"


def settings(host: str = "127.0.0.1", admin_token: bool = False, gateway: str | None = "") -> ConsoleSettings:
    return ConsoleSettings(mode="standalone", host=host, admin_token=admin_token, api_key=False, gateway=gateway, records=True)


def client(console: ConsoleSettings, extra: list[Route] | None = None, token: str | None = None) -> TestClient:
    admin = Route("/admin/v1/status", lambda r: JSONResponse({"ok": True}), methods=["GET"])
    app = Starlette(routes=[admin, *console_routes(console, extra)],
                    middleware=[Middleware(ApiKeys, keys=(token,) if token else (), prefix="/admin")])
    return TestClient(app)


def test_the_page_and_its_files_carry_a_strict_csp() -> None:
    c = client(settings())
    page = c.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    for path in ("/ui/static/app.js", "/ui/static/console.css", "/ui/static/vendor/uplot/uPlot.esm.js",
                 "/ui/config.json"):
        answer = c.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-security-policy"] == CSP, path
    assert "javascript" in c.get("/ui/static/app.js").headers["content-type"]
    moved = c.get("/ui", follow_redirects=False)
    assert moved.status_code in (307, 308) and moved.headers["location"].endswith("/ui/")


def test_nothing_outside_the_static_folder_is_served() -> None:
    c = client(settings())
    for path in ("/ui/static/../routes.py", "/ui/static/%2e%2e/routes.py", "/ui/static/..%2froutes.py",
                 "/ui/static/nope.js", "/ui/routes.py"):
        assert c.get(path).status_code == 404, path


def test_the_page_has_no_inline_script_and_the_code_no_html_sinks() -> None:
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son\w+=", html) and "style=" not in html
    own = [p for p in STATIC.glob("*.js")]
    assert len(own) >= 8
    for path in own:
        code = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "document.cookie",
                     "localStorage", "document.write"):
            assert sink not in code, f"{path.name} uses {sink}"
        assert len(code.splitlines()) < 500, path.name
    assert (STATIC / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")


def test_secrets_travel_in_headers_only() -> None:
    api = (STATIC / "api.js").read_text()
    assert "sessionStorage" in api and "authorization" in api
    for path in STATIC.glob("*.js"):
        code = path.read_text()
        assert not re.search(r"[?&](token|key|api_key)=", code), path.name


@pytest.mark.parametrize(("host", "token", "read_only"), [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("0.0.0.0", False, True), ("10.1.2.3", False, True), ("0.0.0.0", True, False),
])
def test_off_loopback_without_an_admin_token_the_console_is_read_only(host: str, token: bool, read_only: bool) -> None:
    config = client(settings(host, token)).get("/ui/config.json").json()
    assert config["read_only"] is read_only and config["admin_token"] is token
    assert config["mode"] == "standalone" and config["gateway"] == ""


def test_the_page_is_public_but_the_admin_api_keeps_its_token() -> None:
    c = client(settings(admin_token=True), token=ADMIN)
    assert c.get("/ui/").status_code == 200  # no data in the page itself
    assert c.get("/admin/v1/status").status_code == 401
    assert c.get("/admin/v1/status", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200


# ---------------------------------------------------------------------------- the gateway proxy

def fake_gateway() -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.body()

        async def stream() -> AsyncIterator[bytes]:
            yield b'data: {"seen": ' + str(len(body)).encode() + b"}\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-corral-instance": "chat-1", "x-secret-internal": "no"})

    async def metrics(request: Request) -> Response:
        return Response(f"auth={request.headers.get('authorization')} admin={request.headers.get('x-corral-admin-token')}")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/metrics", metrics)])


def proxy_client(admin_token: str | None) -> TestClient:
    route = gateway_proxy("http://gateway.test", admin_token, transport=httpx.ASGITransport(fake_gateway()))
    return client(ConsoleSettings("cluster", "127.0.0.1", bool(admin_token), True, "/ui/gateway", False), [route])


def test_the_proxy_passes_the_consoles_routes_with_the_callers_key() -> None:
    c = proxy_client(None)
    answer = c.post("/ui/gateway/v1/chat/completions", content=b'{"x": 1}', headers={"authorization": "Bearer k"})
    assert answer.status_code == 200 and answer.headers["x-corral-instance"] == "chat-1"
    assert "x-secret-internal" not in answer.headers
    assert answer.text == 'data: {"seen": 8}\n\ndata: [DONE]\n\n'
    assert c.get("/ui/gateway/metrics", headers={"authorization": "Bearer k"}).text == "auth=Bearer k admin=None"
    assert c.get("/ui/gateway/metrics").text == "auth=None admin=None"  # it adds no key of its own


def test_the_proxy_refuses_other_routes_and_wants_the_admin_token() -> None:
    open_proxy = proxy_client(None)
    for method, path in (("GET", "v1/chat/completions"), ("POST", "v1/responses"), ("GET", "admin/v1/status"),
                         ("GET", "internal/v1/status"), ("GET", "v1/models/../../internal")):
        assert open_proxy.request(method, f"/ui/gateway/{path}").status_code in (404, 405), path
    guarded = proxy_client(ADMIN)
    assert guarded.get("/ui/gateway/metrics").status_code == 401
    assert guarded.get("/ui/gateway/metrics", headers={"x-corral-admin-token": "wrong"}).status_code == 401
    ok = guarded.get("/ui/gateway/metrics", headers={"x-corral-admin-token": ADMIN})
    assert ok.status_code == 200 and ok.text == "auth=None admin=None"  # the token is not passed on


def test_the_proxy_reports_a_gateway_that_does_not_answer() -> None:
    route = gateway_proxy("http://127.0.0.1:9", None)
    answer = client(settings(gateway="/ui/gateway"), [route]).get("/ui/gateway/metrics")
    assert answer.status_code == 503 and "did not answer" in answer.json()["error"]["message"]


# ---------------------------------------------------------------------------- the records routes

def records_app(db: Path) -> TestClient:
    store = RecordStore(f"sqlite:///{db}")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        now = time.time()
        for i in range(30):
            event = RequestEvent(request_id=f"r-{i:02d}", route="chat", started_at=now - 100 + i,
                                 model="a" if i % 2 else "b", instance_id=f"{'a' if i % 2 else 'b'}-{i % 3}")
            event.latency_s, event.trace_id, event.span_id = 0.05, f"t-{i:02d}", f"g-{i:02d}"
            event.spans = [{"trace_id": f"t-{i:02d}", "span_id": "s1", "parent_span_id": f"g-{i:02d}", "name": "corral.worker",
                            "start": now, "end": now + 0.05, "attributes": {}}]
            if i % 5 == 0:
                event.outcome, event.http_status, event.error = "error", 503, "no ready instance"
            store.request_finished(event)
        await store.flush()
        yield
        await store.close()

    app = Starlette(routes=records_routes(lambda: store), lifespan=lifespan, exception_handlers=exception_handlers())
    return TestClient(app)


def test_records_are_listed_newest_first_with_filters(tmp_path: Path) -> None:
    with records_app(tmp_path / "r.db") as c:
        rows = c.get("/admin/v1/requests").json()["requests"]
        assert [r["request_id"] for r in rows[:2]] == ["r-29", "r-28"] and len(rows) == 30
        assert "spans" not in rows[0] and "prompt_text" not in rows[0]
        assert {r["model"] for r in c.get("/admin/v1/requests?model=a").json()["requests"]} == {"a"}
        errors = c.get("/admin/v1/requests?status=error").json()["requests"]
        assert len(errors) == 6 and {r["http_status"] for r in errors} == {503}
        assert len(c.get("/admin/v1/requests?status=503&model=b").json()["requests"]) == 3
        assert {r["instance_id"] for r in c.get("/admin/v1/requests?instance=a-1").json()["requests"]} == {"a-1"}
        assert len(c.get("/admin/v1/requests?limit=5").json()["requests"]) == 5
        recent = c.get("/admin/v1/requests?since_s=85").json()["requests"]
        assert 0 < len(recent) < 30 and recent[-1]["request_id"] >= "r-10"
        bad = c.get("/admin/v1/requests?limit=zero")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
        assert c.get("/admin/v1/requests?since_s=-1").status_code == 400


def test_one_record_comes_with_its_trace_and_the_report_renders(tmp_path: Path) -> None:
    with records_app(tmp_path / "r.db") as c:
        one = c.get("/admin/v1/requests/r-03").json()
        assert one["request"]["request_id"] == "r-03"
        names = {s["name"] for s in one["spans"]}
        assert "corral.worker" in names and len(one["spans"]) == 2, one["spans"]
        assert {s["span_id"] for s in one["spans"]} == {"g-03", "s1"}
        missing = c.get("/admin/v1/requests/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
        report = c.get("/admin/v1/requests/report?since_s=3600")
        assert report.status_code == 200 and "<title>Corral request report" in report.text
        assert "attachment" in report.headers["content-disposition"]


def test_records_disabled_is_a_clear_404() -> None:
    app = Starlette(routes=records_routes(lambda: None), exception_handlers=exception_handlers())
    answer = TestClient(app).get("/admin/v1/requests")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "records_disabled"
