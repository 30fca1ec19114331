"""The pooled keep-alive HTTP client every Corral process uses to call another one.

``ssl_context``: the process's trust for HTTPS hops (``corral.core.tls.client_context``,
made once from ``--tls-ca`` by the CLI); ``None`` leaves httpx's own default."""

from __future__ import annotations

import ssl

import httpx


def make_http_client(
    token: str | None, connect_timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=30.0),
        limits=httpx.Limits(max_connections=2048, max_keepalive_connections=256, keepalive_expiry=30),
        verify=ssl_context if ssl_context is not None else True,
    )
