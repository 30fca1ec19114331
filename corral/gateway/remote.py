"""The gateway's client for an instance on another worker: implements the engine
capability protocols over the internal worker protocol (``corral.cluster.wire``).

One pooled keep-alive aiohttp session per gateway (``corral.net.pool``) is shared by
every remote instance; a connection failure before the response starts raises ``Unreachable`` so the
pipeline can retry on another instance; closing the stream early closes the connection,
which the worker sees as a disconnect and cancels the engine's work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from corral.cluster import wire
from corral.net.pool import Refused, ResponseLines, TransportError, open_stream
from corral.core.errors import CorralError, InstanceLost, Overloaded, Unreachable
from corral.core.tls import tls_failure
from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineLoad,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    RerankRequest,
    RerankResult,
    Usage,
)

_JSON = {"content-type": "application/json"}


def _why(exc: BaseException) -> str:
    """A transport failure in a word, or in words for a TLS one (an untrusted worker certificate)."""
    return tls_failure(exc) or type(exc).__name__


class RemoteInstance:
    def __init__(
        self, session: aiohttp.ClientSession, address: str, instance_id: str, silence_s: float | None = None
    ) -> None:
        self._session = session
        self._silence_s = silence_s  # longest gap in a started stream (workers send keep-alives)
        self._base = f"{address.rstrip('/')}/internal/v1/instances/{instance_id}"
        self.address = address

    async def start(self) -> None:
        """Nothing to load: the worker owns the engine."""

    async def stop(self) -> None:
        """The shared session is closed by the gateway."""

    def load(self) -> EngineLoad:
        return EngineLoad()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        try:
            lines = await open_stream(
                self._session, f"{self._base}/generate", wire.encode_generation(request), _JSON, self._silence_s
            )
        except TransportError as exc:
            raise Unreachable(f"instance at {self.address} is unreachable ({_why(exc)})") from None
        except Refused as refused:
            raise _error(refused.status, refused.body, refused.headers) from None
        items = _Items(lines, self.address)
        try:
            # the worker answers at once; its engine's admission (or refusal: Overloaded,
            # Unavailable... raised here, so the pipeline can try another instance) is the
            # first line, keep-alives aside
            await items.first()
        except InstanceLost as exc:  # nothing reached the client yet: as if never reached
            await items.aclose()
            raise Unreachable(exc.message) from None
        except BaseException:
            await items.aclose()
            raise
        return items

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        data = await self._unary("embed", wire.encode_embedding(request))
        return EmbeddingResult(vectors=data["v"], usage=Usage(data["u"][0], 0))

    async def rerank(self, request: RerankRequest) -> RerankResult:
        data = await self._unary("rerank", wire.encode_rerank(request))
        return RerankResult(scores=data["s"], usage=Usage(data["u"][0], 0))

    async def count_tokens(self, request: GenerationRequest) -> int:
        data = await self._unary("count_tokens", wire.encode_generation(request))
        return int(data["n"])

    async def _unary(self, action: str, body: bytes) -> Any:
        try:
            # one JSON answer, no keep-alives: no bound on silence (an embedding batch may be long)
            async with self._session.post(f"{self._base}/{action}", data=body, headers=_JSON) as resp:
                content = await resp.read()
                status, headers = resp.status, resp.headers
        except TransportError as exc:
            raise Unreachable(f"instance at {self.address} is unreachable ({_why(exc)})") from None
        if status != 200:
            raise _error(status, content, headers)
        return orjson.loads(content)


class _Items:
    """The worker's NDJSON lines as generation items; closing it (started or not) ends
    the exchange, which the worker takes as the client leaving when it is not done."""

    __slots__ = ("_lines", "_address", "_ended", "_first")

    def __init__(self, lines: ResponseLines, address: str) -> None:
        self._lines = lines
        self._address = address
        self._ended = False
        self._first: GenerationChunk | GenerationEnd | None = None

    def __aiter__(self) -> _Items:
        return self

    async def first(self) -> None:
        """Read the first item now (raising the worker's refusal); iteration starts with it."""
        self._first = await self._next()

    async def __anext__(self) -> GenerationChunk | GenerationEnd:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._next()

    async def _next(self) -> GenerationChunk | GenerationEnd:
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                if self._ended:
                    raise
                raise InstanceLost(f"the instance at {self._address} ended the stream early") from None
            except TransportError as exc:
                self._lines.aclose_now()
                raise InstanceLost(f"lost the instance at {self._address} mid-stream ({type(exc).__name__})") from None
            if not line:
                continue
            try:
                item = wire.decode_item(line)
            except CorralError:
                self._lines.aclose_now()
                raise
            if isinstance(item, GenerationEnd):
                self._ended = True
            return item

    async def aclose(self) -> None:
        await self._lines.aclose()


def _error(status: int, body: bytes, headers: Mapping[str, str]) -> CorralError:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = wire.error_from_wire(status, parsed)
    if isinstance(err, Overloaded) and "retry-after" in headers:  # an HTTP error carries it in its header
        try:
            err.retry_after = max(err.retry_after, float(headers["retry-after"]))
        except ValueError:
            pass
    if status in (401, 403):  # a token mismatch between gateway and worker is the operator's problem
        return Unreachable(f"worker refused the gateway's cluster token (HTTP {status})")
    return err
