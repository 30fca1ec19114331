"""The openai-compatible engine: an upstream OpenAI-API server attached as an instance.

Every generation is streamed upstream (``stream: true`` with
``stream_options.include_usage``) and its server-sent events are translated into
``GenerationChunk`` deltas ending with one ``GenerationEnd``. One pooled keep-alive
``httpx.AsyncClient`` per engine, opened in ``start`` and closed in ``stop``. Closing a
generation early closes its upstream connection, which OpenAI-compatible servers take as
"client gone" and abort the request.

Upstream failures become Corral errors so the gateway can act on them: anything that
goes wrong before the upstream's response starts (refused connection, timeout, HTTP 5xx)
is ``Unreachable`` (retried on another instance), 429 is ``Overloaded`` with the
upstream's ``Retry-After``, a broken stream after the response started is
``InstanceLost``. The API key is never logged nor put in an error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from corral.core.errors import (
    ConfigError,
    CorralError,
    EngineError,
    InstanceLost,
    InvalidRequest,
    Overloaded,
    Unavailable,
    Unreachable,
)
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    Usage,
)
from corral.engines.openai_compatible.options import OpenAICompatibleOptions

from corral.engines.openai_compatible.wire import (
    DONE,
    as_int,
    choice_text,
    choice_tool_calls,
    error_message,
    finish_reason,
    retry_after,
    sse,
    upstream_body,
    vector,
    whole_body,
)

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}
_STREAM_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
_VERIFY_TIMEOUT = 30.0  # seconds GET /models may take at start

# finish reasons seen in the wild (TGI: eos_token/stop_sequence, Anthropic-style end_turn,
# tool calls) -> the internal ones; anything unknown is a normal stop


def create_engine(spec: ModelSpec, options: OpenAICompatibleOptions) -> OpenAICompatibleEngine:
    """The catalog's factory: the class implementing what this spec serves."""
    kind = ModelKind(spec.kind)
    if kind is ModelKind.EMBEDDING:
        if options.supports_embeddings is False:
            raise ConfigError(
                f"model {spec.name!r} is of kind 'embedding' but sets options.supports_embeddings = false",
                param="options.supports_embeddings",
            )
        return OpenAICompatibleEmbeddings(spec, options)
    if options.supports_embeddings:
        return OpenAICompatibleChatAndEmbeddings(spec, options)
    return OpenAICompatibleChat(spec, options)


