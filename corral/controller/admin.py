"""The admin API (``/admin/v1``; see docs/admin-api.md), served by the controller and
by the standalone server. Handlers only parse and format; the Manager does the work."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.config.loader import AutoscaleTable, ResourcesTable, SamplingTable, validate_model_spec
from corral.controller.manager import Manager
from corral.core.errors import Conflict, InvalidRequest
from corral.core.spec import ROUTING_POLICIES, ModelKind, ModelSpec, SamplingDefaults
from corral.web.errors import from_validation
from corral.web.body import read_body
from corral.web.responses import json_response

Policy = Literal[ROUTING_POLICIES]  # type: ignore[valid-type]
Handler = Callable[[Request], Awaitable[Response]]


# bounded numbers: what is accepted is stored, audited and served back as JSON (orjson
# refuses integers beyond 64 bits; JSON has no Infinity)
MAX_CONCURRENCY = 1_000_000
MAX_WEIGHT = 1e6
_BODY = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class DeployBody(BaseModel):
    model_config = _BODY
    name: StrictStr
    kind: Literal["llm", "embedding", "rerank"] = "llm"
    engine: StrictStr
    source: StrictStr
    options: dict[str, Any] = Field(default_factory=dict)
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1  # scale to 0 later if wanted
    routing: Policy = "power_of_two"
    weight: Annotated[float, Field(gt=0, le=MAX_WEIGHT)] = 1.0
    max_concurrency: Annotated[int, Field(ge=0, le=MAX_CONCURRENCY)] = 0
    autoscale: AutoscaleTable | None = None  # replicas then start at min_replicas unless given
    sampling: SamplingTable | None = None  # defaults for parameters a request leaves out
    resources: ResourcesTable | None = None  # what each instance reserves on its node (--launcher ray)


class ScaleBody(BaseModel):
    model_config = _BODY
    replicas: Annotated[int, Field(ge=0, le=1024)]


class UpdateBody(BaseModel):
    model_config = _BODY
    routing: Policy | None = None
    weight: Annotated[float, Field(gt=0, le=MAX_WEIGHT)] | None = None
    max_concurrency: Annotated[int, Field(ge=0, le=MAX_CONCURRENCY)] | None = None


def _actor(request: Request) -> str:
    name = request.headers.get("x-corral-actor", "")[:64] or "admin"
    host = request.client.host if request.client else "?"
    return f"{name}@{host}"


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await read_body(request, 1024 * 1024))
    except ValidationError as exc:
        raise from_validation(exc) from None


def _takes(model: type[BaseModel]) -> Callable[[Handler], Handler]:
    """Names the body model of a handler for the gateway's /openapi.json (which reads
    the ``request_body`` attribute: it does not import the controller)."""

    def mark(handler: Handler) -> Handler:
        handler.request_body = model  # type: ignore[attr-defined]
        return handler

    return mark


def admin_routes(manager: Manager) -> list[Route]:
    async def status(request: Request) -> Response:
        return json_response(200, {"mode": manager.mode, "workers": manager.workers_view(), "models": manager.models_view()})

    async def list_models(request: Request) -> Response:
        return json_response(200, {"models": manager.models_view()})

    async def get_model(request: Request) -> Response:
        return json_response(200, {"model": manager.model_view(request.path_params["name"])})

    async def workers(request: Request) -> Response:
        return json_response(200, {"workers": manager.workers_view()})

    async def audit(request: Request) -> Response:
        try:
            limit = max(1, min(10_000, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("limit must be a whole number", param="limit") from None
        events = await manager.audit(limit)
        return json_response(
            200,
            {"events": [{"time": e.time, "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail} for e in events]},
        )

    @_takes(DeployBody)
    async def deploy(request: Request) -> Response:
        body: DeployBody = await _parse(request, DeployBody)
        policy = body.autoscale.policy() if body.autoscale is not None else None
        replicas = body.replicas
        if policy is not None and "replicas" not in body.model_fields_set:
            replicas = policy.min_replicas
        spec = ModelSpec(
            name=body.name, kind=ModelKind(body.kind), engine=body.engine, source=body.source, options=body.options,
            replicas=replicas, routing=body.routing, weight=body.weight, max_concurrency=body.max_concurrency,
            autoscale=policy, sampling=body.sampling.defaults() if body.sampling is not None else SamplingDefaults(),
            resources=body.resources.resources() if body.resources is not None else None,
        )
        validate_model_spec(spec)
        await manager.deploy(spec, _actor(request))
        return json_response(201, {"model": manager.model_view(spec.name)})

    async def remove(request: Request) -> Response:
        await manager.remove(request.path_params["name"], _actor(request))
        return json_response(200, {"ok": True})

    @_takes(ScaleBody)
    async def scale(request: Request) -> Response:
        body: ScaleBody = await _parse(request, ScaleBody)
        if manager.spec(request.path_params["name"]).autoscale is not None:
            raise Conflict(
                f"model {request.path_params['name']!r} is autoscaled: change its policy "
                "(PUT .../autoscale, `corral model autoscale`) or turn autoscaling off first",
                code="autoscaled",
            )
        await manager.scale(request.path_params["name"], body.replicas, _actor(request))
        return json_response(200, {"model": manager.model_view(request.path_params["name"])})

    @_takes(UpdateBody)
    async def update(request: Request) -> Response:
        body: UpdateBody = await _parse(request, UpdateBody)
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise InvalidRequest("nothing to change: give routing, weight or max_concurrency")
        await manager.update(request.path_params["name"], _actor(request), **changes)
        return json_response(200, {"model": manager.model_view(request.path_params["name"])})

    async def get_autoscale(request: Request) -> Response:
        spec = manager.spec(request.path_params["name"])
        policy = dataclasses.asdict(spec.autoscale) if spec.autoscale is not None else None
        return json_response(200, {"autoscale": policy, "last_decision": manager.decision_view(spec.name)})

    @_takes(AutoscaleTable)
    async def set_autoscale(request: Request) -> Response:
        body: AutoscaleTable = await _parse(request, AutoscaleTable)
        await manager.set_autoscale(request.path_params["name"], body.policy(), _actor(request))
        return json_response(200, {"model": manager.model_view(request.path_params["name"])})

    async def autoscale_off(request: Request) -> Response:
        await manager.set_autoscale(request.path_params["name"], None, _actor(request))
        return json_response(200, {"model": manager.model_view(request.path_params["name"])})

    async def restart(request: Request) -> Response:
        await manager.restart(request.path_params["name"], _actor(request))
        return json_response(202, {"model": manager.model_view(request.path_params["name"])})

    def model_switch(offline: bool):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Response:
            await manager.set_model_offline(request.path_params["name"], offline, _actor(request))
            return json_response(200, {"model": manager.model_view(request.path_params["name"])})

        return handler

    def instance_switch(offline: bool):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Response:
            record = await manager.set_instance_offline(request.path_params["id"], offline, _actor(request))
            return json_response(200, {"instance": {"id": record.instance_id, "model": record.model}})

        return handler

    p = "/admin/v1"
    return [
        Route(f"{p}/status", status, methods=["GET"]),
        Route(f"{p}/models", list_models, methods=["GET"]),
        Route(f"{p}/models", deploy, methods=["POST"]),
        # before the {name:path} routes, which would take "NAME/autoscale" for a name
        Route(f"{p}/models/{{name:path}}/autoscale", get_autoscale, methods=["GET"]),
        Route(f"{p}/models/{{name:path}}/autoscale", set_autoscale, methods=["PUT"]),
        Route(f"{p}/models/{{name:path}}/autoscale", autoscale_off, methods=["DELETE"]),
        Route(f"{p}/models/{{name:path}}", get_model, methods=["GET"]),
        Route(f"{p}/models/{{name:path}}", remove, methods=["DELETE"]),
        Route(f"{p}/models/{{name:path}}", update, methods=["PATCH"]),
        Route(f"{p}/models/{{name:path}}/scale", scale, methods=["POST"]),
        Route(f"{p}/models/{{name:path}}/restart", restart, methods=["POST"]),
        Route(f"{p}/models/{{name:path}}/offline", model_switch(True), methods=["POST"]),
        Route(f"{p}/models/{{name:path}}/online", model_switch(False), methods=["POST"]),
        Route(f"{p}/instances/{{id}}/offline", instance_switch(True), methods=["POST"]),
        Route(f"{p}/instances/{{id}}/online", instance_switch(False), methods=["POST"]),
        Route(f"{p}/workers", workers, methods=["GET"]),
        Route(f"{p}/audit", audit, methods=["GET"]),
    ]
