"""Virtual API keys on the control plane: create, change, revoke, kept in the desired-state
store (``StateStore.put_key``), each change an audit event (which never holds a secret).

Gateways read the keys from the store directly or through a controller's
``GET /cluster/v1/keys`` (``KeyList.etag`` lets an unchanged list cost a 304), so this
is the one writer and the request path never waits on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

from corral.core.errors import Conflict, NotFound
from corral.core.keys import Limits, VirtualKey, key_hash, key_to_json, new_key_id, new_secret
from corral.core.state import AuditEvent, StateStore

CACHE_S = 0.2  # a controller re-reads the store at most this often for the gateways' polls


@dataclasses.dataclass(frozen=True)
class KeyList:
    keys: tuple[VirtualKey, ...]
    etag: str  # changes whenever any key does


class KeyManager:
    def __init__(self, store: StateStore, on_change: Callable[[VirtualKey], None] | None = None) -> None:
        """``on_change``: called with each key changed (standalone: the in-process gateway
        applies it at once instead of at its next poll)."""
        self._store = store
        self._on_change = on_change
        self._cached: KeyList | None = None
        self._cached_at = 0.0

    async def create(
        self, name: str, owner: str | None, models: tuple[str, ...], expires_at: float | None, limits: Limits, actor: str
    ) -> tuple[VirtualKey, str]:
        """The new key and its secret (returned this once, stored only as its hash)."""
        secret = new_secret()
        key = VirtualKey(
            id=new_key_id(), name=name, secret_hash=key_hash(secret), created_at=time.time(), owner=owner,
            models=models, expires_at=expires_at, limits=limits, hint=secret[-4:],
        )
        await self._store.put_key(key)
        await self._audit(actor, "key_create", key, {"name": name, "owner": owner})
        return key, secret

    async def list(self) -> KeyList:
        now = time.monotonic()
        if self._cached is None or now - self._cached_at >= CACHE_S:
            keys = tuple(await self._store.list_keys())
            digest = hashlib.sha256("\n".join(key_to_json(k) for k in keys).encode()).hexdigest()[:32]
            self._cached, self._cached_at = KeyList(keys, f'"{digest}"'), now
        return self._cached

    async def get(self, key_id: str) -> VirtualKey:
        for key in await self._store.list_keys():
            if key.id == key_id:
                return key
        raise NotFound(f"no key with id {key_id!r}", param="id", code="key_not_found")

    async def update(self, key_id: str, changes: dict[str, object], limits: dict[str, object], actor: str) -> VirtualKey:
        """``changes``: key fields (name, owner, models, expires_at); ``limits``: Limits fields."""
        key = await self.get(key_id)
        if key.revoked_at is not None:
            raise Conflict(f"key {key_id!r} is revoked: create a new one", code="already_revoked")
        new = dataclasses.replace(key, **changes, limits=dataclasses.replace(key.limits, **limits))  # type: ignore[arg-type]
        await self._store.put_key(new)
        self._cached = None
        await self._audit(actor, "key_update", new, {"changed": sorted([*changes, *limits])})
        return new

    async def revoke(self, key_id: str, actor: str) -> None:
        """Marks the key revoked (kept, so a server never falls back to keyless)."""
        key = await self.get(key_id)
        if key.revoked_at is not None:
            raise Conflict(f"key {key_id!r} is already revoked", code="already_revoked")
        key = dataclasses.replace(key, revoked_at=time.time())
        await self._store.put_key(key)
        await self._audit(actor, "key_revoke", key, {"name": key.name})

    async def _audit(self, actor: str, action: str, key: VirtualKey, detail: dict[str, object]) -> None:
        self._cached = None
        await self._store.append_audit(AuditEvent(time.time(), actor, action, key.id, detail))
        if self._on_change is not None:
            self._on_change(key)
