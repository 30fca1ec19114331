"""Which protocol front-end a request belongs to, and its key check in that protocol.

``Protocols`` is the gateway's pure-ASGI middleware in front of every public route: it
finds the front-end owning the path (the longest of their prefixes, so Anthropic's
``/v1/messages`` is not the OpenAI API's ``/v1``), labels the request with its
protocol (``scope["state"]["protocol"]``: the error handlers render in it, the tracker
records it) and, when keys are configured, takes the key the way that protocol's
clients send it, and resolves it (``KeyResolver``: static and virtual keys) to the
request's ``Grant``. A refusal is a 401 in the protocol's own error format.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.core.errors import Unauthorized
from corral.core.keys import KeyResolver
from corral.gateway.frontend import Frontend
from corral.gateway.limits import Limiter
from corral.web.middleware import bearer_token


def presented_key(scope: Scope, frontend: Frontend) -> bytes | None:
    """The key the client sent in ``frontend``'s scheme; None when it sent none."""
    auth = frontend.auth
    if auth.key_headers:
        wanted = {h.encode() for h in auth.key_headers}
        for name, value in scope["headers"]:
            if name in wanted:
                return value.strip()
    return bearer_token(scope) if auth.bearer else None


class Protocols:
    def __init__(self, app: ASGIApp, frontends: Sequence[Frontend], keys: KeyResolver, limiter: Limiter) -> None:
        self.app = app
        self._keys = keys
        self._limiter = limiter
        owners = [(prefix, f) for f in frontends for prefix in f.prefixes]
        self._owners = sorted(owners, key=lambda pair: len(pair[0]), reverse=True)

    def owner(self, path: str) -> Frontend | None:
        for prefix, frontend in self._owners:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return frontend
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        frontend = self.owner(scope["path"])
        if frontend is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["protocol"] = frontend.name
        if self._keys:
            token = presented_key(scope, frontend)
            try:
                grant = self._keys.resolve(token) if token else None
                if grant is None:
                    raise Unauthorized(f"missing API key: {frontend.auth.hint}" if token is None else "invalid API key")
            except Unauthorized as refused:  # unknown, missing or expired
                response = frontend.render_error(refused)
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            # the pipeline checks the grant's models and limits once the model is known
            state["grant"] = grant
            state["api_key_id"] = grant.key_id
            if grant.limits.rpm or grant.limits.tpm:
                limiter = self._limiter

                async def send_with_limits(message: Message) -> None:
                    if message["type"] == "http.response.start" and message["status"] != 429:  # a 429 has its own
                        message["headers"] = [*message.get("headers", ()), *limiter.headers(grant)]
                    await send(message)

                await self.app(scope, receive, send_with_limits)
                return
        await self.app(scope, receive, send)
