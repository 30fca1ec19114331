"""Load-balancing policies over a model's routable instances.

Every policy reads only what the gateway itself tracks (its in-flight count per
instance, the instance's weight, an EWMA of time to first token), so picking never
waits on anything.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence
from typing import TypeVar

from corral.core.balancer import Balancer, Candidate
from corral.core.errors import ConfigError
from corral.core.types import GenerationRequest

T = TypeVar("T", bound=Candidate)


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        return targets[next(self._counter) % len(targets)]


class Weighted:
    """Random, proportional to each instance's weight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        return self._rng.choices(targets, weights=[max(t.weight, 0.0) or 1e-9 for t in targets])[0]


class PowerOfTwo:
    """Two random choices, the less loaded wins: near least-loaded balance without
    herding every gateway onto the same instance."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        if len(targets) == 1:
            return targets[0]
        a, b = self._rng.sample(range(len(targets)), 2)
        return targets[a] if targets[a].in_flight <= targets[b].in_flight else targets[b]


class LeastRequests:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        low = min(t.in_flight for t in targets)
        return self._rng.choice([t for t in targets if t.in_flight == low])


class Latency:
    """Lowest expected wait: EWMA time to first token scaled by queue depth. Instances
    not measured yet are tried first, so every instance gets a measurement."""

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        unmeasured = [t for t in targets if t.latency is None]
        if unmeasured:
            return min(unmeasured, key=lambda t: t.in_flight)
        return min(targets, key=lambda t: (t.latency or 0.0) * (t.in_flight + 1))


def _rendezvous(key: str, targets: Sequence[T]) -> list[T]:
    """Targets ordered by highest-random-weight hashing: adding or removing one instance
    moves only the keys that belonged to it."""

    def score(t: T) -> bytes:
        return hashlib.blake2b(f"{key}\x00{t.instance_id}".encode(), digest_size=8).digest()

    return sorted(targets, key=score, reverse=True)


class Session:
    """The same ``x-session-id`` header (or else the request's ``user``) always lands on
    the same instance while it is routable. Requests without a key: power of two."""

    def __init__(self) -> None:
        self._fallback = PowerOfTwo()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        key = request.session or request.user if request is not None else None
        if not key:
            return self._fallback.pick(targets, request)
        return _rendezvous(key, targets)[0]


class Prefix:
    """Requests sharing a prompt prefix go to the same instance (its KV cache may hold
    the prefix), unless that instance is much busier than the others (a bounded-load
    guard: one hot prefix spills over instead of piling up)."""

    def __init__(self, prefix_chars: int = 256, slack: float = 1.5) -> None:
        self._chars = prefix_chars
        self._slack = slack
        self._fallback = PowerOfTwo()

    def pick(self, targets: Sequence[T], request: GenerationRequest | None = None) -> T:
        if request is None:
            return self._fallback.pick(targets, request)
        mean = sum(t.in_flight for t in targets) / len(targets)
        bound = self._slack * mean + 1
        ordered = _rendezvous(request.prefix(self._chars), targets)
        for target in ordered:
            if target.in_flight <= bound:
                return target
        return ordered[0]


POLICIES: dict[str, type] = {
    "power_of_two": PowerOfTwo,
    "round_robin": RoundRobin,
    "weighted": Weighted,
    "least_requests": LeastRequests,
    "latency": Latency,
    "session": Session,
    "prefix": Prefix,
}


def make_balancer(policy: str) -> Balancer:
    try:
        return POLICIES[policy]()  # type: ignore[no-any-return]
    except KeyError:
        raise ConfigError(f"unknown routing policy {policy!r}; known: {', '.join(POLICIES)}", param="routing") from None
