"""Per-key limits on the request path: requests and tokens per minute, requests in
flight, and a token or request budget per day or month (UTC calendar periods).

Per-minute limits are token buckets (capacity ``rpm``/``tpm``, refilled continuously at
a ``rpm/60`` per second): a burst up to the limit, then one more request every ``60/rpm``
seconds, the way OpenAI's limits replenish. A request reserves ``max_tokens`` (at most
the bucket's size) on admission; when it ends the reservation is replaced by its real
usage (prompt + completion), so a request that ran long puts the key in debt and the
next ones wait.

The counters are in this gateway's memory, checked without I/O. In a cluster each
gateway also charges what the others report (``absorb``, fed by
``corral.gateway.usage`` every ``EXCHANGE_S``): their requests and tokens come out of
this gateway's buckets, their requests in flight count against ``max_concurrency``, and
their budget counts add to its own. So a key's limits hold across gateways, give or
take what the other gateways admit within one exchange (docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from corral.core.errors import Forbidden, ModelNotFound, RateLimited
from corral.core.keys import Grant, Limits
from corral.core.observe import RequestEvent
from corral.core.types import GenerationRequest
from corral.core.usage import KeyUsage, UsageReport, period_of


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
    # cumulative since this gateway started, what other gateways are told (``report``)
    total_requests: int = 0
    total_tokens: int = 0


def _reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") + "s"


class Limiter:
    def __init__(self) -> None:
        self._keys: dict[str, KeyState] = {}
        self._seen: dict[str, dict[str, tuple[int, int]]] = {}  # gateway -> key -> (requests, tokens) charged
        self._limits: dict[str, Limits] = {}  # key -> its limits, as last admitted
        # what the other gateways reported (``absorb``)
        self._peer_in_flight: dict[str, int] = {}
        self._peer_periods: dict[tuple[str, str], tuple[int, int]] = {}  # (key, period) -> (requests, tokens)
        # charges for keys this gateway has not admitted yet (no buckets, limits unknown):
        # replayed into the buckets when it first does, so a key cannot start full here
        # after spending its minute on another gateway
        self._pending: dict[str, list[tuple[float, int, int]]] = {}  # key -> [(monotonic, requests, tokens)]
        self.started_at = time.time()

    def admit(self, grant: Grant, reserve: int) -> int:
        """Count a request against ``grant``'s limits, or raise ``RateLimited``; returns
        what ``settle`` needs. ``reserve``: the tokens it may use (its max_tokens)."""
        limits = grant.limits
        state = self._state(grant.key_id, limits)
        now, wall = time.monotonic(), time.time()
        if limits.max_concurrency and state.in_flight + self._peer_in_flight.get(grant.key_id, 0) >= limits.max_concurrency:
            raise RateLimited(
                f"too many requests in flight for this key (max_concurrency {limits.max_concurrency})", retry_after=1.0,
                headers={"x-ratelimit-limit-concurrency": str(limits.max_concurrency), "x-ratelimit-remaining-concurrency": "0"},
            )
        if limits.budget_tokens or limits.budget_requests:
            label, left_s = period_of(limits.budget_period, wall)
            if state.period != label:
                state.period, state.period_tokens, state.period_requests = label, 0, 0
            requests, tokens = self._peer_periods.get((grant.key_id, label), (0, 0))
            requests, tokens = requests + state.period_requests, tokens + state.period_tokens
            spent = (limits.budget_tokens and tokens >= limits.budget_tokens) or (
                limits.budget_requests and requests >= limits.budget_requests
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
        state.total_requests += 1
        state.total_tokens += reserve
        return reserve

    def settle(self, key_id: str, reserved: int, used: int) -> None:
        """The request ended having used ``used`` tokens (its reservation was ``reserved``)."""
        state = self._keys[key_id]
        state.in_flight -= 1
        state.period_tokens += used
        state.total_tokens += used - reserved
        if state.tokens is not None:
            state.tokens.level -= used - reserved

    def headers(self, grant: Grant) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*`` headers of an admitted request: each per-minute limit,
        what is left of it now, and the time until its bucket is full again."""
        state = self._keys.get(grant.key_id)
        if state is None:
            return []
        now = time.monotonic()
        out = []
        for what, bucket in (("requests", state.requests), ("tokens", state.tokens)):
            if bucket is not None:
                level = bucket.refill(now)
                out += [
                    (f"x-ratelimit-limit-{what}".encode(), str(int(bucket.capacity)).encode()),
                    (f"x-ratelimit-remaining-{what}".encode(), str(max(0, math.floor(level))).encode()),
                    (f"x-ratelimit-reset-{what}".encode(), _reset(bucket.wait_for(bucket.capacity)).encode()),
                ]
        return out

    def report(self, gateway_id: str) -> UsageReport:
        """This gateway's counts, for the other gateways (see ``corral.core.usage``)."""
        keys = {
            key_id: KeyUsage(s.total_requests, s.total_tokens, s.in_flight, s.period, s.period_requests, s.period_tokens)
            for key_id, s in self._keys.items()
        }
        return UsageReport(gateway_id, self.started_at, time.time(), keys)

    def absorb(self, reports: list[UsageReport]) -> None:
        """The other gateways' latest reports: charge what each used since its last one
        (a gateway seen for the first time: what it used since this one started) to the
        buckets, and take their in-flight and budget counts."""
        now, mono = time.time(), time.monotonic()
        in_flight: dict[str, int] = {}
        periods: dict[tuple[str, str], tuple[int, int]] = {}
        seen: dict[str, dict[str, tuple[int, int]]] = {}
        for report in reports:
            before = self._seen.get(report.gateway_id)
            fresh = not report.stale(now)
            seen[report.gateway_id] = {k: (u.requests, u.tokens) for k, u in report.keys.items()}
            for key_id, usage in report.keys.items():
                if fresh:
                    in_flight[key_id] = in_flight.get(key_id, 0) + usage.in_flight
                if usage.period:
                    r, t = periods.get((key_id, usage.period), (0, 0))
                    periods[(key_id, usage.period)] = (r + usage.period_requests, t + usage.period_tokens)
                if before is None and report.started_at < self.started_at:
                    continue  # counted before this gateway started: not in its minute
                requests, tokens = (before or {}).get(key_id, (0, 0))
                self._charge(key_id, usage.requests - requests, usage.tokens - tokens, mono)
        self._seen, self._peer_in_flight, self._peer_periods = seen, in_flight, periods
        for key_id in list(self._pending):  # older than a minute: a bucket refills fully meanwhile
            kept = [c for c in self._pending[key_id] if mono - c[0] < 60.0]
            if kept:
                self._pending[key_id] = kept
            else:
                del self._pending[key_id]

    def _charge(self, key_id: str, requests: int, tokens: int, now: float) -> None:
        """Another gateway admitted ``requests`` and charged ``tokens`` (negative: it gave
        reserved tokens back) for ``key_id``: the same comes out of this one's buckets."""
        if requests == 0 and tokens == 0:
            return
        limits = self._limits.get(key_id)
        if limits is None:
            self._pending.setdefault(key_id, []).append((now, requests, tokens))
            return
        _debit(self._state(key_id, limits), now, requests, tokens)

    def _state(self, key_id: str, limits: Limits) -> KeyState:
        self._limits[key_id] = limits
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
                state.total_requests, state.total_tokens = old.total_requests, old.total_tokens
            for at, requests, tokens in self._pending.pop(key_id, ()):  # first admitted here: replay the others' use
                if state.requests is not None:
                    state.requests.at = min(state.requests.at, at)
                if state.tokens is not None:
                    state.tokens.at = min(state.tokens.at, at)
                _debit(state, at, requests, tokens)
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


def _debit(state: KeyState, now: float, requests: int, tokens: int) -> None:
    """Take ``requests`` and ``tokens`` out of the buckets at ``now`` (negative: give back,
    never beyond full)."""
    if state.requests is not None and requests:
        state.requests.refill(now)
        state.requests.level = min(state.requests.capacity, state.requests.level - requests)
    if state.tokens is not None and tokens:
        state.tokens.refill(now)
        state.tokens.level = min(state.tokens.capacity, state.tokens.level - tokens)


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
