"""The openai-compatible engine: an upstream speaking OpenAI's API attached as an instance.

The upstream is either any server given by its base URL (engine ``openai-compatible``)
or a cloud provider of ``providers.py`` (engines ``openai``, ``azure-openai``, ``gemini``,
...; see ``cloud.py``): one engine, the ``Provider`` entry supplying URLs, the key's
header and the vendor's body quirks.

Every generation is streamed upstream (``stream: true`` with
``stream_options.include_usage`` where the vendor takes it) and its server-sent events
are translated into ``GenerationChunk`` deltas ending with one ``GenerationEnd``.
Lifecycle, the pooled client, accounting and error mapping are ``upstream.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from corral.core.errors import ConfigError, CorralError, EngineError, InstanceLost, InvalidRequest
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    Usage,
)
from corral.engines.openai_compatible.options import ConnectionOptions, OpenAICompatibleOptions
from corral.engines.openai_compatible.passthrough import forward, passes_through
from corral.engines.openai_compatible.providers import GENERIC, Provider
from corral.net.pool import ResponseLines, TransportError
from corral.engines.openai_compatible.upstream import UpstreamEngine, UpstreamStream, check_base_url
from corral.engines.openai_compatible.wire import (
    DONE,
    as_int,
    choice_text,
    choice_tool_calls,
    error_message,
    finish_reason,
    sse,
    upstream_body,
    vector,
    whole_body,
)

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}


def create_engine(spec: ModelSpec, options: OpenAICompatibleOptions) -> OpenAICompatibleEngine:
    """The catalog's factory for ``openai-compatible``: ``source`` is the server's base URL."""
    base = check_base_url(spec.name, spec.engine, spec.source, "source")
    kind = ModelKind(spec.kind)
    if kind is ModelKind.EMBEDDING:
        if options.supports_embeddings is False:
            raise ConfigError(
                f"model {spec.name!r} is of kind 'embedding' but sets options.supports_embeddings = false",
                param="options.supports_embeddings",
            )
        cls: type[OpenAICompatibleEngine] = OpenAICompatibleEmbeddings
    elif options.supports_embeddings:
        cls = OpenAICompatibleChatAndEmbeddings
    else:
        cls = OpenAICompatibleChat
    return cls(spec, options, GENERIC, base=base, upstream_model=options.upstream_model or spec.name, api_version=None)


class OpenAICompatibleEngine(UpstreamEngine):
    """An upstream in OpenAI's dialect; capabilities come from the mixins below."""

    def __init__(
        self, spec: ModelSpec, options: ConnectionOptions, provider: Provider, *, base: str, upstream_model: str,
        api_version: str | None,
    ) -> None:
        generic = provider is GENERIC
        super().__init__(
            spec, options, base=base, upstream_model=upstream_model,
            vendor="the upstream server" if generic else provider.title,
            default_key_env=provider.key_env,
            model_hint="options.upstream_model" if generic else "the source",
        )
        self.provider = provider
        self.passthrough = isinstance(options, OpenAICompatibleOptions) and options.passthrough
        self._api_version = api_version
        self._usage_missing_logged = False

    def _auth_headers(self, secret: str | None) -> dict[str, str]:
        return self.provider.auth_headers(secret)

    def _models_url(self) -> str:
        return self.provider.models_url(self._base, self._api_version)

    def _lists_models(self) -> bool:
        return self.provider.lists_models

    def _endpoint(self, path: str) -> str:
        return self.provider.url(self._base, path, self.upstream_model, self._api_version)

    def _stream_error(self, obj: dict[str, Any]) -> CorralError:
        """An error the upstream reported inside a started stream."""
        message, param, code = error_message(orjson.dumps(obj), self._secret)
        err = obj.get("error")
        status = err.get("code") if isinstance(err, dict) else obj.get("code")
        if isinstance(status, int) and 400 <= status < 500 and status != 429:
            return InvalidRequest(message, param=param, code=code)
        return EngineError(f"{self._vendor} at {self.url} failed mid-generation: {message}", code="upstream_error")


class _Generation:
    """TextGeneration: chat when ``request.messages``, else text completion. Tools and
    ``response_format`` go upstream as given, after the provider's quirks (which refuse,
    with a 400, what the vendor documents it cannot honour); an upstream refusing them
    anyway answers 400, which reaches the client as such."""

    honours_tools = True
    honours_response_format = True

    async def generate(self, request: GenerationRequest) -> UpstreamStream:
        assert isinstance(self, OpenAICompatibleEngine)
        self._client()  # not serving: refuse before validating
        chat = request.messages is not None
        body = self.provider.adapt(upstream_body(self.upstream_model, request), request)
        url = self._endpoint("chat/completions" if chat else "completions")
        resp = await self._post_stream(url, body, request)
        if passes_through(self, request) and not _whole(resp):
            return UpstreamStream(self, resp, forward(self, request, resp))
        return UpstreamStream(self, resp, _translate(self, request, resp, chat))


