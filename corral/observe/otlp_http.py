"""The thin OTLP/HTTP (protobuf) exporter: Corral's span dicts, batched on a thread,
encoded by ``otlp_wire`` and sent with httpx.

It exists because the numbers said so (``make bench``, docs/observability.md#traces): on
the SDK's path a request's three spans cost about 0.3 ms of CPU, close to what the gateway
spends on the whole request; here about a third. It honours the same variables as the SDK's
HTTP exporter, resolved the same way (``HttpConfig.from_env``): the endpoint (the traces
one as it is, else the base one plus ``/v1/traces``, else ``http://localhost:4318``),
headers (parsed by the OpenTelemetry API's own ``parse_env_headers``), the timeout in
seconds (default 10), ``gzip``/``deflate`` compression, the CA certificate and a client
certificate and key; and it batches by the SDK's ``OTEL_BSP_*`` variables. Like the SDK it
retries a transient failure (no connection, 429, 502, 503, 504) with exponential backoff
within the timeout, and drops what still fails, counted. The gRPC protocol, and HTTP with
``CORRAL_OTLP_EXPORTER=sdk``, use the SDK's exporter instead (``observe/otlp.py``).
"""

from __future__ import annotations

import gzip
import logging
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from corral.core.errors import ConfigError
from corral.observe.otlp_wire import Encoder

log = logging.getLogger(__name__)

_TRANSIENT = frozenset({429, 502, 503, 504})


def env_value(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of the variables ``names`` that is set and not blank, stripped."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = env_value(environ, name)
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not an integer") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return value


@dataclass(frozen=True)
class Batching:
    """The SDK's batch span processor settings (``OTEL_BSP_*``, same defaults)."""

    max_queue: int = 2048
    batch_size: int = 512
    delay_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Batching:
        batching = cls(
            _positive_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
            _positive_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
            _positive_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
        )
        if batching.batch_size > batching.max_queue:
            raise ConfigError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE")
        return batching


@dataclass(frozen=True)
class HttpConfig:
    endpoint: str
    headers: dict[str, str]
    timeout_s: float
    compression: str  # none | gzip | deflate
    verify: str | bool
    cert: tuple[str, str] | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpConfig:
        from opentelemetry.util.re import parse_env_headers

        import corral

        def var(name: str) -> str | None:
            return env_value(environ, f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}")

        endpoint = env_value(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            (env_value(environ, "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318").removesuffix("/") + "/v1/traces"
        )
        headers = {"content-type": "application/x-protobuf", "user-agent": f"corral/{corral.__version__}"}
        headers.update(parse_env_headers(var("HEADERS") or "", liberal=True))
        try:
            timeout = float(var("TIMEOUT") or 10)
        except ValueError:
            raise ConfigError(f"OTEL_EXPORTER_OTLP_TIMEOUT={var('TIMEOUT')!r}: not a number of seconds") from None
        compression = (var("COMPRESSION") or "none").lower()
        if compression not in ("none", "gzip", "deflate"):
            raise ConfigError(f"OTLP compression {compression!r}: use gzip, deflate or none")
        key, certificate = var("CLIENT_KEY"), var("CLIENT_CERTIFICATE")
        return cls(endpoint, headers, timeout, compression, var("CERTIFICATE") or True,
                   (certificate, key) if certificate and key else None)


class HttpSink:
    """Spans queued from the event loop, sent in batches from a thread (see the module
    docstring). ``submit`` never waits; the counters are written by one thread each."""

    def __init__(self, config: HttpConfig, batching: Batching, encoder: Encoder,
                 encode_span: Callable[[Mapping[str, Any]], tuple[bytes, bytes] | None]) -> None:
        self._config, self._batching, self._encoder, self._encode_span = config, batching, encoder, encode_span
        self._queue: deque[Mapping[str, Any]] = deque()
        self.submitted = 0  # spans queued (event loop)
        self.taken = 0  # spans taken off the queue (the thread)
        self.failed = 0  # spans the thread could not send or encode
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flushed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="otlp-http", daemon=True)
        self._client = httpx.Client(timeout=config.timeout_s, verify=config.verify, cert=config.cert,
                                    headers=config.headers)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self.submitted - self.taken

    def submit(self, spans: list[Mapping[str, Any]]) -> None:
        self._queue.extend(spans)
        self.submitted += len(spans)
        if len(self._queue) >= self._batching.batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._batching.delay_s)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        while self._queue and not self._stopping.is_set():
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batching.batch_size))]
            self.taken += len(batch)
            try:
                self._send(batch)
            except Exception:  # a bug here must not end the thread: the batch is lost, counted
                log.exception("OTLP export failed")
                self.failed += len(batch)
        with self._flushed:
            self._flushed.notify_all()

    def _send(self, batch: list[Mapping[str, Any]]) -> None:
        groups: dict[bytes, list[bytes]] = {}
        for s in batch:
            encoded = self._encode_span(s)
            if encoded is None:  # malformed
                self.failed += 1
                continue
            resource, span = encoded
            groups.setdefault(resource, []).append(span)
        if not groups:
            return
        body = self._encoder.request(groups.items())
        headers = {}
        if self._config.compression == "gzip":
            body, headers = gzip.compress(body), {"content-encoding": "gzip"}
        elif self._config.compression == "deflate":
            body, headers = zlib.compress(body), {"content-encoding": "deflate"}
        count = sum(len(spans) for spans in groups.values())
        deadline = time.monotonic() + self._config.timeout_s
        delay = 1.0
        while True:
            problem = self._post(body, headers)
            if problem is None:
                return
            transient, what = problem
            wait = delay * random.uniform(0.8, 1.2)
            if not transient or time.monotonic() + wait > deadline or self._stopping.is_set():
                log.warning("dropping %d spans: OTLP export to %s failed (%s)", count, self._config.endpoint, what)
                self.failed += count
                return
            self._stopping.wait(wait)
            delay *= 2

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str] | None:
        """None when the collector took it, else (transient, what went wrong)."""
        try:
            resp = self._client.post(self._config.endpoint, content=body, headers=headers)
        except httpx.TransportError as exc:
            return True, type(exc).__name__
        if resp.status_code < 300:
            return None
        return resp.status_code in _TRANSIENT, f"HTTP {resp.status_code}"

    def force_flush(self, timeout_s: float) -> bool:
        """Wait (blocking) until what is queued now was sent or dropped."""
        deadline = time.monotonic() + timeout_s
        target = self.submitted
        with self._flushed:
            while self.taken < target and time.monotonic() < deadline:
                self._wake.set()
                self._flushed.wait(0.05)
        return self.taken >= target

    def close(self, timeout_s: float) -> int:
        """Send what is queued for at most ``timeout_s`` (blocking), stop; the spans never
        sent (still queued) are returned."""
        deadline = time.monotonic() + timeout_s
        self.force_flush(timeout_s)
        self._stopping.set()  # ends a retry's wait at once
        self._wake.set()
        self._thread.join(max(deadline - time.monotonic(), 0.1))
        left = len(self._queue)
        self._queue.clear()
        self._client.close()
        return left
