"""The Balancer interface: picks one target among a model's ready instances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Loaded(Protocol):
    """What a balancer may look at: the gateway's own count of requests in flight."""

    @property
    def in_flight(self) -> int: ...


T = TypeVar("T", bound=Loaded)


class Balancer(Protocol):
    def pick(self, targets: Sequence[T]) -> T:
        """``targets`` is never empty."""
        ...
