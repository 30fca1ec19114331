"""What every engine calling an HTTP API upstream shares: the key, the pooled client,
the start-time check, accounting, the stream wrapper, and the mapping of upstream
failures to Corral errors.

Used by the openai-compatible engine (and through it every OpenAI-dialect cloud
provider) and by the anthropic engine; they differ only in URLs, headers, bodies and
the events they translate.

Error mapping, so the gateway can act on it: anything that goes wrong before the
upstream's response starts (refused connection, timeout, HTTP 5xx) is ``Unreachable``
(retried on another instance), 429 and 529 (Anthropic's "overloaded") are ``Overloaded``
with the upstream's ``Retry-After``, 401/403 are a 502 ``upstream_auth`` (the operator's
key, not the client's), a broken stream after the response started is ``InstanceLost``.
Every message names the upstream's HTTP status. The key is never logged nor put in a
message: it is scrubbed from whatever the upstream says, and the upstream's own words
are left out of authentication errors, as some servers echo the key they refused.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
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
from corral.core.spec import ModelSpec
from corral.core.types import EngineLoad, GenerationChunk, GenerationEnd, GenerationRequest, RawEvent
from corral.engines.openai_compatible.options import ConnectionOptions
from corral.engines.openai_compatible.wire import error_message, retry_after
from corral.net.pool import (
    Admission,
    PoolSettings,
    Refused,
    ResponseLines,
    TransportError,
    describe,
    env_proxy,
    make_session,
    open_stream,
)

log = logging.getLogger(__name__)

STREAM_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
OVERLOADED = frozenset({429, 529})  # 529: Anthropic's overloaded_error
_VERIFY_TIMEOUT = 30.0  # seconds the start-time check may take


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


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without user:password, and those as a Basic authorization value."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode("ascii")
    basic = f"Basic {token}"
    return display_url(url), basic


def check_base_url(model: str, engine: str, url: str, what: str) -> str:
    """``url`` without its trailing slash, or a ConfigError if it is not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"model {model!r}: engine {engine!r} needs an http(s) URL as {what}, "
            f"e.g. http://127.0.0.1:8080/v1 (got {display_url(url)!r})",
            param=what,
        )
    return url.rstrip("/")


def key_hint(options: ConnectionOptions, default_env: str | None) -> str:
    """Where the operator should look when the upstream refuses the key."""
    if options.api_key is not None:
        return "options.api_key"
    if options.api_key_file is not None:
        return f"the key in options.api_key_file ({options.api_key_file})"
    env = options.api_key_env or default_env
    return f"the key in ${env} (options.api_key_env)" if env else "options.api_key / api_key_env / api_key_file"


def resolve_key(model: str, options: ConnectionOptions, default_env: str | None) -> str | None:
    """The upstream's key from options.api_key, a secrets file, or an environment
    variable (options.api_key_env, else the provider's usual one). None when no key is
    configured and the engine needs none; a ConfigError naming what to set otherwise."""
    if options.api_key is not None:
        return options.api_key.get_secret_value()
    if options.api_key_file is not None:
        return _key_from_file(model, Path(options.api_key_file).expanduser())
    env = options.api_key_env or default_env
    if env is None:
        return None
    value = os.environ.get(env, "").strip()
    if not value:
        raise ConfigError(
            f"model {model!r}: no API key: set the environment variable {env} "
            "(or options.api_key_env / api_key_file to take it from elsewhere)",
            param="options.api_key_env",
        )
    return value


def _key_from_file(model: str, path: Path) -> str:
    try:
        mode = path.stat().st_mode
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"model {model!r}: cannot read options.api_key_file {str(path)!r} ({exc.strerror or type(exc).__name__})",
            param="options.api_key_file",
        ) from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("the key file %s of model %s is readable by other users; chmod 600 it", path, model)
    if not value:
        raise ConfigError(f"model {model!r}: options.api_key_file {str(path)!r} is empty", param="options.api_key_file")
    return value


