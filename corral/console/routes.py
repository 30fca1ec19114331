"""Serving the console at ``/ui``: the page, its static files (ES modules, CSS, the
vendored uPlot) and ``/ui/config.json``, every response with a strict
Content-Security-Policy and no caching of the page.

The console is read-only when the server would not guard the admin API: bound off
loopback with no admin token (the CLI refuses to start so, but the rule holds here on
its own). With a token the browser must present it on every admin call, in a header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.web.hosts import is_loopback
from corral.web.responses import json_response

STATIC = Path(__file__).parent / "static"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


@dataclass(frozen=True)
class ConsoleSettings:
    mode: str  # "standalone" | "cluster"
    host: str  # the address the server is bound to
    admin_token: bool  # an admin token is configured (the browser must present it)
    api_key: bool  # the public API wants a key
    gateway: str | None  # where the public API is, relative to this origin ("" : same app); None: none
    records: bool  # /admin/v1/requests is served here

    @property
    def read_only(self) -> bool:
        return not self.admin_token and not is_loopback(self.host)

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode, "read_only": self.read_only, "admin_token": self.admin_token,
            "api_key": self.api_key, "gateway": self.gateway, "records": self.records,
        }


class SecurityHeaders:
    """Adds the console's CSP and hardening headers to every response under it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def console_routes(settings: ConsoleSettings, extra: list[Route | Mount] | None = None) -> list[Route | Mount]:
    """``/ui/`` (the page), ``/ui/config.json``, ``/ui/static/...``; ``extra`` routes (the
    gateway proxy) are mounted under ``/ui`` too. ``/ui`` itself is redirected to ``/ui/``
    by the app's router (its slash redirect), so no ``/ui`` route shows in /openapi.json."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def config(request: Request) -> Response:
        return json_response(200, settings.as_json(), {"cache-control": "no-store"})

    inner = Router(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            Route("/config.json", config, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC, follow_symlink=False)),
            *(extra or []),
        ]
    )
    return [Mount("/ui", app=SecurityHeaders(inner))]
