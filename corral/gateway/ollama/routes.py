"""The Ollama front-end: HTTP handlers of Ollama's API (/api/...), for every model Corral serves.

Generation streams NDJSON by default (``stream: false`` for one object); errors are
``{"error": "..."}`` with the status Ollama's clients read (404 for an unknown model,
400 for bad input), and an error after a stream started is its last line. Model names
are taken as Ollama clients send them: ``name`` and ``name:latest`` are the same model.
Models are managed through Corral's admin API, so pull, push, create, copy and delete
answer 403 saying so (a refusal of an understood request: not a 5xx, which clients retry,
nor a 404/405, which would say the route does not exist).
"""

from __future__ import annotations

import hashlib
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from corral import __version__
from corral.core.errors import CorralError, Forbidden, ModelNotFound
from corral.core.observe import RequestEvent
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.types import GenerationRequest
from corral.gateway.frontend import INSTANCE_HEADER, AuthScheme, Kit, ModelEntry, traceparent
from corral.gateway.ollama import render, translate
from corral.protocol.ollama import responses
from corral.protocol.ollama.requests import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest
from corral.protocol.ollama.responses import NDJSON, Clock, Lines
from corral.web.disconnect import unless_client_leaves
from corral.web.errors import retry_headers
from corral.web.responses import json_response

# the Ollama API this front-end follows (what /api/version reports: clients compare it
# to decide which features the server has)
OLLAMA_API_VERSION = "0.12.0"
_LATEST = ":latest"
_MANAGED = (
    "models are managed through Corral's admin API (POST /admin/v1/models, or `corral model deploy`), "
    "not through the Ollama API"
)
# Ollama's names for what a model can do, from its record's capabilities
_CAPABILITIES = {"chat": "completion", "completion": "completion", "tools": "tools", "embedding": "embedding"}
# the field a client of this protocol wrote, for errors naming an internal one
_FIELDS = {"response_format": "format"}