def display_url(url: str) -> str:
    """``url`` without user:password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class OpenAICompatibleEngine:
    """Lifecycle, accounting and error mapping; capabilities come from the mixins below."""

    def __init__(self, spec: ModelSpec, options: OpenAICompatibleOptions) -> None:
        parts = urlsplit(spec.source)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"model {spec.name!r}: engine 'openai-compatible' needs an http(s) URL as source, "
                f"e.g. http://127.0.0.1:8080/v1 (got {display_url(spec.source)!r})",
                param="source",
            )
        self._spec = spec
        self._opts = options
        self._base = spec.source.rstrip("/")
        self.url = display_url(self._base)
        self.upstream_model = options.upstream_model or spec.name
        self._http: httpx.AsyncClient | None = None
        self._secret: str | None = None
        self._in_flight = 0
        self._completed = 0
        self._cancelled = 0
        self._usage_missing_logged = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        headers = dict(self._opts.extra_headers)
        self._secret = self._api_key()
        if self._secret:
            headers["authorization"] = f"Bearer {self._secret}"
        timeout = self._opts.timeout_s
        http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(connect=self._opts.connect_timeout_s, read=timeout, write=timeout, pool=timeout),
            limits=httpx.Limits(
                max_connections=self._opts.max_connections,
                max_keepalive_connections=self._opts.max_connections,
                keepalive_expiry=30,
            ),
        )
        try:
            if self._opts.verify_on_start:
                await self._verify(http)
        except BaseException:
            await http.aclose()
            raise
        self._http = http
        log.info("model %s attached to %s (upstream model %r)", self._spec.name, self.url, self.upstream_model)

    def _api_key(self) -> str | None:
        if self._opts.api_key is not None:
            return self._opts.api_key.get_secret_value()
        env = self._opts.api_key_env
        if env is None:
            return None
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(
                f"model {self._spec.name!r}: options.api_key_env names the environment variable {env!r}, "
                "which is not set or empty",
                param="options.api_key_env",
            )
        return value

    async def _verify(self, http: httpx.AsyncClient) -> None:
        url = f"{self._base}/models"
        shown = display_url(url)
        try:
            resp = await http.get(url, timeout=min(self._opts.timeout_s, _VERIFY_TIMEOUT))
        except (httpx.RequestError, OSError) as exc:
            raise Unreachable(
                f"model {self._spec.name!r}: the upstream server at {shown} is unreachable "
                f"({type(exc).__name__}: {self._scrub(str(exc)) or 'no detail'}); is it running?"
            ) from None
        if resp.status_code in (401, 403):
            raise self._auth_error(resp.status_code, "GET", url)
        if resp.status_code in (404, 405):
            hint = "" if self._base.endswith("/v1") else " (does the source URL need to end with /v1?)"
            log.warning("the upstream server at %s answered HTTP %d to GET /models%s", shown, resp.status_code, hint)
            return
        if resp.status_code >= 300:
            raise Unreachable(
                f"model {self._spec.name!r}: the upstream server at {shown} answered HTTP {resp.status_code}: "
                f"{error_message(resp.content, self._secret)[0]}"
            )
        try:
            listed = [str(m.get("id")) for m in orjson.loads(resp.content).get("data") or ()]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            log.warning("the upstream server at %s answered GET /models with something else than a model list", shown)
            return
        if listed and self.upstream_model not in listed:
            log.warning(
                "the upstream server at %s does not list model %r (it lists: %s); set options.upstream_model",
                self.url, self.upstream_model, ", ".join(listed[:10]),
            )

    async def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def load(self) -> EngineLoad:
        return EngineLoad(in_flight=self._in_flight, cancelled_total=self._cancelled, completed_total=self._completed)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        return self._http

    # -- errors ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _unreachable(self, method: str, url: str, exc: BaseException) -> Unreachable:
        detail = self._scrub(str(exc))
        return Unreachable(
            f"the upstream server at {display_url(url)} did not answer {method} "
            f"({type(exc).__name__}{': ' + detail if detail else ''})"
        )

    def _auth_error(self, status: int, method: str, url: str) -> EngineError:
        # the upstream's own message is left out: some servers echo the key they refused
        err = EngineError(
            f"the upstream server at {display_url(url)} rejected Corral's credentials for {method} (HTTP {status}); "
            f"check options.api_key / api_key_env of model {self._spec.name!r}",
            code="upstream_auth",
        )
        err.status = 502
        return err

    def _http_error(self, resp: httpx.Response, body: bytes, method: str, url: str) -> CorralError:
        status = resp.status_code
        shown = display_url(url)
        message, param, code = error_message(body, self._secret)
        if status in (401, 403):
            return self._auth_error(status, method, url)
        if status == 404:
            return InvalidRequest(
                f"the upstream server at {shown} has no model {self.upstream_model!r} or does not serve this "
                f"endpoint (HTTP 404: {message}); check options.upstream_model of model {self._spec.name!r}",
                param="model",
                code="model_not_found",
            )
        if status == 429:
            return Overloaded(f"the upstream server at {shown} is at capacity: {message}", retry_after=retry_after(resp))
        if status == 408 or status >= 500:
            return Unreachable(f"the upstream server at {shown} answered HTTP {status}: {message}")
        if 400 <= status < 500:
            return InvalidRequest(message, param=param, code=code)
        return EngineError(
            f"the upstream server at {shown} answered HTTP {status} (redirects are not followed; "
            f"set the source of model {self._spec.name!r} to the final URL)"
        )

    def _stream_error(self, obj: dict[str, Any]) -> CorralError:
        """An error the upstream reported inside a started stream."""
        message, param, code = error_message(orjson.dumps(obj), self._secret)
        err = obj.get("error")
        status = err.get("code") if isinstance(err, dict) else obj.get("code")
        if isinstance(status, int) and 400 <= status < 500 and status != 429:
            return InvalidRequest(message, param=param, code=code)
        return EngineError(f"the upstream server at {self.url} failed mid-generation: {message}", code="upstream_error")


class _Generation:
    """TextGeneration: chat when ``request.messages``, else text completion. Tools and
    ``response_format`` go upstream as given; an upstream that cannot honour them
    answers 400, which reaches the client as such."""

    honours_tools = True
    honours_response_format = True

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        assert isinstance(self, OpenAICompatibleEngine)
        http = self._client()
        chat = request.messages is not None
        url = f"{self._base}/chat/completions" if chat else f"{self._base}/completions"
        headers = dict(_STREAM_HEADERS)
        headers["x-request-id"] = request.request_id
        if request.traceparent:
            headers["traceparent"] = request.traceparent
        req = http.build_request("POST", url, content=orjson.dumps(upstream_body(self.upstream_model, request)), headers=headers)
        self._in_flight += 1
        try:
            try:
                resp = await http.send(req, stream=True)
            except (httpx.RequestError, OSError) as exc:
                raise self._unreachable("POST", url, exc) from None
            if not 200 <= resp.status_code < 300:
                try:
                    body = await resp.aread()
                except (httpx.RequestError, OSError):
                    body = b""
                finally:
                    await resp.aclose()
                raise self._http_error(resp, body, "POST", url)
        except BaseException:
            self._in_flight -= 1
            raise
        return _Stream(self, request, resp, chat)


class _Embedding:
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        assert isinstance(self, OpenAICompatibleEngine)
        http = self._client()
        url = f"{self._base}/embeddings"
        body: dict[str, Any] = {"model": self.upstream_model, "input": list(request.inputs), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        headers = {**_JSON_HEADERS, "x-request-id": request.request_id}
        self._in_flight += 1
        try:
            try:
                resp = await http.post(url, content=orjson.dumps(body), headers=headers)
            except (httpx.RequestError, OSError) as exc:
                raise self._unreachable("POST", url, exc) from None
        finally:
            self._in_flight -= 1
        if not 200 <= resp.status_code < 300:
            raise self._http_error(resp, resp.content, "POST", url)
        try:
            data = orjson.loads(resp.content)
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [vector(d["embedding"]) for d in items]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise EngineError(
                f"the upstream server at {self.url} answered /embeddings with an unexpected body ({type(exc).__name__})"
            ) from None
        if len(vectors) != len(request.inputs):
            raise EngineError(
                f"the upstream server at {self.url} returned {len(vectors)} vectors for {len(request.inputs)} inputs"
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


class _Stream:
    """The iterator ``generate`` returns. Closing it (even before the first item) closes
    the upstream response, hence its connection: the upstream sees the client leave."""

    def __init__(self, engine: OpenAICompatibleEngine, request: GenerationRequest, resp: httpx.Response, chat: bool) -> None:
        self._engine = engine
        self._request = request
        self._resp = resp
        self._chat = chat
        self._settled = False
        self._gen = self._run()

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> GenerationChunk | GenerationEnd:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._resp.aclose()
            self._settle("cancelled")

    def _settle(self, outcome: str) -> None:
        if self._settled:
            return
        self._settled = True
        engine = self._engine
        engine._in_flight -= 1
        if outcome == "ok":
            engine._completed += 1
        elif outcome == "cancelled":
            engine._cancelled += 1

    async def _run(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        outcome = "cancelled"
        try:
            async with contextlib.aclosing(self._translate()) as items:
                async for item in items:
                    yield item
            outcome = "ok"
        except CorralError:
            outcome = "error"
            raise
        finally:
            await self._resp.aclose()
            self._settle(outcome)

    async def _translate(self) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        engine, request = self._engine, self._request
        n = request.sampling.n
        seen = [False] * n
        finished = [False] * n
        usage: Any = None
        done = False
        if request.echo and request.prompt is not None:  # emulated: few servers echo in a stream
            for i in range(n):
                yield GenerationChunk(i, request.prompt)
        try:
            if self._resp.headers.get("content-type", "").startswith("application/json"):
                events: AsyncGenerator[Any, None] = whole_body(await self._resp.aread())  # the upstream ignored stream: true
            else:
                events = sse(self._resp)
            async with contextlib.aclosing(events):
                async for obj in events:
                    if obj is DONE:
                        done = True
                        break
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
                        text = choice_text(choice, self._chat)
                        calls = choice_tool_calls(choice) if self._chat else ()
                        reason = choice.get("finish_reason")
                        finish = None
                        if reason and not finished[index]:
                            finish = finish_reason(reason, engine.url)
                            finished[index] = True
                        if text or finish is not None or calls:
                            seen[index] = True
                            yield GenerationChunk(index, text, finish, calls)
        except (httpx.RequestError, httpx.StreamError, OSError) as exc:
            raise InstanceLost(
                f"lost the upstream server at {engine.url} mid-stream ({type(exc).__name__})"
            ) from None
        except orjson.JSONDecodeError:
            raise InstanceLost(f"the upstream server at {engine.url} sent an event that is not JSON") from None
        if not all(finished):
            if not done and (not any(seen) or not all(finished[i] for i in range(n) if seen[i])):
                raise InstanceLost(f"the upstream server at {engine.url} ended the stream early")
            missing = [i for i in range(n) if not seen[i]]
            if missing:
                raise EngineError(
                    f"the upstream server at {engine.url} returned {n - len(missing)} of {n} choices; "
                    "it does not seem to support n > 1",
                    param="n",
                )
            for i in range(n):  # [DONE] came without a finish reason for these
                if not finished[i]:
                    yield GenerationChunk(i, "", FinishReason.STOP)
        if not usage:
            if not engine._usage_missing_logged:
                engine._usage_missing_logged = True
                log.debug("the upstream server at %s reports no token usage; counting 0 tokens", engine.url)
            yield GenerationEnd(Usage(0, 0))
        else:
            yield GenerationEnd(Usage(as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))))


