"""Every error a worker answers is OpenAI's error JSON from the one renderer
(``corral.web.errors``), unexpected exceptions included (logged with their traceback,
none on the wire), and a gateway rebuilds the same error from it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from corral.cluster.wire import encode_embedding
from corral.core.errors import EngineError, Overloaded
from corral.core.types import EmbeddingRequest, EmbeddingResult, EngineLoad
from corral.gateway.remote import RemoteInstance
from corral.net.pool import PoolSettings, make_session
from tests.unit.worker.serving import serving_worker


class FailingEmbedder:
    """An engine with a bug: ``embed`` raises whatever its input names."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def load(self) -> EngineLoad:
        return EngineLoad()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if request.inputs[0] == "busy":
            raise Overloaded("full", retry_after=7.0)
        raise ZeroDivisionError("secret internal detail")


@pytest.fixture
async def worker_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with serving_worker(monkeypatch, FailingEmbedder, None) as port:
        yield f"http://127.0.0.1:{port}"


def assert_error_json(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    return err


async def test_every_worker_error_is_json(worker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with httpx.AsyncClient(base_url=worker_url, timeout=10) as http:
        with caplog.at_level(logging.ERROR, logger="corral.web.errors"):
            resp = await http.post("/internal/v1/instances/e-1/embed", content=encode_embedding(EmbeddingRequest("r", "e", ("x",))))
        err = assert_error_json(resp, 500, "internal_error")
        assert "secret internal detail" not in resp.text and "Traceback" not in resp.text
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
        # answered, not re-raised: the server neither logs it again nor drops the connection
        assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)
        assert_error_json(await http.post("/internal/v1/instances/nope/embed", content=b"{}"), 503, "model_unavailable")
        assert_error_json(await http.get("/internal/v1/nothing"), 404)
        assert_error_json(await http.get("/internal/v1/instances"), 405)
        assert_error_json(await http.post("/internal/v1/instances", content=b"{not json"), 400)
        assert_error_json(await http.delete("/internal/v1/instances/e-1?drain_timeout=soon"), 400)
        assert err["type"] == "server_error"


async def test_a_gateway_rebuilds_the_workers_error(worker_url: str) -> None:
    session = make_session(PoolSettings())
    try:
        remote = RemoteInstance(session, worker_url, "e-1")
        with pytest.raises(EngineError):
            await remote.embed(EmbeddingRequest("r", "e", ("x",)))
        with pytest.raises(Overloaded) as caught:
            await remote.embed(EmbeddingRequest("r", "e", ("busy",)))
        assert caught.value.retry_after == 7.0
    finally:
        await session.close()
