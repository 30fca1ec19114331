"""Pure-ASGI middlewares of the gateway (no BaseHTTPMiddleware: it buffers and costs
a task per request). Each does one thing."""

from __future__ import annotations

import hashlib
import hmac
import re
import random

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.protocol.openai.errors import error_body

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestId:
    """Gives every request an id (the caller's ``x-request-id`` if sane) and returns it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not _SAFE_ID.match(rid):
            rid = f"{random.getrandbits(128):032x}"  # unique, not secret: no getrandom call
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class ApiKeys:
    """Requires ``Authorization: Bearer KEY`` on every path under ``prefix``."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], prefix: str = "/v1") -> None:
        self.app = app
        self._keys = tuple(k.encode() for k in keys)
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or not scope["path"].startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                presented = value
                break
        scheme, _, token = presented.partition(b" ")
        if scheme.lower() == b"bearer" and self._match(token.strip()):
            # requests are attributed to a key by a short hash, never by the key itself
            scope.setdefault("state", {})["api_key_id"] = hashlib.sha256(token.strip()).hexdigest()[:12]
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer YOUR_KEY'" if not presented else "invalid API key"
        body = orjson.dumps(error_body(message, "authentication_error", None, "invalid_api_key"))
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _match(self, token: bytes) -> bool:
        # compare against every key so timing does not tell which prefix matched
        return any([hmac.compare_digest(token, key) for key in self._keys])
