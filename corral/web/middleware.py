"""Pure-ASGI middlewares of every server (no BaseHTTPMiddleware: it buffers and costs
a task per request). Each does one thing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import random

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.core.keys import Grant
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


class KeySet:
    """The API keys a server accepts, compared in constant time; a request is attributed
    to its key by a short hash (``key_id``), never by the key itself."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def match(self, token: bytes) -> str | None:
        """The key id of ``token`` if it is one of the keys."""
        # compare against every key so timing does not tell which prefix matched
        if any([hmac.compare_digest(token, key) for key in self._keys]):
            return key_id(token)
        return None

    def resolve(self, token: bytes) -> Grant | None:
        """``KeyResolver``: a static key may use every model, without limits of its own."""
        found = self.match(token)
        return Grant(found) if found is not None else None


def key_id(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()[:12]


def bearer_token(scope: Scope) -> bytes | None:
    """The token of ``Authorization: Bearer TOKEN``; None when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


async def send_json(send: Send, status: int, body: object, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


class ApiKeys:
    """Requires ``Authorization: Bearer KEY`` on every path under ``prefix`` (the
    internal and admin APIs; the public protocols have the gateway's ``Protocols``)."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], prefix: str = "/v1") -> None:
        self.app = app
        self._keys = KeySet(keys)
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or not scope["path"].startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        found = self._keys.match(token) if token else None
        if found is not None:
            scope.setdefault("state", {})["api_key_id"] = found
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer YOUR_KEY'" if token is None else "invalid API key"
        body = error_body(message, "authentication", None, "invalid_api_key")
        await send_json(send, 401, body, ((b"www-authenticate", b"Bearer"),))


LINGER_S = 5.0  # longest time spent reading a refused body before closing
LINGER_BYTES = 128 * 1024 * 1024  # most bytes of it read (and dropped) before closing


class LingeringClose:
    """A request whose body was refused for its size (413) before it was read to its end
    is answered at once with ``Connection: close``; the rest of the body is then read and
    dropped, at most ``linger_s`` seconds and ``linger_bytes``, before the connection
    closes (nginx's lingering close).

    Closing a socket with unread data makes the kernel answer with a reset, which can
    destroy the answer before the client reads it: a client still sending its body
    sees a connection error instead of the 413 (and an SDK retries it). Keeping the
    connection alive instead would let a client stream an endless body into it."""

    def __init__(self, app: ASGIApp, linger_s: float = LINGER_S, linger_bytes: int = LINGER_BYTES) -> None:
        self.app = app
        self._linger_s = linger_s
        self._linger_bytes = linger_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = not _has_body(scope)
        # a client that asked to be told to go on sends its body only once the app reads:
        # refused before that, it sends nothing (and reading now would tell it, too late, to go on)
        waits_for_continue = _expects_continue(scope)
        lingering = False

        async def tracked_receive() -> Message:
            nonlocal body_done, waits_for_continue
            waits_for_continue = False
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def lingering_send(message: Message) -> None:
            nonlocal lingering
            if message["type"] == "http.response.start" and message["status"] == 413 and not body_done:
                lingering = not waits_for_continue
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif lingering and message["type"] == "http.response.body" and not message.get("more_body", False):
                # the whole answer goes out now; the response ends (and the server
                # closes the connection) only once the body was drained or the bounds hit
                await send({**message, "more_body": True})
                await self._drain(receive)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(scope, tracked_receive, lingering_send)

    async def _drain(self, receive: Receive) -> None:
        left = self._linger_bytes
        try:
            async with asyncio.timeout(self._linger_s):
                while left > 0:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    left -= len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            pass


def _expects_continue(scope: Scope) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"])


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
