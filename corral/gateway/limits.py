"""Per-key limits on the request path: requests and tokens per minute, requests in
flight, and a token or request budget per day or month (UTC calendar periods).

Per-minute limits are token buckets (capacity ``rpm``/``tpm``, refilled continuously at
a ``rpm/60`` per second): a burst up to the limit, then one more request every ``60/rpm``
seconds, the way OpenAI's limits replenish. A request reserves ``max_tokens`` (at most
the bucket's size) on admission; when it ends the reservation is replaced by its real
usage (prompt + completion), so a request that ran long puts the key in debt and the
next ones wait. Everything is in this gateway's memory: with several gateways each
holds its own counters (see docs/security.md for how exact that is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime, timezone

from corral.core.errors import Forbidden, ModelNotFound, RateLimited
from corral.core.keys import Grant, Limits
from corral.core.observe import RequestEvent
from corral.core.types import GenerationRequest


@dataclass
class Bucket:
    capacity: float
    level: float
    at: float  # monotonic seconds of ``level``

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60.0)
        self.at = now
        return self.level

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount``."""
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)


@dataclass
class KeyState:
    requests: Bucket | None = None
    tokens: Bucket | None = None
    in_flight: int = 0
    period: str = ""  # the budget period's label (2026-12-07, 2026-12)
    period_tokens: int = 0
    period_requests: int = 0
    capacities: tuple[int, int] = field(default=(0, 0))


def period_of(period: str | None, now: float) -> tuple[str, float]:
    """The budget period's label at ``now`` (unix seconds) and the seconds until it ends."""
    day = datetime.fromtimestamp(now, timezone.utc)
    if period == "month":
        nxt = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=timezone.utc)
        return day.strftime("%Y-%m"), nxt.timestamp() - now
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    return day.strftime("%Y-%m-%d"), start + 86400 - now


def _reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") + "s"


class Limiter:
    def __init__(self) -> None:
        self._keys: dict[str, KeyState] = {}

    def admit(self, grant: Grant, reserve: int) -> int:
        """Count a request against ``grant``'s limits, or raise ``RateLimited``; returns
        what ``settle`` needs. ``reserve``: the tokens it may use (its max_tokens)."""
        limits = grant.limits
        state = self._state(grant.key_id, limits)
        now, wall = time.monotonic(), time.time()
        if limits.max_concurrency and state.in_flight >= limits.max_concurrency:
            raise RateLimited(
                f"too many requests in flight for this key (max_concurrency {limits.max_concurrency})", retry_after=1.0,
                headers={"x-ratelimit-limit-concurrency": str(limits.max_concurrency), "x-ratelimit-remaining-concurrency": "0"},
            )
        if limits.budget_tokens or limits.budget_requests:
            label, left_s = period_of(limits.budget_period, wall)
            if state.period != label:
                state.period, state.period_tokens, state.period_requests = label, 0, 0
            spent = (limits.budget_tokens and state.period_tokens >= limits.budget_tokens) or (
                limits.budget_requests and state.period_requests >= limits.budget_requests
            )
            if spent:
                raise RateLimited(
                    f"this key's {limits.budget_period or 'day'} budget is spent", retry_after=left_s,
                    headers={"x-ratelimit-reset-budget": _reset(left_s)},
                )
        reserve = min(reserve, limits.tpm) if limits.tpm else reserve
        if state.requests is not None and state.requests.refill(now) < 1:
            self._refuse("requests", limits.rpm, state.requests, 1, state)
        if state.tokens is not None and (state.tokens.refill(now) <= 0 or state.tokens.level < reserve):
            self._refuse("tokens", limits.tpm, state.tokens, max(reserve, 1), state)
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= reserve
        state.in_flight += 1
        state.period_requests += 1
        return reserve

    def settle(self, key_id: str, reserved: int, used: int) -> None:
        """The request ended having used ``used`` tokens (its reservation was ``reserved``)."""
        state = self._keys[key_id]
        state.in_flight -= 1
        state.period_tokens += used
        if state.tokens is not None:
            state.tokens.level -= used - reserved

    def _state(self, key_id: str, limits: Limits) -> KeyState:
        state = self._keys.get(key_id)
        if state is None or state.capacities != (limits.rpm, limits.tpm):  # new, or its limits changed
            now = time.monotonic()
            old = state
            state = KeyState(
                requests=Bucket(limits.rpm, limits.rpm, now) if limits.rpm else None,
                tokens=Bucket(limits.tpm, limits.tpm, now) if limits.tpm else None,
                capacities=(limits.rpm, limits.tpm),
            )
            if old is not None:
                state.in_flight, state.period = old.in_flight, old.period
                state.period_tokens, state.period_requests = old.period_tokens, old.period_requests
            self._keys[key_id] = state
        return state

    @staticmethod
    def _refuse(what: str, limit: int, bucket: Bucket, wanted: float, state: KeyState) -> None:
        wait = bucket.wait_for(wanted)
        full = bucket.wait_for(bucket.capacity)
        headers = {
            f"x-ratelimit-limit-{what}": str(limit),
            f"x-ratelimit-remaining-{what}": str(max(0, math.floor(bucket.level))),
            f"x-ratelimit-reset-{what}": _reset(full),
        }
        raise RateLimited(f"rate limit reached for {what} per minute ({limit}); retry in {math.ceil(wait)}s",
                          retry_after=wait, headers=headers)


def admit(
    limiter: Limiter, models: Callable[[], Container[str]], model: str, request: GenerationRequest | None,
    event: RequestEvent,
) -> None:
    """The pipeline's check of a request's key, once the model is known: the key may use
    ``model`` (else 403, or 404 when ``models()`` has no such model) and is within its
    limits (else 429). Once per request, however many prompts or attempts: the request's
    ``settle`` (set here) gives its slot and tokens back when it ends."""
    grant = event.grant
    if grant is None or event.settle is not None:
        return
    if not grant.allows(model):
        if model not in models():
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        raise Forbidden(f"this API key may not use the model {model!r}", param="model")
    if not grant.limits.any():
        return
    reserve = (request.sampling.max_tokens or 0) if request is not None else 0
    reserved = limiter.admit(grant, reserve)
    key_id = grant.key_id
    event.settle = lambda used: limiter.settle(key_id, reserved, used)
