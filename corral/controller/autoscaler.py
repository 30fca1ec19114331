"""The autoscaling policy of one model: demand samples in, replica decisions out.

Pure logic with an injected clock, so it is tested without servers. Every tick (about a
second) the controller hands each autoscaled model's ``ModelScaler`` a ``Signal``: the
requests in flight and queued at its engines plus those waiting in gateways, its ready
instances, and (optionally) the gateways' time-to-first-token p90. The scaler keeps the
last samples of *needed* replicas, ``ceil(demand / target_in_flight)``, and decides:

- **wake**: at zero replicas, any demand (or a gateway holding a request) starts
  ``max(1, needed)`` at once, with no delay: the request is waiting for it;
- **up**: when every sample of the last ``upscale_delay_s`` needed more than the current
  count, scale in one step to the least of those (what demand needed throughout);
- **ttft**: with ``target_ttft_p90_s``, a p90 above it (with demand) for
  ``upscale_delay_s`` adds one instance; latency measured before a change says nothing
  about the new count, so TTFT is ignored for ``TTFT_SETTLE_S`` after each change;
- **down**: when every sample of the last ``downscale_delay_s`` needed fewer, remove one
  instance (the manager drains it), never below ``max(1, min_replicas)``;
- **idle**: from one to zero (``min_replicas`` = 0) after ``downscale_to_zero_delay_s``
  with no demand at all;
- **bounds**: a count outside ``min..max`` (a policy just changed) is moved inside.

After each decision the samples start again, so the next one waits its full delay.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from corral.core.spec import AutoscalePolicy

TTFT_SETTLE_S = 30.0


@dataclass(frozen=True)
class Signal:
    demand: float  # requests running + queued at the model's engines + waiting in gateways
    ready: int
    ttft_p90_s: float | None = None
    cold_waiting: int = 0  # requests a gateway holds because the model has no ready instance


@dataclass(frozen=True)
class Decision:
    old: int
    new: int
    reason: str  # wake, up, ttft, down, idle, bounds
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.reason}: {self.old} -> {self.new}" + (f" ({facts})" if facts else "")


@dataclass(frozen=True)
class _Sample:
    at: float
    needed: int
    demand: float
    slow: bool  # TTFT p90 above its target, with demand


class ModelScaler:
    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._samples: deque[_Sample] = deque()
        self._changed_at = -math.inf
        self.last: Decision | None = None
        self.last_at: float | None = None

    def set_policy(self, policy: AutoscalePolicy) -> None:
        if policy != self.policy:
            self.policy = policy
            self._restart()

    def _restart(self, keep_newest: bool = False) -> None:
        """Start the samples again; ``keep_newest``: from the newest one, which still says
        what demand was when a decision was taken (``needed`` does not depend on the count)."""
        newest = self._samples[-1] if keep_newest and self._samples else None
        self._samples.clear()
        if newest is not None:
            self._samples.append(newest)

    def needed(self, demand: float) -> int:
        return math.ceil(demand / self.policy.target_in_flight - 1e-9) if demand > 0 else 0

    def _window(self, now: float, seconds: float) -> list[_Sample] | None:
        """The samples covering the last ``seconds``: from the newest one taken at or
        before ``now - seconds`` (what held at the window's start) to now; None while
        sampling began later than that, so a decision waits its full delay."""
        boundary = now - seconds
        start = None
        for i, sample in enumerate(self._samples):  # oldest first
            if sample.at > boundary:
                break
            start = i
        return None if start is None else list(itertools.islice(self._samples, start, None))

    def decide(self, now: float, current: int, signal: Signal) -> Decision | None:
        p = self.policy
        slow = (
            p.target_ttft_p90_s is not None
            and signal.ttft_p90_s is not None
            and signal.demand > 0
            and signal.ttft_p90_s > p.target_ttft_p90_s
            and now - self._changed_at >= TTFT_SETTLE_S
        )
        needed = self.needed(signal.demand)
        self._samples.append(_Sample(now, needed, signal.demand, slow))
        horizon = max(p.upscale_delay_s, p.downscale_delay_s, p.downscale_to_zero_delay_s)
        # keep the newest sample older than the longest window: it is that window's start
        while len(self._samples) > 1 and self._samples[1].at <= now - horizon:
            self._samples.popleft()
        decision = self._choose(now, current, signal, needed)
        if decision is not None:
            self._changed_at = now
            self._restart(keep_newest=True)
            self.last, self.last_at = decision, now
        return decision

    def _choose(self, now: float, current: int, signal: Signal, needed: int) -> Decision | None:
        p = self.policy
        floor, ceiling = p.min_replicas, p.max_replicas
        if current < floor or current > ceiling:
            return Decision(current, min(max(current, floor), ceiling), "bounds", {"min": floor, "max": ceiling})
        if current == 0:
            if signal.demand > 0 or signal.cold_waiting:
                new = min(ceiling, max(1, needed))
                return Decision(0, new, "wake", {"demand": signal.demand, "waiting": signal.cold_waiting})
            return None
        up = self._window(now, p.upscale_delay_s)
        if up:
            least = min(s.needed for s in up)
            if least > current and current < ceiling:
                return Decision(current, min(ceiling, least), "up", self._facts(up))
            if all(s.slow for s in up) and current < ceiling:
                return Decision(current, current + 1, "ttft", {"ttft_p90_s": signal.ttft_p90_s, "target": p.target_ttft_p90_s})
        if current > max(1, floor):
            down = self._window(now, p.downscale_delay_s)
            if down and max(s.needed for s in down) < current and not any(s.slow for s in down):
                return Decision(current, current - 1, "down", self._facts(down))
        if current == 1 and floor == 0:
            idle = self._window(now, p.downscale_to_zero_delay_s)
            if idle and all(s.demand == 0 for s in idle) and not signal.cold_waiting:
                return Decision(1, 0, "idle", {"idle_s": p.downscale_to_zero_delay_s})
        return None

    def _facts(self, window: list[_Sample]) -> dict[str, Any]:
        demands = [s.demand for s in window]
        return {
            "demand_mean": round(sum(demands) / len(demands), 2),
            "demand_max": max(demands),
            "target_in_flight": self.policy.target_in_flight,
            "window_s": round(window[-1].at - window[0].at, 1),
        }
