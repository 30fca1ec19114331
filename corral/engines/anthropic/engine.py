"""The anthropic engine: a Claude model behind Anthropic's Messages API, as an instance.

Each generation is one streamed ``POST {base}/v1/messages`` (``x-api-key`` and
``anthropic-version`` headers); the body and the event translation are ``wire.py``'s,
the key, pooled client, accounting and error mapping are shared with the
openai-compatible engine (``corral.engines.openai_compatible.upstream``).

It honours tools (``ToolCalling``) but not ``response_format``: the Messages API has no
JSON mode, so the router refuses such requests with a 400 rather than Corral faking one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from corral.core.errors import ConfigError, CorralError, EngineError, InstanceLost, InvalidRequest, Overloaded
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import GenerationChunk, GenerationEnd, GenerationRequest
from corral.engines.anthropic.options import AnthropicOptions
from corral.engines.anthropic.wire import EventTranslator, messages_body, whole_message_events
from corral.net.pool import ResponseLines
from corral.engines.openai_compatible.upstream import UpstreamEngine, UpstreamStream, check_base_url
from corral.engines.openai_compatible.wire import error_message, sse

DEFAULT_BASE_URL = "https://api.anthropic.com"
KEY_ENV = "ANTHROPIC_API_KEY"
_OWN_HEADERS = ("x-api-key", "anthropic-version")


def create_engine(spec: ModelSpec, options: AnthropicOptions) -> AnthropicEngine:
    """The catalog's factory: ``source`` is the Claude model id."""
    if ModelKind(spec.kind) is not ModelKind.LLM:
        raise ConfigError(f"model {spec.name!r}: engine 'anthropic' serves chat (kind llm) only", param="kind")
    for name in options.extra_headers:
        if name.lower() in _OWN_HEADERS:
            raise ConfigError(
                f"model {spec.name!r}: options.extra_headers sets {name}, which the engine sets "
                "(the key: api_key_env / api_key_file; the version: options.anthropic_version)",
                param="options.extra_headers",
            )
    return AnthropicEngine(spec, options)


class AnthropicEngine(UpstreamEngine):
    honours_tools = True

    def __init__(self, spec: ModelSpec, options: AnthropicOptions) -> None:
        base = check_base_url(spec.name, spec.engine, options.base_url or DEFAULT_BASE_URL, "options.base_url")
        super().__init__(
            spec, options, base=base, upstream_model=spec.source, vendor="Anthropic",
            default_key_env=KEY_ENV, model_hint="the source",
        )
        self._version = options.anthropic_version
        self._default_max_tokens = options.default_max_tokens

    def _auth_headers(self, secret: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self._version}
        if secret:
            headers["x-api-key"] = secret
        return headers

    def _models_url(self) -> str:
        return f"{self._base}/v1/models"

    def _lists_models(self) -> bool:
        return False  # aliases (claude-...-latest) are served without being listed

    async def generate(self, request: GenerationRequest) -> UpstreamStream:
        self._client()  # not serving: refuse before validating
        body = messages_body(self.upstream_model, request, self._default_max_tokens)
        resp = await self._post_stream(f"{self._base}/v1/messages", body, request)
        return UpstreamStream(self, resp, self._translate(resp))

    async def _translate(self, resp: ResponseLines) -> AsyncGenerator[GenerationChunk | GenerationEnd, None]:
        translator = EventTranslator()
        if resp.response.headers.get("content-type", "").startswith("application/json"):
            events: AsyncGenerator[Any, None] = _replay(whole_message_events(orjson.loads(await resp.response.read())))
        else:
            events = sse(resp)
        async with contextlib.aclosing(events):
            async for event in events:
                if not isinstance(event, dict):
                    continue
                if event.get("type") == "error" or event.get("error") is not None:
                    raise self._stream_error(event)
                if translator.stopped:
                    continue  # to the end of the body, so the connection goes back to the pool
                chunk = translator.feed(event)
                if chunk is not None:
                    yield chunk
        if translator.finish is None:
            raise InstanceLost(f"Anthropic at {self.url} ended the stream before the message did")
        yield GenerationEnd(translator.usage())

    def _stream_error(self, event: dict[str, Any]) -> CorralError:
        """An ``error`` event inside a started stream (e.g. ``overloaded_error``)."""
        message, _, _ = error_message(orjson.dumps(event), self._secret)
        err = event.get("error")
        kind = err.get("type") if isinstance(err, dict) else None
        if kind in ("overloaded_error", "rate_limit_error"):
            return Overloaded(f"Anthropic at {self.url} is at capacity ({kind}): {message}")
        if kind == "invalid_request_error":
            return InvalidRequest(message)
        return EngineError(f"Anthropic at {self.url} failed mid-generation ({kind}): {message}", code="upstream_error")


async def _replay(events: list[dict[str, Any]]) -> AsyncGenerator[dict[str, Any], None]:
    for event in events:
        yield event
