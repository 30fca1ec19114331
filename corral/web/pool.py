"""The pooled keep-alive HTTP client of the hot path (aiohttp).

Every generation crosses one or two hops after the gateway (gateway -> worker, engine
-> upstream server); these are on the critical path of each token, so they use aiohttp,
whose C HTTP parser costs about a quarter of httpx's CPU per streamed request (measured
in benchmarks/). Control-plane calls keep httpx (``corral.web.client``).

``open_stream`` sends a request and returns once the response headers are in;
``ResponseLines`` then yields the body line by line and is closed exactly once: at the
end of the body its connection goes back to the pool, before the end (a client gone) it
is dropped, which the server on the other side sees as a disconnect.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

TransportError = (aiohttp.ClientError, OSError, asyncio.TimeoutError)  # a failed exchange, any cause


@dataclass(frozen=True)
class PoolSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float | None = None  # longest silence while reading; None: unbounded
    max_connections: int = 2048
    keepalive_s: float = 30.0
    proxy: str | None = None  # see env_proxy


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY name for ``url``, resolved once per
    engine: aiohttp's ``trust_env`` would look again (and read ~/.netrc in a thread)
    on every request."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def make_session(settings: PoolSettings, headers: Mapping[str, str] | None = None) -> aiohttp.ClientSession:
    """One per process or engine, created inside the running event loop."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections, keepalive_timeout=settings.keepalive_s, ttl_dns_cache=60,
        enable_cleanup_closed=False,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=dict(headers or {}), trust_env=False,
        auto_decompress=True, skip_auto_headers=("user-agent",), proxy=settings.proxy,
    )


class ResponseLines:
    """The body of a streamed response, line by line (without the line ending).

    Reads whatever the connection has (``readany``) and splits it here: one call per
    network read rather than a scan per line in aiohttp's ``readline``; a burst of
    events (a fast upstream, or a gateway catching up) costs one read."""

    __slots__ = ("response", "_closed", "_lines", "_partial")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._closed = False
        self._lines: collections.deque[bytes] = collections.deque()
        self._partial = b""

    def __aiter__(self) -> ResponseLines:
        return self

    async def __anext__(self) -> bytes:
        lines = self._lines
        while not lines:
            data = await self.response.content.readany()
            if not data:
                if self._partial:  # a last line without its ending
                    line, self._partial = self._partial, b""
                    return line.rstrip(b"\r")
                self.aclose_now(complete=True)
                raise StopAsyncIteration
            parts = (self._partial + data).split(b"\n")
            self._partial = parts.pop()
            lines.extend(parts)
        line = lines.popleft()
        return line[:-1] if line.endswith(b"\r") else line

    def aclose_now(self, complete: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if complete:
            self.response.release()  # read to the end: the connection is reusable
        else:
            self.response.close()  # mid-body: drop the connection (the server sees the client leave)

    async def aclose(self) -> None:
        self.aclose_now(complete=self.response.content.at_eof())


class Refused(Exception):
    """A non-2xx answer to ``open_stream``; the caller maps it to a Corral error."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


async def open_stream(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str], silence_s: float | None = None
) -> ResponseLines:
    """POST ``data``; the body's lines once a 2xx answer starts, else ``Refused`` (with
    what the server said). Transport failures raise ``TransportError`` types.
    ``silence_s``: the longest wait for any read, headers included (default: the
    session's read timeout)."""
    if silence_s is None:  # (an explicit timeout=None would mean no timeout at all)
        resp = await session.post(url, data=data, headers=headers, allow_redirects=False)
    else:
        timeout = aiohttp.ClientTimeout(total=None, connect=session.timeout.connect, sock_read=silence_s)
        resp = await session.post(url, data=data, headers=headers, allow_redirects=False, timeout=timeout)
    if not 200 <= resp.status < 300:
        try:
            body = await resp.read()
        except TransportError:
            body = b""
        finally:
            resp.release()
        raise Refused(resp.status, resp.headers, body)
    return ResponseLines(resp)


def describe(exc: BaseException) -> str:
    """A transport failure in words that do not depend on the HTTP library."""
    if isinstance(exc, asyncio.TimeoutError):
        return "Timeout: no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"ConnectError: {exc.strerror or 'cannot connect'}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "RemoteProtocolError: the server closed the connection"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
