"""A real worker app (``create_worker_app``) served by uvicorn on a loopback port, with
one embedding instance ``e-1`` whose engine the test supplies: what the worker server
tests talk to over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from corral.core.spec import ModelKind, ModelSpec
from corral.registry.embedded import EmbeddedRegistry
from corral.worker import worker as worker_module
from corral.worker.server import create_worker_app
from corral.worker.worker import Worker
from tests.integration.servers import free_port


class _Entry:
    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def create(self, spec: ModelSpec) -> Any:
        return self._engine()


@asynccontextmanager
async def serving_worker(monkeypatch: pytest.MonkeyPatch, engine: Callable[[], Any], token: str | None) -> AsyncIterator[int]:
    """The worker's port while it serves; stopped (server, then worker) on exit."""
    monkeypatch.setattr(worker_module, "get_entry", lambda name: _Entry(engine))
    registry = EmbeddedRegistry()
    await registry.open()
    worker = Worker(registry, "w1")
    await worker.start_instance(ModelSpec("e", ModelKind.EMBEDDING, "fake", "x"), "e-1")
    port = free_port()
    config = uvicorn.Config(create_worker_app(worker, token), host="127.0.0.1", port=port, http="httptools",
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task
        await worker.stop()
