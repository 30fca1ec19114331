"""The gateway's client for an instance on another worker: implements the engine
capability protocols over the internal worker protocol (``corral.cluster.wire``).

One pooled keep-alive ``httpx.AsyncClient`` per gateway is shared by every remote
instance; a connection failure before the response starts raises ``Unreachable`` so the
pipeline can retry on another instance; closing the stream early closes the connection,
which the worker sees as a disconnect and cancels the engine's work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from corral.cluster import wire
from corral.web.client import make_http_client
from corral.core.errors import CorralError, InstanceLost, Unreachable
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


class RemoteInstance:
    def __init__(self, http: httpx.AsyncClient, address: str, instance_id: str) -> None:
        self._http = http
        self._base = f"{address.rstrip('/')}/internal/v1/instances/{instance_id}"
        self.address = address

    async def start(self) -> None:
        """Nothing to load: the worker owns the engine."""

    async def stop(self) -> None:
        """The shared HTTP client is closed by the gateway."""

    def load(self) -> EngineLoad:
        return EngineLoad()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        req = self._http.build_request(
            "POST", f"{self._base}/generate", content=wire.encode_generation(request),
            headers={"content-type": "application/json"},
        )
        try:
            resp = await self._http.send(req, stream=True)
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(f"instance at {self.address} is unreachable ({type(exc).__name__})") from None
        if resp.status_code != 200:
            body = await resp.aread()
            await resp.aclose()
            raise _error(resp.status_code, body)
        return self._stream(resp)

    async def _stream(self, resp: httpx.Response) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        ended = False
        try:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                item = wire.decode_item(line.encode())
                ended = isinstance(item, GenerationEnd)
                yield item
        except (httpx.TransportError, OSError) as exc:
            raise InstanceLost(f"lost the instance at {self.address} mid-stream ({type(exc).__name__})") from None
        finally:
            await resp.aclose()
        if not ended:
            raise InstanceLost(f"the instance at {self.address} ended the stream early")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        data = await self._unary("embed", wire.encode_embedding(request))
        return EmbeddingResult(vectors=data["v"], usage=Usage(data["u"][0], 0))

    async def rerank(self, request: RerankRequest) -> RerankResult:
        data = await self._unary("rerank", wire.encode_rerank(request))
        return RerankResult(scores=data["s"], usage=Usage(data["u"][0], 0))

    async def _unary(self, action: str, body: bytes) -> Any:
        try:
            resp = await self._http.post(
                f"{self._base}/{action}", content=body, headers={"content-type": "application/json"}
            )
        except (httpx.TransportError, OSError) as exc:
            raise Unreachable(f"instance at {self.address} is unreachable ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise _error(resp.status_code, resp.content)
        return orjson.loads(resp.content)


def _error(status: int, body: bytes) -> CorralError:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = wire.error_from_wire(status, parsed)
    if status in (401, 403):  # a token mismatch between gateway and worker is the operator's problem
        return Unreachable(f"worker refused the gateway's cluster token (HTTP {status})")
    return err
