"""A controller's console reaches one gateway (``--ui-gateway URL``) through
``/ui/gateway/...`` on its own origin, so the page keeps ``connect-src 'self'``.

Only the public routes the console uses are passed on (chat, embeddings, rerank,
feedback, the model list, ``/metrics``), with the caller's own ``Authorization`` (the API
key, which the gateway checks) and nothing added: the proxy holds no key. When the
controller has an admin token the caller must also show it (``x-corral-admin-token``),
so the proxy opens the gateway to no one who could not already use the console.
"""

from __future__ import annotations

import hmac
import ssl

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from corral.core.errors import CorralError, NotFound, Unauthorized, Unavailable
from corral.web.body import read_body
from corral.web.errors import error_response

ALLOWED = {
    "v1/chat/completions": "POST", "v1/embeddings": "POST", "v1/rerank": "POST", "v1/feedback": "POST",
    "v1/models": "GET", "metrics": "GET",
}
FORWARDED = ("authorization", "content-type", "accept", "x-request-id", "traceparent")
RETURNED = ("content-type", "x-corral-instance", "x-request-id", "retry-after", "cache-control")
MAX_BODY = 8 * 1024 * 1024


def gateway_proxy(
    gateway_url: str, admin_token: str | None, transport: httpx.AsyncBaseTransport | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Route:
    """``transport``: for tests (an ASGI app in place of the gateway). ``ssl_context``: what
    an https:// gateway is verified against (the controller's ``--tls-ca``)."""
    base = gateway_url.rstrip("/")
    client: list[httpx.AsyncClient] = []  # made on first use, on the server's loop

    async def proxy(request: Request) -> Response:
        try:
            path = request.path_params["path"]
            if ALLOWED.get(path) != request.method:
                raise NotFound(f"the console's gateway proxy does not pass {request.method} /{path}", code="not_found")
            if admin_token is not None:
                given = request.headers.get("x-corral-admin-token", "").encode()
                if not hmac.compare_digest(given, admin_token.encode()):
                    raise Unauthorized("the console's gateway proxy needs the admin token (x-corral-admin-token)",
                                       code="invalid_api_key")
            body = await read_body(request, MAX_BODY) if request.method == "POST" else b""
            if not client:
                client.append(httpx.AsyncClient(
                    transport=transport, timeout=httpx.Timeout(connect=3.0, read=None, write=30.0, pool=30.0),
                    verify=ssl_context if ssl_context is not None else True,
                ))
            headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
            upstream = client[0].build_request(request.method, f"{base}/{path}", content=body, headers=headers)
            try:
                answer = await client[0].send(upstream, stream=True)
            except httpx.HTTPError as exc:
                raise Unavailable(f"the gateway at {base} did not answer: {type(exc).__name__}") from None
        except CorralError as exc:
            return error_response(exc)
        returned = {k: v for k in RETURNED if (v := answer.headers.get(k)) is not None}
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=returned,
                                 background=BackgroundTask(answer.aclose))

    return Route("/gateway/{path:path}", proxy, methods=["GET", "POST"])
