"""The gateway's key check: static keys and virtual keys behind one ``KeyResolver``.

``VirtualKeys`` keeps every virtual key in memory, indexed by the hash of its secret, so
checking a request costs one SHA-256 and one dict lookup whatever the number of keys.
It re-reads its ``KeySource`` (the desired-state store, or a controller) every
``POLL_S``: a key created, changed or revoked anywhere takes effect on every gateway
within ``POLL_S`` plus the source's own cache (a controller's 0.2 s). When the source
cannot be read, the last list read stays in force (a controller restart does not lock
every client out) and the failure is logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from corral.core.errors import CorralError, Unauthorized
from corral.core.keys import Grant, KeyResolver, KeySource, Limits, VirtualKey, grant_of, key_hash
from corral.gateway.periodic import every

log = logging.getLogger(__name__)

POLL_S = 0.5


class KeyExpired(Unauthorized):
    code = "expired_api_key"


class KeyRevoked(Unauthorized):
    code = "revoked_api_key"


class VirtualKeys:
    def __init__(self, source: KeySource, default_limits: Limits | None = None, poll_s: float = POLL_S) -> None:
        self._source = source
        self._default = default_limits or Limits()
        self._poll_s = poll_s
        self._by_hash: dict[str, Grant] = {}
        self._last: object = None
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    def __bool__(self) -> bool:
        """Keys are required once one exists; before the first read, too (closed until known).
        A server without static keys is open again when its last virtual key is revoked."""
        return bool(self._by_hash) or not self.loaded.is_set()

    def resolve(self, token: bytes) -> Grant | None:
        grant = self._by_hash.get(key_hash(token))
        if grant is not None and grant.revoked:
            raise KeyRevoked("API key revoked")
        if grant is not None and grant.expires_at is not None and time.time() >= grant.expires_at:
            raise KeyExpired("API key expired")
        return grant

    async def refresh(self) -> None:
        version = await self._source.keys_version()
        if version is not None and version == self._version:
            return  # nothing changed: the list (10,000 rows, maybe) is not read
        keys = await self._source.list_keys()
        self._version = version
        if keys == self._last:
            return
        self._last = keys
        self._by_hash = {k.secret_hash: grant_of(k, self._default) for k in keys}

    def apply(self, key: VirtualKey) -> None:
        """One key created or changed here (standalone): in force now, not at the next poll."""
        self._by_hash[key.secret_hash] = grant_of(key, self._default)

    async def start(self) -> None:
        try:
            await self.refresh()
            self.loaded.set()
        except CorralError as exc:
            log.warning("virtual keys: cannot read the keys yet (%s); retrying every %.1fs", exc.message, self._poll_s)
        self._task = asyncio.create_task(self._follow(), name="virtual-keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        async def step() -> None:
            await self.refresh()
            self.loaded.set()

        await every(
            self._poll_s, step, log, "virtual keys: refresh",
            down=lambda exc: f"virtual keys: cannot refresh ({exc.message}); keeping the {len(self._by_hash)} known",
            back=lambda: f"virtual keys: refreshed again ({len(self._by_hash)} keys)",
        )


class KeyChain:
    """The first resolver that knows a key wins; keys are required if any resolver has some."""

    def __init__(self, resolvers: Sequence[KeyResolver]) -> None:
        self._resolvers = tuple(resolvers)

    def __bool__(self) -> bool:
        return any(self._resolvers)

    def resolve(self, token: bytes) -> Grant | None:
        for resolver in self._resolvers:
            grant = resolver.resolve(token)
            if grant is not None:
                return grant
        return None
