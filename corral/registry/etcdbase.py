"""What the etcd registry (``corral.registry.etcd``) and the etcd state store
(``corral.state.etcd``) share: talking to etcd's v3 grpc-gateway JSON API with httpx.

Keys and values travel base64-encoded (``b64`` / ``unb64``), int64s as strings, and a
prefix is ranged as ``[prefix, prefix_end(prefix))`` (``prefix_range``).

Endpoints: ``etcd://host:port[,host2:port2,...]`` (``parse_etcd_url``). ``EtcdBase._call``
posts to the endpoint that answered last and fails over to the others, in order, on
connection errors; when none answers it raises ``Unavailable``; an error etcd itself
reports raises ``EtcdError`` (an ``Unavailable`` carrying the gRPC status).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from corral.core.errors import Unavailable


class EtcdError(Unavailable):
    """etcd answered, with an error (``grpc_code`` is the gRPC status)."""

    def __init__(self, grpc_code: int, message: str, code: str = "registry_unavailable") -> None:
        super().__init__(message, code=code)
        self.grpc_code = grpc_code


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"  # all 0xff: to the end of the keyspace


def prefix_range(prefix: str) -> dict[str, str]:
    """The ``key`` / ``range_end`` pair covering every key that starts with ``prefix``."""
    return {"key": b64(prefix), "range_end": b64(prefix_end(prefix.encode()))}


def parse_etcd_url(url: str) -> list[str]:
    """``etcd://h1:p1,h2:p2`` -> ``["http://h1:p1", "http://h2:p2"]`` (port 2379 by default)."""
    scheme, sep, rest = url.partition("://")
    if scheme != "etcd" or not sep:
        raise ValueError(f"not an etcd URL (etcd://host:port[,host:port...]): {url!r}")
    endpoints = []
    for part in rest.split(","):
        hostport = part.strip().rstrip("/")
        if not hostport:
            continue
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport += ":2379"
        endpoints.append(f"http://{hostport}")
    if not endpoints:
        raise ValueError(f"no endpoint in etcd URL {url!r}")
    return endpoints


def answer(path: str, response: httpx.Response, code: str = "registry_unavailable") -> dict[str, Any]:
    """The JSON object etcd answered, or ``EtcdError`` (with ``code``) for an error answer."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EtcdError(-1, f"etcd answered {path} with HTTP {response.status_code} and no JSON object", code)
    error = data.get("error")
    if error is not None or response.is_error:
        if isinstance(error, dict):  # the streaming endpoints' error shape
            grpc_code, message = error.get("grpc_code", -1), error.get("message", error)
        else:
            grpc_code, message = data.get("code", -1), data.get("message") or error
        raise EtcdError(int(grpc_code), f"etcd refused {path}: {message} (HTTP {response.status_code})", code)
    return data


class EtcdBase:
    """An httpx client and the endpoints of one etcd cluster. Subclasses set ``_what``
    (``"etcd registry unreachable ..."``) and ``_error_code`` for their errors."""

    _what = "etcd registry"
    _error_code = "registry_unavailable"

    def __init__(self, url: str) -> None:
        self._endpoints = parse_etcd_url(url)
        self._current = 0  # index of the endpoint that answered last
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the endpoint that answered last, failing over to the others in order."""
        failures = []
        for step in range(len(self._endpoints)):
            index = (self._current + step) % len(self._endpoints)
            endpoint = self._endpoints[index]
            try:
                response = await self._client.post(endpoint + path, json=body)
            except httpx.TransportError as e:
                failures.append(f"{endpoint}: {type(e).__name__}: {e}")
                continue
            self._current = index
            return answer(path, response, self._error_code)
        raise Unavailable(
            f"{self._what} unreachable (no endpoint answered {path}): {'; '.join(failures)}",
            code=self._error_code,
        )
