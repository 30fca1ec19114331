"""Virtual API keys: what the controller stores about each one, and what a gateway needs
to check a request against it.

A key's secret (``sk-corral-`` + 43 url-safe characters, 256 random bits) is shown once,
at creation, and stored only as ``key_hash(secret)``: an unkeyed SHA-256. A slow or
keyed hash protects guessable secrets (passwords); against 256 random bits a single
SHA-256 is already beyond brute force, and a keyed hash would need one more secret
shared by every controller and gateway. The hash doubles as the lookup key, so the
request path does one hash and one dict lookup whatever the number of keys (and a
lookup by hash tells a timing observer nothing about the secret).

A request is attributed to its key by the key's ``id`` (``key_`` + 12 hex digits,
public: logs, records, metrics carry it), never by the secret or its hash.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

SECRET_PREFIX = "sk-corral-"
Period = Literal["day", "month"]


@dataclass(frozen=True)
class Limits:
    """A key's limits; 0 (or None for the period) means no limit of that kind."""

    rpm: int = 0  # requests per minute
    tpm: int = 0  # prompt + completion tokens per minute
    max_concurrency: int = 0  # requests in flight at once
    budget_tokens: int = 0  # tokens per budget period
    budget_requests: int = 0  # requests per budget period
    budget_period: Period | None = None

    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_concurrency or self.budget_tokens or self.budget_requests)

    def over(self, default: Limits) -> Limits:
        """These limits, with ``default``'s where these set none."""
        return Limits(
            rpm=self.rpm or default.rpm, tpm=self.tpm or default.tpm,
            max_concurrency=self.max_concurrency or default.max_concurrency,
            budget_tokens=self.budget_tokens or default.budget_tokens,
            budget_requests=self.budget_requests or default.budget_requests,
            budget_period=self.budget_period or default.budget_period,
        )


@dataclass(frozen=True)
class VirtualKey:
    """A stored key: everything but the secret (``secret_hash`` is ``key_hash(secret)``)."""

    id: str
    name: str
    secret_hash: str
    created_at: float
    owner: str | None = None
    models: tuple[str, ...] = ()  # names or glob patterns; empty: every model
    expires_at: float | None = None  # unix seconds
    limits: Limits = field(default_factory=Limits)
    hint: str = ""  # the secret's last 4 characters, so an owner can tell keys apart
    # revoked keys stay stored (refused, listed, audited): a server whose last key was
    # revoked must not fall back to "no keys configured, everyone may enter"
    revoked_at: float | None = None


@dataclass(frozen=True)
class Grant:
    """Who a request's key says the caller is, and what it may do; ``key_id`` is what
    records and metrics carry. Static keys get a grant with no models and no limits."""

    key_id: str
    name: str | None = None
    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    expires_at: float | None = None
    revoked: bool = False

    def allows(self, model: str) -> bool:
        return not self.models or any(model == p or fnmatch.fnmatchcase(model, p) for p in self.models)


class KeyResolver(Protocol):
    """Turns a presented key into a grant; ``bool()`` says whether any key is required."""

    def __bool__(self) -> bool: ...

    def resolve(self, token: bytes) -> Grant | None: ...


class KeySource(Protocol):
    """Where a gateway reads the virtual keys from: the desired-state store, or a
    controller's cluster API."""

    async def open(self) -> None: ...

    async def list_keys(self) -> list[VirtualKey]: ...

    async def keys_version(self) -> str | None:
        """Something cheap to read that changes whenever any key does (None: no such
        thing, read the list): a gateway polls it and re-reads the list only on a change."""
        ...

    async def close(self) -> None: ...


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def key_hash(secret: str | bytes) -> str:
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def key_to_json(key: VirtualKey) -> str:
    return json.dumps(asdict(key), separators=(",", ":"), sort_keys=True)


def key_from_json(text: str | bytes) -> VirtualKey:
    data: dict[str, Any] = json.loads(text)
    limits = Limits(**{k: v for k, v in (data.pop("limits", None) or {}).items() if k in Limits.__dataclass_fields__})
    known = VirtualKey.__dataclass_fields__
    key = VirtualKey(**{k: v for k, v in data.items() if k in known})
    return replace(key, models=tuple(key.models), limits=limits)


def grant_of(key: VirtualKey, default: Limits) -> Grant:
    return Grant(key.id, key.name, key.models, key.limits.over(default), key.expires_at, key.revoked_at is not None)
