"""An Instance: one running copy of a model spec inside a worker."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from corral.core.engine import Embedding, Engine, Rerank, StructuredOutput, TextGeneration, TokenCounting, ToolCalling
from corral.core.types import COUNT_TOKENS, RESPONSE_FORMAT, TOOLS
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelSpec


def capabilities(engine: object) -> frozenset[str]:
    caps = set()
    if isinstance(engine, TextGeneration):
        caps.update(("chat", "completion"))
        if isinstance(engine, ToolCalling):
            caps.add(TOOLS)
        if isinstance(engine, StructuredOutput):
            caps.add(RESPONSE_FORMAT)
        if isinstance(engine, TokenCounting):
            caps.add(COUNT_TOKENS)
    if isinstance(engine, Embedding):
        caps.add("embedding")
    if isinstance(engine, Rerank):
        caps.add("rerank")
    return frozenset(caps)


@dataclass(eq=False)
class Instance:
    instance_id: str
    spec: ModelSpec
    engine: Engine
    worker_id: str
    state: InstanceState = InstanceState.STARTING
    started_at: float = field(default_factory=time.time)
    last_error: str | None = None
    managed: bool = False
    load_seconds: float | None = None  # how long the engine took to start
    restarting: bool = False  # READY until its engine loop crashed; back to READY once restarted

    @functools.cached_property
    def capabilities(self) -> frozenset[str]:
        """What the engine serves: checked on every request, computed once."""
        return capabilities(self.engine)

    def set_state(self, state: InstanceState, error: str | None = None) -> None:
        self.state = state
        self.last_error = error

    def record(self, address: str | None) -> InstanceRecord:
        return InstanceRecord(
            instance_id=self.instance_id,
            model=self.spec.name,
            kind=self.spec.kind,
            engine=self.spec.engine,
            worker_id=self.worker_id,
            state=self.state,
            address=address,
            capabilities=self.capabilities if self.state is InstanceState.READY else frozenset(),
            started_at=self.started_at,
            last_error=self.last_error,
            routing=self.spec.routing,
            weight=self.spec.weight,
            max_concurrency=self.spec.max_concurrency,
            managed=self.managed,
            sampling=self.spec.sampling.pairs(),
        )