class OllamaFrontend:
    name = "ollama"
    prefixes = ("/api",)
    auth = AuthScheme(hint="send 'Authorization: Bearer YOUR_KEY' (the ollama client: headers=, or OLLAMA_API_KEY)")

    def __init__(self, kit: Kit) -> None:
        self._kit = kit
        self._pipeline = kit.pipeline
        self._clock = Clock()

    def render_error(self, exc: CorralError) -> Response:
        message = exc.message
        field = _FIELDS.get(exc.param or "")
        if field is not None:  # the router names the internal field
            message = message.replace(exc.param or "", field)
        return json_response(exc.status, responses.error_body(message), retry_headers(exc))

    def routes(self) -> list[Route]:
        # the router tries routes in order: the ones every request takes come first
        return [
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/version", self.version, methods=["GET"]),
            # what Ollama answers at its root, which apps probe to find a server (outside the
            # prefix: no key, as /health)
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/pull", self.managed, methods=["POST"]),
            Route("/api/push", self.managed, methods=["POST"]),
            Route("/api/create", self.managed, methods=["POST"]),
            Route("/api/copy", self.managed, methods=["POST"]),
            Route("/api/delete", self.managed, methods=["DELETE"]),
            Route("/api/blobs/{digest}", self.managed, methods=["HEAD", "POST"]),
        ]

    # -- generation ----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        async with self._kit.track(request, "chat") as event:
            req = await self._kit.parse(request, ChatRequest)
            label = translate.model_name(req.model, req.name)
            model = await self._resolve(label)
            gen = translate.chat(req, model, self._rid(request), request.headers.get("x-session-id"), traceparent(event))
            self._kit.describe(event, gen, gen.stream)
            if not req.messages:  # checked first: what is refused is refused with nothing to generate too
                return await self._loaded(model, label, True, req.stream)
            return await self._answer(request, gen, "chat", event, label, True)

    async def generate(self, request: Request) -> Response:
        async with self._kit.track(request, "generate") as event:
            req = await self._kit.parse(request, GenerateRequest)
            label = translate.model_name(req.model, req.name)
            model = await self._resolve(label)
            gen = translate.generate(req, model, self._rid(request), request.headers.get("x-session-id"), traceparent(event))
            self._kit.describe(event, gen, gen.stream)
            if not req.prompt and not req.system:
                return await self._loaded(model, label, False, req.stream)
            return await self._answer(request, gen, "completion" if req.raw else "chat", event, label, False)

    async def _answer(
        self, request: Request, gen: GenerationRequest, capability: str, event: RequestEvent, label: str, chat: bool
    ) -> Response:
        if gen.stream:
            call = await self._pipeline.generate(gen, capability, event)
            body = render.ndjson_stream(call, event, Lines(label, chat, self._clock))
            return self._kit.stream(call, body, event, NDJSON)
        served_by, choices, usage = await unless_client_leaves(request, self._pipeline.complete(gen, capability, event))
        choice = choices[0]
        calls = render.tool_calls(choice.tool_calls) if chat else None
        body = responses.final(
            label, self._clock.now(), chat, choice.text, calls, render.done_reason(choice.finish),
            render.whole_stats(event, usage),
        )
        return json_response(200, body, {INSTANCE_HEADER: served_by})

    async def _loaded(self, model: str, label: str, chat: bool, stream: bool) -> Response:
        """Ollama's answer to a request with nothing to generate: it loads the model. A
        Corral model is loaded while deployed, so this only checks that it exists."""
        await self._entry(model)
        body = responses.final(label, self._clock.now(), chat, "", None, "load", None)
        if stream:
            return Response(responses.line(body), media_type=NDJSON)
        return json_response(200, body)

    # -- embeddings ----------------------------------------------------------------------

    async def embed(self, request: Request) -> Response:
        async with self._kit.track(request, "embedding") as event:
            req = await self._kit.parse(request, EmbedRequest)
            label = translate.model_name(req.model, req.name)
            model = await self._resolve(label)
            internal = translate.embed(req, model, self._rid(request))
            event.model = model
            event.params = {"inputs": len(internal.inputs)}
            served_by, result = await self._pipeline.embed(internal, event)
            body = {
                "model": label, "embeddings": result.vectors,
                "total_duration": int((time.perf_counter() - event.clock_start) * 1e9), "load_duration": 0,
                "prompt_eval_count": result.usage.prompt_tokens,
            }
            return json_response(200, body, {INSTANCE_HEADER: served_by})

    async def embeddings(self, request: Request) -> Response:
        """The legacy single-prompt route: ``{"embedding": [...]}`` (empty for an empty prompt)."""
        async with self._kit.track(request, "embedding") as event:
            req = await self._kit.parse(request, EmbeddingsRequest)
            label = translate.model_name(req.model, req.name)
            model = await self._resolve(label)
            translate.sampling(req.options)  # the same options checks as every route
            event.model = model
            event.params = {"inputs": 1}
            if not req.prompt:
                await self._entry(model)
                return json_response(200, {"embedding": []})
            internal = translate.embed(EmbedRequest(model=model, input=req.prompt), model, self._rid(request))
            served_by, result = await self._pipeline.embed(internal, event)
            return json_response(200, {"embedding": result.vectors[0]}, {INSTANCE_HEADER: served_by})

    # -- models --------------------------------------------------------------------------

    async def tags(self, request: Request) -> Response:
        return json_response(200, {"models": [self._listed(m) for m in await self._kit.models()]})

    async def ps(self, request: Request) -> Response:
        """The models with a ready instance (Corral keeps them loaded: no ``expires_at``)."""
        records = self._kit.router.models()
        running = [m for m in await self._kit.models() if any(r.state is InstanceState.READY for r in records.get(m.name, ()))]
        listed = [{**self._listed(m), "size_vram": 0} for m in running]
        for entry in listed:
            del entry["modified_at"]
        return json_response(200, {"models": listed})

    async def show(self, request: Request) -> Response:
        req = await self._kit.parse(request, ShowRequest)
        model = await self._resolve(translate.model_name(req.model, req.name))
        entry = await self._entry(model)
        record = next(iter(self._kit.router.models().get(model, ())), None)
        parameters = "\n".join(f"{k:<15} {v}" for k, v in _sampling(record))
        body = {
            "modelfile": f"# {model}: served by Corral (engine {entry.engine}); managed through its admin API\n",
            "parameters": parameters,
            "template": "",
            "details": responses.model_details(entry.engine, entry.kind),
            "model_info": {"general.architecture": entry.engine, "corral.engine": entry.engine, "corral.kind": entry.kind},
            "capabilities": sorted({_CAPABILITIES[c] for c in entry.capabilities if c in _CAPABILITIES}),
            "modified_at": _rfc3339(entry.created),
        }
        return json_response(200, body)

    async def version(self, request: Request) -> Response:
        return json_response(200, {"version": OLLAMA_API_VERSION, "corral_version": __version__})

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def managed(self, request: Request) -> Response:
        raise Forbidden(_MANAGED, code="managed_by_admin_api")

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _rid(request: Request) -> str:
        rid: str = request.scope["state"]["request_id"]
        return rid

    async def _resolve(self, name: str) -> str:
        """``name:latest`` is ``name`` when Corral serves no model of the longer name."""
        if not name.endswith(_LATEST):
            return name
        await self._kit.router.wait_synced()
        models = self._kit.router.models()
        base = name[: -len(_LATEST)]
        return base if name not in models and base in models else name

    async def _entry(self, model: str) -> ModelEntry:
        for entry in await self._kit.models():
            if entry.name == model:
                return entry
        raise ModelNotFound(f"model {model!r} not found", param="model")

    @staticmethod
    def _listed(m: ModelEntry) -> dict[str, object]:
        name = m.name if ":" in m.name else m.name + _LATEST  # Ollama's names always carry a tag
        # the digest identifies the name (Corral has no single weights file to hash)
        digest = hashlib.sha256(m.name.encode()).hexdigest()
        return responses.model_entry(name, name, _rfc3339(m.created), digest, m.engine, m.kind)


def _sampling(record: InstanceRecord | None) -> tuple[tuple[str, float], ...]:
    return record.sampling if record is not None else ()


def _rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
