"""A cluster controller process: the registry authority for workers and gateways that
join through it, and the admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from corral.controller.app import create_controller_app
from corral.core.registry import Registry


class ControllerService:
    def __init__(self, registry: Registry, cluster_token: str | None, admin_token: str | None) -> None:
        self._registry = registry
        self.app = create_controller_app(registry, cluster_token, admin_token, self.lifespan)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self._registry.open()
        try:
            yield
        finally:
            await self._registry.close()