class UpstreamEngine:
    """Lifecycle, accounting, the start-time check and error mapping of an engine whose
    work is done by an HTTP API. Subclasses say how to authenticate and where to look."""

    def __init__(
        self, spec: ModelSpec, options: ConnectionOptions, *, base: str, upstream_model: str,
        vendor: str, default_key_env: str | None, model_hint: str,
    ) -> None:
        self._spec = spec
        self._opts = options
        self._base = base
        self.url = display_url(base)
        self.upstream_model = upstream_model
        self._vendor = vendor  # "the upstream server", "Anthropic", ...
        self._default_key_env = default_key_env
        self._model_hint = model_hint  # where the upstream model is configured, for a 404
        self._key_hint = key_hint(options, default_key_env)
        self._http: aiohttp.ClientSession | None = None
        # waiting for one of the pool's connections is backpressure (a bounded queue,
        # then 429), never a connect timeout that would count against the upstream
        self._admission = Admission(
            options.max_connections, options.max_queued, options.queue_timeout_s, f"{vendor} at {self.url}"
        )
        self._secret: str | None = None
        self._in_flight = 0
        self._completed = 0
        self._cancelled = 0

    # -- what subclasses say ----------------------------------------------------------

    def _auth_headers(self, secret: str | None) -> dict[str, str]:
        raise NotImplementedError

    def _models_url(self) -> str:
        raise NotImplementedError

    def _lists_models(self) -> bool:
        """Whether the models list names the upstream model when it serves it."""
        return True

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._secret = resolve_key(self._spec.name, self._opts, self._default_key_env)
        headers = {**self._opts.extra_headers, **self._auth_headers(self._secret)}
        self._base, basic = split_credentials(self._base)
        if basic is not None and not any(k.lower() == "authorization" for k in headers):
            headers["authorization"] = basic  # user:password in the URL, as curl would send it
        settings = PoolSettings(
            connect_timeout_s=self._opts.connect_timeout_s, read_timeout_s=self._opts.timeout_s,
            max_connections=self._opts.max_connections, proxy=env_proxy(self._base),
        )
        http = make_session(settings, headers)
        try:
            if self._opts.verify_on_start:
                await self._verify(http)
        except BaseException:
            await http.close()
            raise
        self._http = http
        log.info("model %s attached to %s (upstream model %r)", self._spec.name, self.url, self.upstream_model)

    async def _verify(self, http: aiohttp.ClientSession) -> None:
        """GET the models list: proves the upstream is reachable and takes the key."""
        url = self._models_url()
        shown = display_url(url)
        try:
            timeout = aiohttp.ClientTimeout(total=min(self._opts.timeout_s, _VERIFY_TIMEOUT))
            async with http.get(url, timeout=timeout, allow_redirects=False) as resp:
                status, content = resp.status, await resp.read()
        except TransportError as exc:
            raise Unreachable(
                f"model {self._spec.name!r}: {self._vendor} at {shown} is unreachable "
                f"({self._scrub(describe(exc))}); is it running?"
            ) from None
        if status in (401, 403):
            raise self._auth_error(status, "GET", url)
        if status in (404, 405):
            hint = "" if self._base.endswith("/v1") else " (does the base URL need to end with /v1?)"
            log.warning("%s at %s answered HTTP %d to GET its models list%s", self._vendor, shown, status, hint)
            return
        if status >= 300:
            raise Unreachable(
                f"model {self._spec.name!r}: {self._vendor} at {shown} answered HTTP {status}: "
                f"{error_message(content, self._secret)[0]}"
            )
        if not self._lists_models():
            return
        try:
            listed = [str(m.get("id")) for m in orjson.loads(content).get("data") or ()]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            log.warning("%s at %s answered GET %s with something else than a model list", self._vendor, shown, url)
            return
        if listed and self.upstream_model not in listed:
            log.warning(
                "%s at %s does not list model %r (it lists: %s)",
                self._vendor, self.url, self.upstream_model, ", ".join(listed[:10]),
            )

    async def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def load(self) -> EngineLoad:
        return EngineLoad(
            in_flight=self._in_flight, queued=self._admission.waiting, cancelled_total=self._cancelled,
            completed_total=self._completed,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        return self._http

    # -- requests --------------------------------------------------------------------

    async def _post_stream(self, url: str, body: dict[str, Any], request: GenerationRequest) -> ResponseLines:
        """POST ``body`` and return the started response (2xx), once a pooled connection
        is free (``Overloaded`` if none frees in time); counts the request in flight
        until the stream wrapping the response settles."""
        http = self._client()
        headers = {**STREAM_HEADERS, "x-request-id": request.request_id}
        if request.traceparent:
            headers["traceparent"] = request.traceparent
        slot = await self._admission.acquire()
        self._in_flight += 1
        try:
            return await open_stream(http, url, orjson.dumps(body), headers, slot=slot)
        except TransportError as exc:
            self._in_flight -= 1
            raise self._unreachable("POST", url, exc) from None
        except Refused as refused:
            self._in_flight -= 1
            raise self._http_error(refused.status, refused.headers, refused.body, "POST", url) from None
        except BaseException:
            self._in_flight -= 1
            raise

    # -- errors ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _unreachable(self, method: str, url: str, exc: BaseException) -> Unreachable:
        return Unreachable(f"{self._vendor} at {display_url(url)} did not answer {method} ({self._scrub(describe(exc))})")

    def _auth_error(self, status: int, method: str, url: str) -> EngineError:
        err = EngineError(
            f"{self._vendor} at {display_url(url)} rejected Corral's credentials for {method} (HTTP {status}); "
            f"check {self._key_hint} of model {self._spec.name!r}",
            code="upstream_auth",
        )
        err.status = 502
        return err

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes, method: str, url: str) -> CorralError:
        shown = display_url(url)
        message, param, code = error_message(body, self._secret)
        if status in (401, 403):
            return self._auth_error(status, method, url)
        if status == 404:
            return InvalidRequest(
                f"{self._vendor} at {shown} has no model {self.upstream_model!r} or does not serve this "
                f"endpoint (HTTP 404: {message}); check {self._model_hint} of model {self._spec.name!r}",
                param="model",
                code="model_not_found",
            )
        if status in OVERLOADED:
            return Overloaded(
                f"{self._vendor} at {shown} is at capacity (HTTP {status}): {message}", retry_after=retry_after(headers)
            )
        if status == 408 or status >= 500:
            return Unreachable(f"{self._vendor} at {shown} answered HTTP {status}: {message}")
        if 400 <= status < 500:
            return InvalidRequest(message, param=param, code=code)
        return EngineError(
            f"{self._vendor} at {shown} answered HTTP {status} (redirects are not followed; "
            f"set the base URL of model {self._spec.name!r} to the final URL)"
        )


