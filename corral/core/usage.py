"""What gateways tell each other about the virtual keys' use, so that a key's limits hold
across every gateway of a cluster and its budgets survive a gateway's restart.

Each gateway publishes, every ``EXCHANGE_S``, one ``UsageReport``: for each key with
limits it has seen, its cumulative counts since it started (requests admitted, tokens
charged), the requests it has in flight, and the budget period's counts. It reads the
other gateways' reports in the same exchange and charges their increments to its own
counters (``corral.gateway.usage``). Cumulative counts, not deltas, make a lost or
repeated exchange harmless: the next one carries the difference.

Reports live in the desired-state store (``UsageStore``), one per gateway, replaced at
each exchange; a controller relays them for gateways that follow it
(``PUT /cluster/v1/gateways/{id}/usage``). A report stops counting for concurrency once
it is ``STALE_S`` old (its gateway is gone, and its requests with it) but keeps counting
for budgets until its periods are over, then any gateway deletes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

EXCHANGE_S = 0.5  # how often a gateway publishes and reads: the limits' staleness bound
STALE_S = 5.0  # a report this old belongs to a gateway that is gone (ten missed exchanges)


@dataclass(frozen=True)
class KeyUsage:
    requests: int = 0  # admitted since the gateway started
    tokens: int = 0  # charged since the gateway started: reservations, then the real usage
    in_flight: int = 0
    period: str = ""  # the budget period's label (2026-12-08, 2026-12), "" without a budget
    period_requests: int = 0
    period_tokens: int = 0


@dataclass(frozen=True)
class UsageReport:
    gateway_id: str
    started_at: float  # unix seconds: when the gateway started counting
    at: float  # unix seconds: when the report was made
    keys: dict[str, KeyUsage] = field(default_factory=dict)

    def stale(self, now: float) -> bool:
        return now - self.at > STALE_S

    def expired(self, now: float) -> bool:
        """Stale, and none of its budget periods is current: it counts for nothing."""
        current = current_periods(now)
        return self.stale(now) and not any(u.period in current for u in self.keys.values())


class UsageStore(Protocol):
    """Where the reports are kept: the desired-state stores implement it."""

    async def put_usage(self, report: UsageReport) -> None:
        """Create or replace ``report.gateway_id``'s report."""
        ...

    async def list_usage(self) -> list[UsageReport]: ...

    async def delete_usage(self, gateway_ids: list[str]) -> None:
        """Removing a missing id is not an error."""
        ...


class UsageExchange(Protocol):
    """A gateway's side: publish its report, get every other gateway's in return."""

    async def exchange_usage(self, report: UsageReport) -> list[UsageReport]: ...


class StoreExchange:
    """``UsageExchange`` over a ``UsageStore``: a put, a list, and the expired reports
    deleted on the way (by whichever gateway or controller sees them first)."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store

    async def exchange_usage(self, report: UsageReport) -> list[UsageReport]:
        await self._store.put_usage(report)
        now = time.time()
        reports = await self._store.list_usage()
        expired = [r.gateway_id for r in reports if r.expired(now)]
        if expired:
            await self._store.delete_usage(expired)
        return [r for r in reports if r.gateway_id != report.gateway_id and r.gateway_id not in expired]


def period_of(period: str | None, now: float) -> tuple[str, float]:
    """The label of the budget period (``"day"``, the default, or ``"month"``, UTC
    calendar periods) at ``now`` (unix seconds), and the seconds until it ends."""
    day = datetime.fromtimestamp(now, timezone.utc)
    if period == "month":
        nxt = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=timezone.utc)
        return day.strftime("%Y-%m"), nxt.timestamp() - now
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    return day.strftime("%Y-%m-%d"), start + 86400 - now


def current_periods(now: float) -> tuple[str, str]:
    """The labels of the day and the month at ``now``."""
    return period_of("day", now)[0], period_of("month", now)[0]


def report_to_json(report: UsageReport) -> str:
    keys = {
        k: [u.requests, u.tokens, u.in_flight, u.period, u.period_requests, u.period_tokens]
        for k, u in report.keys.items()
    }
    return json.dumps({"gateway_id": report.gateway_id, "started_at": report.started_at, "at": report.at, "keys": keys},
                      separators=(",", ":"))


def report_from_json(text: str | bytes) -> UsageReport:
    """The report in ``text``; ``ValueError`` (or ``KeyError``/``TypeError``) when malformed."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a usage report is a JSON object")
    keys = {}
    for key_id, row in dict(data.get("keys") or {}).items():
        requests, tokens, in_flight, period, period_requests, period_tokens = row
        keys[str(key_id)] = KeyUsage(int(requests), int(tokens), int(in_flight), str(period), int(period_requests),
                                     int(period_tokens))
    return UsageReport(str(data["gateway_id"]), float(data["started_at"]), float(data["at"]), keys)
