"""The admin API's virtual keys (``/admin/v1/keys``; see docs/admin-api.md and
docs/security.md) and the cluster API's key list for gateways (``/cluster/v1/keys``),
and the relay of the gateways' usage reports (``/cluster/v1/gateways/{id}/usage``).

Handlers only parse and format; ``KeyManager`` does the work. A key's JSON never holds
its secret or its hash: the secret is in the answer to the create, once.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.controller.admin import _BODY, _actor, _parse, _takes
from corral.controller.keys import KeyManager
from corral.core.errors import InvalidRequest
from corral.core.keys import Limits, VirtualKey, key_to_json
from corral.core.usage import StoreExchange, UsageStore, report_from_json, report_to_json
from corral.web.body import read_body
from corral.web.responses import json_response

MAX_COUNT = 10**12  # tokens or requests: beyond any real budget, within 64 bits
MAX_UNIX_S = 10**11  # year 5138: beyond any real expiry, far below float precision trouble
Name = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Pattern = Annotated[StrictStr, Field(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "budget_tokens", "budget_requests", "budget_period")


class KeyBody(BaseModel):
    """The fields a key can be created with or changed to (all optional in a PATCH)."""

    model_config = _BODY
    name: Name | None = None
    owner: Name | None = None
    models: Annotated[list[Pattern], Field(max_length=256)] | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    max_concurrency: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    budget_tokens: Count | None = None
    budget_requests: Count | None = None
    budget_period: Literal["day", "month"] | None = None
    expires_at: Annotated[float, Field(gt=0, le=MAX_UNIX_S)] | None = None


class CreateKeyBody(KeyBody):
    name: Name


def key_view(key: VirtualKey) -> dict[str, Any]:
    """What the admin API shows of a key: never the secret nor its hash."""
    limits = key.limits
    return {
        "id": key.id, "name": key.name, "owner": key.owner, "models": list(key.models),
        "rpm": limits.rpm, "tpm": limits.tpm, "max_concurrency": limits.max_concurrency,
        "budget_tokens": limits.budget_tokens, "budget_requests": limits.budget_requests,
        "budget_period": limits.budget_period, "expires_at": key.expires_at, "created_at": key.created_at,
        "hint": f"sk-corral-...{key.hint}" if key.hint else None, "revoked_at": key.revoked_at,
    }


def _limits(body: KeyBody) -> dict[str, Any]:
    """The limit fields the body set (0 for a count given as null: no limit)."""
    out: dict[str, Any] = {}
    for name in LIMIT_FIELDS:
        if name in body.model_fields_set:
            value = getattr(body, name)
            out[name] = value if value is not None or name == "budget_period" else 0
    if (out.get("budget_tokens") or out.get("budget_requests")) and "budget_period" not in out:
        out["budget_period"] = "day"
    return out


def key_routes(keys: KeyManager) -> list[Route]:
    @_takes(CreateKeyBody)
    async def create(request: Request) -> Response:
        body: CreateKeyBody = await _parse(request, CreateKeyBody)
        if body.expires_at is not None and body.expires_at <= time.time():
            raise InvalidRequest("expires_at is in the past", param="expires_at")
        limits = Limits(**_limits(body))
        key, secret = await keys.create(
            body.name, body.owner, tuple(body.models or ()), body.expires_at, limits, _actor(request)
        )
        return json_response(201, {"id": key.id, "key": secret, **{k: v for k, v in key_view(key).items() if k != "id"}})

    async def list_keys(request: Request) -> Response:
        return json_response(200, {"keys": [key_view(k) for k in (await keys.list()).keys]})

    async def get_key(request: Request) -> Response:
        return json_response(200, {"key": key_view(await keys.get(request.path_params["id"]))})

    @_takes(KeyBody)
    async def update(request: Request) -> Response:
        body: KeyBody = await _parse(request, KeyBody)
        changes: dict[str, Any] = {}
        for name in ("name", "owner", "models", "expires_at"):
            if name in body.model_fields_set:
                value = getattr(body, name)
                if name == "name" and value is None:
                    raise InvalidRequest("name cannot be null", param="name")
                changes[name] = tuple(value or ()) if name == "models" else value
        limits = _limits(body)
        if not changes and not limits:
            raise InvalidRequest("nothing to change: give at least one field of the key")
        key = await keys.update(request.path_params["id"], changes, limits, _actor(request))
        return json_response(200, {"key": key_view(key)})

    async def revoke(request: Request) -> Response:
        await keys.revoke(request.path_params["id"], _actor(request))
        return json_response(200, {"ok": True})

    p = "/admin/v1/keys"
    return [
        Route(p, create, methods=["POST"]),
        Route(p, list_keys, methods=["GET"]),
        Route(f"{p}/{{id}}", get_key, methods=["GET"]),
        Route(f"{p}/{{id}}", update, methods=["PATCH"]),
        Route(f"{p}/{{id}}", revoke, methods=["DELETE"]),
    ]


def cluster_key_route(keys: KeyManager) -> Route:
    """``GET /cluster/v1/keys`` for gateways (cluster token): the stored keys, hashes
    included (a hash cannot be turned back into a key); ``If-None-Match`` with the last
    ``etag`` gets a bodiless 304 while nothing changed."""

    async def listing(request: Request) -> Response:
        found = await keys.list()
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers={"etag": found.etag})
        body = "[" + ",".join(key_to_json(k) for k in found.keys) + "]"
        return Response(body, media_type="application/json", headers={"etag": found.etag})

    return Route("/cluster/v1/keys", listing, methods=["GET"])


MAX_USAGE_BODY = 8 * 1024 * 1024  # ~100,000 keys' counts in one report


def cluster_usage_route(store: UsageStore) -> Route:
    """``PUT /cluster/v1/gateways/{gateway_id}/usage`` (cluster token): a gateway's usage
    report in, the other gateways' latest out (a JSON list), one round trip per exchange."""
    exchange = StoreExchange(store)

    async def put_usage(request: Request) -> Response:
        body = await read_body(request, MAX_USAGE_BODY)
        try:
            report = report_from_json(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"malformed usage report: {exc}") from None
        if report.gateway_id != request.path_params["gateway_id"] or len(report.gateway_id) > 128:
            raise InvalidRequest("the gateway id in the path and the report differ", param="gateway_id")
        others = await exchange.exchange_usage(report)
        return Response("[" + ",".join(report_to_json(r) for r in others) + "]", media_type="application/json")

    return Route("/cluster/v1/gateways/{gateway_id}/usage", put_usage, methods=["PUT"])
