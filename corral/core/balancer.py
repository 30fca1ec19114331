"""The Balancer interface: picks one target among a model's routable instances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from corral.core.types import GenerationRequest


class Candidate(Protocol):
    """What a balancer may look at, all kept by the gateway itself (no round trip)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def weight(self) -> float: ...

    @property
    def latency(self) -> float | None:
        """EWMA of time to first token, seconds; None before the first measurement."""
        ...


T = TypeVar("T", bound=Candidate)


class Balancer(Protocol):
    def pick(self, targets: Sequence[T], request: GenerationRequest | None) -> T:
        """``targets`` is never empty; ``request`` is None for embeddings."""
        ...
