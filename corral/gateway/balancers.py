"""Load-balancing policies over a model's ready instances."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import TypeVar

from corral.core.balancer import Balancer, Loaded
from corral.core.errors import ConfigError

T = TypeVar("T", bound=Loaded)


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, targets: Sequence[T]) -> T:
        return targets[next(self._counter) % len(targets)]


class PowerOfTwo:
    """Two random choices, the less loaded wins: near least-loaded balance without
    herding every gateway onto the same instance."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, targets: Sequence[T]) -> T:
        if len(targets) == 1:
            return targets[0]
        a, b = self._rng.sample(range(len(targets)), 2)
        return targets[a] if targets[a].in_flight <= targets[b].in_flight else targets[b]


class LeastRequests:
    def pick(self, targets: Sequence[T]) -> T:
        return min(targets, key=lambda t: t.in_flight)


POLICIES = {"round_robin": RoundRobin, "power_of_two": PowerOfTwo, "least_requests": LeastRequests}


def make_balancer(policy: str) -> Balancer:
    try:
        return POLICIES[policy]()
    except KeyError:
        raise ConfigError(f"unknown routing policy {policy!r}; known: {', '.join(POLICIES)}", param="routing") from None
