"""The Controller holds the desired state and makes workers match it.

Standalone mode has one in-process worker; the controller starts the declared replicas
of every spec on it, all models loading concurrently.
"""

from __future__ import annotations

import asyncio
import logging

from corral.core.errors import CorralError
from corral.core.spec import ModelSpec
from corral.worker.worker import Worker

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._specs: dict[str, ModelSpec] = {}

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    async def deploy(self, specs: list[ModelSpec]) -> list[CorralError]:
        """Start every replica of every spec; returns the errors of those that failed."""
        for spec in specs:
            self._specs[spec.name] = spec
        jobs = [self._worker.start_instance(spec) for spec in specs for _ in range(spec.replicas)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors: list[CorralError] = []
        for result in results:
            if isinstance(result, CorralError):
                errors.append(result)
            elif isinstance(result, BaseException):
                errors.append(CorralError(f"{type(result).__name__}: {result}"))
        return errors