class _Embedding:
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        assert isinstance(self, OpenAICompatibleEngine)
        http = self._client()
        url = self._endpoint("embeddings")
        body: dict[str, Any] = {"model": self.upstream_model, "input": list(request.inputs), "encoding_format": "float"}
        if self.provider.deployments:
            del body["model"]
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        headers = {**_JSON_HEADERS, "x-request-id": request.request_id}
        slot = await self._admission.acquire()  # Overloaded when no connection frees in time
        self._in_flight += 1
        try:
            async with http.post(url, data=orjson.dumps(body), headers=headers, allow_redirects=False) as resp:
                status, resp_headers, content = resp.status, resp.headers, await resp.read()
        except TransportError as exc:
            raise self._unreachable("POST", url, exc) from None
        finally:
            slot.release()
            self._in_flight -= 1
        if not 200 <= status < 300:
            raise self._http_error(status, resp_headers, content, "POST", url)
        try:
            data = orjson.loads(content)
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [vector(d["embedding"]) for d in items]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise EngineError(
                f"{self._vendor} at {self.url} answered /embeddings with an unexpected body ({type(exc).__name__})"
            ) from None
        if len(vectors) != len(request.inputs):
            raise EngineError(
                f"{self._vendor} at {self.url} returned {len(vectors)} vectors for {len(request.inputs)} inputs"
            )
        self._completed += 1
        return EmbeddingResult(vectors=vectors, usage=Usage(as_int((data.get("usage") or {}).get("prompt_tokens")), 0))


class OpenAICompatibleChat(_Generation, OpenAICompatibleEngine):
    """Chat and text completion."""


class OpenAICompatibleEmbeddings(_Embedding, OpenAICompatibleEngine):
    """Embeddings only (kind embedding)."""


class OpenAICompatibleChatAndEmbeddings(_Generation, _Embedding, OpenAICompatibleEngine):
    """An LLM whose upstream also serves /embeddings (``supports_embeddings = true``)."""


# -- generation stream -----------------------------------------------------------------


def _whole(resp: ResponseLines) -> bool:
    """The upstream answered with one JSON body (it ignored ``stream: true``)."""
    return resp.response.headers.get("content-type", "").startswith("application/json")


async def _translate(
    engine: OpenAICompatibleEngine, request: GenerationRequest, resp: ResponseLines, chat: bool
) -> AsyncGenerator[GenerationChunk | GenerationEnd, None]:
    """The upstream's chunks as deltas per choice, then usage. Transport failures are
    the ``UpstreamStream``'s to map."""
    n = request.sampling.n
    seen = [False] * n
    finished = [False] * n
    usage: Any = None
    done = False
    if request.echo and request.prompt is not None:  # emulated: few servers echo in a stream
        for i in range(n):
            yield GenerationChunk(i, request.prompt)
    if _whole(resp):
        events: AsyncGenerator[Any, None] = whole_body(await resp.response.read())  # the upstream ignored stream: true
    else:
        events = sse(resp)
    async with contextlib.aclosing(events):
        async for obj in events:
            if obj is DONE:
                # read on to the end of the body (servers end it right after): a
                # connection left mid-body could not go back to the pool
                done = True
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("error") is not None or obj.get("object") == "error":
                raise engine._stream_error(obj)
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index") or 0
                if not isinstance(index, int) or not 0 <= index < n:
                    log.debug("ignoring choice %s of %s from %s (n=%d)", index, request.request_id, engine.url, n)
                    continue
                if isinstance(choice.get("usage"), dict):  # Moonshot: usage inside the last choice
                    usage = choice["usage"]
                text = choice_text(choice, chat)
                calls = choice_tool_calls(choice) if chat else ()
                reason = choice.get("finish_reason")
                finish = None
                if reason and not finished[index]:
                    finish = finish_reason(reason, engine.url)
                    finished[index] = True
                if text or finish is not None or calls:
                    seen[index] = True
                    yield GenerationChunk(index, text, finish, calls)
    if not all(finished):
        if not done and (not any(seen) or not all(finished[i] for i in range(n) if seen[i])):
            raise InstanceLost(f"{engine._vendor} at {engine.url} ended the stream early")
        missing = [i for i in range(n) if not seen[i]]
        if missing:
            raise EngineError(
                f"{engine._vendor} at {engine.url} returned {n - len(missing)} of {n} choices; "
                "it does not seem to support n > 1",
                param="n",
            )
        for i in range(n):  # [DONE] came without a finish reason for these
            if not finished[i]:
                yield GenerationChunk(i, "", FinishReason.STOP)
    if not usage:
        if not engine._usage_missing_logged:
            engine._usage_missing_logged = True
            log.debug("%s at %s reports no token usage; counting 0 tokens", engine._vendor, engine.url)
        yield GenerationEnd(Usage(0, 0))
    else:
        yield GenerationEnd(Usage(as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))))
