"""The pooled keep-alive HTTP client of the hot path (aiohttp).

Every generation crosses one or two hops after the gateway (gateway -> worker, engine
-> upstream server); these are on the critical path of each token, so they use aiohttp,
whose C HTTP parser costs about a quarter of httpx's CPU per streamed request (measured
in benchmarks/). Control-plane calls keep httpx (``corral.net.client``).

``open_stream`` sends a request and returns once the response headers are in;
``ResponseLines`` then yields the body line by line and is closed exactly once: at the
end of the body its connection goes back to the pool, before the end (a client gone) it
is dropped, which the server on the other side sees as a disconnect.

``Admission`` is the wait for one of a pool's connections: first come, first served, in
a bounded queue, each wait bounded, and beyond that ``Overloaded`` (429 with
``Retry-After``). Waiting for a connection is load, not a failure of the server on the
other side: with an ``Admission`` in front, aiohttp's own pool never makes a request
wait, so ``connect_timeout_s`` bounds only establishing a connection (DNS, TCP, TLS)
and a timeout there is the server's failure.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from corral.core.errors import Overloaded

TransportError = (aiohttp.ClientError, OSError, asyncio.TimeoutError)  # a failed exchange, any cause


@dataclass(frozen=True)
class PoolSettings:
    connect_timeout_s: float = 5.0  # establishing a connection (and, without an Admission, waiting for a free one)
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


def make_session(
    settings: PoolSettings, headers: Mapping[str, str] | None = None, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """One per process or engine, created inside the running event loop. ``ssl_context``:
    what https:// peers are verified against (a gateway's ``--tls-ca``); ``None`` leaves
    aiohttp's default verification."""
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections, keepalive_timeout=settings.keepalive_s, ttl_dns_cache=60,
        enable_cleanup_closed=False, ssl=ssl_context if ssl_context is not None else True,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_connect=settings.connect_timeout_s,
        sock_read=settings.read_timeout_s,
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

    __slots__ = ("response", "_closed", "_lines", "_partial", "_slot")

    def __init__(self, response: aiohttp.ClientResponse, slot: Slot | None = None) -> None:
        self.response = response
        self._closed = False
        self._lines: collections.deque[bytes] = collections.deque()
        self._partial = b""
        self._slot = slot  # the admission to the pool, given back with the connection

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
        if self._slot is not None:
            self._slot.release()

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
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: Mapping[str, str],
    silence_s: float | None = None,
    slot: Slot | None = None,
) -> ResponseLines:
    """POST ``data``; the body's lines once a 2xx answer starts, else ``Refused`` (with
    what the server said). Transport failures raise ``TransportError`` types.
    ``silence_s``: the longest wait for any read, headers included (default: the
    session's read timeout). ``slot``: the request's admission to the pool, released
    when this fails, else held by the lines until they are closed."""
    try:
        if silence_s is None:  # (an explicit timeout=None would mean no timeout at all)
            resp = await session.post(url, data=data, headers=headers, allow_redirects=False)
        else:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=session.timeout.connect, sock_connect=session.timeout.sock_connect,
                sock_read=silence_s,
            )
            resp = await session.post(url, data=data, headers=headers, allow_redirects=False, timeout=timeout)
        if not 200 <= resp.status < 300:
            try:
                body = await resp.read()
            except TransportError:
                body = b""
            finally:
                resp.release()
            raise Refused(resp.status, resp.headers, body)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    return ResponseLines(resp, slot)


def describe(exc: BaseException) -> str:
    """A transport failure in words that do not depend on the HTTP library."""
    if isinstance(exc, asyncio.TimeoutError):
        return "Timeout: no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):  # before its base class below
        return f"CertificateError: {exc.certificate_error} (is the peer's CA the --tls-ca given?)"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLSError: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"ConnectError: {exc.strerror or 'cannot connect'}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "RemoteProtocolError: the server closed the connection"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class Admission:
    """At most ``capacity`` requests hold one of a pool's connections; the others wait
    for one in arrival order, at most ``max_waiting`` of them, each at most
    ``timeout_s`` seconds. A request that finds the queue full, or waits too long, gets
    ``Overloaded``: the client is told to come back (``Retry-After``, estimated from how
    long requests hold a connection), and nobody counts it as a failure of ``what``.

    Give the pool's connector the same limit: with every request admitted here first,
    aiohttp's own pool never makes one wait, so its connect timeout measures connecting
    only."""

    __slots__ = ("capacity", "max_waiting", "timeout_s", "_what", "_held", "_waiters", "_waiting", "_hold_s")

    def __init__(self, capacity: int, max_waiting: int, timeout_s: float, what: str) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self._what = what  # "the upstream server at URL", for messages
        self._held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiting = 0  # live waiters (cancelled ones stay in the deque until popped)
        self._hold_s = 1.0  # EWMA of how long a request holds its connection

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self) -> Slot:
        if self._held < self.capacity and not self._waiting:
            self._held += 1
            return Slot(self)
        if self._waiting >= self.max_waiting:
            raise Overloaded(
                f"{self._what} is at capacity: {self._held} requests in flight, {self._waiting} waiting "
                "(options.max_connections, options.max_queued); retry shortly",
                retry_after=self._retry_after(),
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        self._waiting += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot came just as the wait ended: pass it on
            else:
                turn.cancel()
                self._waiting -= 1
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"{self._what} stayed at capacity for {self.timeout_s:g}s ({self._held} requests in flight, "
                    f"{self._waiting} waiting; options.queue_timeout_s); retry shortly",
                    retry_after=self._retry_after(),
                ) from None
            raise
        return Slot(self)

    def _release(self, held_s: float | None = None) -> None:
        if held_s is not None:
            self._hold_s += 0.1 * (held_s - self._hold_s)
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():  # hand the slot over: it never looks free to a newcomer
                self._waiting -= 1
                turn.set_result(None)
                return
        self._held -= 1

    def _retry_after(self) -> float:
        """Seconds until the requests ahead have had their turn, roughly."""
        return min(60.0, max(1.0, math.ceil(self._hold_s * (self._waiting + 1) / self.capacity)))


class Slot:
    """One admitted request's hold on a connection; ``release`` once (idempotent)."""

    __slots__ = ("_admission", "_since")

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission
        self._since = time.monotonic()

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(time.monotonic() - self._since)