class UpstreamStream:
    """The iterator ``generate`` returns: ``items`` (an engine's translation of the
    upstream's events) with the accounting and connection handling around it. Closing
    it (even before the first item) closes the upstream response, hence its connection,
    which HTTP APIs take as "client gone" and abort the generation."""

    def __init__(
        self, engine: UpstreamEngine, resp: ResponseLines, items: AsyncGenerator[GenerationChunk | GenerationEnd | RawEvent, None]
    ) -> None:
        self._engine = engine
        self._resp = resp
        self._items = items
        self._settled = False
        self._gen = self._run()

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> GenerationChunk | GenerationEnd | RawEvent:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._items.aclose()  # never started when closed before the first item
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

    async def _run(self) -> AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]:
        outcome = "cancelled"
        engine = self._engine
        try:
            try:
                async with contextlib.aclosing(self._items) as items:
                    async for item in items:
                        yield item
            except TransportError as exc:
                raise InstanceLost(f"lost {engine._vendor} at {engine.url} mid-stream ({type(exc).__name__})") from None
            except orjson.JSONDecodeError:
                raise InstanceLost(f"{engine._vendor} at {engine.url} sent an event that is not JSON") from None
            outcome = "ok"
        except CorralError:
            outcome = "error"
            raise
        finally:
            await self._resp.aclose()
            self._settle(outcome)
