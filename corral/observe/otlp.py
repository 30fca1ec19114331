"""Exporting the spans of each request over OTLP, configured the OpenTelemetry way.

The standard ``OTEL_*`` environment variables configure it (``export_protocol``): the SDK's
``Resource`` reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, its sampler
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, and batching follows the SDK's
``OTEL_BSP_*``. Corral's spans are measured before they are exported (a worker's arrive
over the wire, see ``observe/tracing.py``), so a finished request's span dicts go to one
of two sinks:

- over HTTP/protobuf (the default), the thin exporter of ``otlp_http`` (encoding by
  ``otlp_wire``): the SDK's path costs about twice its CPU per request (``make bench``),
  and it sends the same bytes (a test compares them);
- over gRPC, or with ``CORRAL_OTLP_EXPORTER=sdk``, the SDK: ``ReadableSpan``s handed to its
  ``BatchSpanProcessor`` and OTLP exporter (which read their own endpoint, headers,
  timeout, compression and certificate variables).

Never on a request's critical path: ``request_finished`` decides sampling and queues the
spans; a thread encodes and sends them. When the collector is slow or down the queue fills
and further spans are dropped, counted in ``dropped_total`` with those that could not be
sent (``corral_spans_dropped_total``). The SDK is the ``corral[otel]`` extra, imported only
here and only when export is configured: a gateway without ``OTEL_*`` settings never loads it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.core.errors import ConfigError
from corral.core.observe import RequestEvent
from corral.observe.contain import MAX_ERROR, MAX_ITEMS, clean
from corral.observe.otlp_http import Batching, HttpConfig, HttpSink, env_value as _env
from corral.observe.otlp_wire import Encoder
from corral.observe.tracing import CLIENT, SERVER, all_spans

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

MAX_TEXT = 64 * 1024  # a captured prompt or completion in a span event (as the records keep it)
_INT64 = (-(2**63), 2**63 - 1)  # OTLP's intValue
_PROTOCOLS = ("http/protobuf", "grpc")


def export_protocol(environ: Mapping[str, str]) -> str | None:
    """The OTLP protocol to export traces with, or None when trace export is not configured.

    On when an OTLP endpoint is set or ``OTEL_TRACES_EXPORTER`` says ``otlp`` (the SDK's
    default endpoint is then used); off with ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``. Raises ``ConfigError`` for what cannot be honoured."""
    if (_env(environ, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    exporter = (_env(environ, "OTEL_TRACES_EXPORTER") or "").lower()
    if exporter == "none":
        return None
    if exporter and exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: Corral exports traces over OTLP only ('otlp' or 'none')")
    if not exporter and not _env(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    protocol = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"OTLP protocol {protocol!r} is not supported: use 'http/protobuf' (the default) or 'grpc'")
    return protocol


def _value(v: Any, limit: int) -> Any:
    """An attribute value as OTLP takes it: strings capped and valid UTF-8, integers
    within int64, lists of one type (as strings otherwise)."""
    if isinstance(v, str):
        return clean(v, limit)
    if isinstance(v, bool | float):
        return v
    if isinstance(v, int):
        return v if _INT64[0] <= v <= _INT64[1] else str(v)
    if isinstance(v, list | tuple):  # OTLP arrays are of one type: anything mixed becomes strings
        items = [_value(x, MAX_ERROR) for x in list(v)[:MAX_ITEMS] if not isinstance(x, list | tuple | dict)]
        return tuple(items) if len({type(x) for x in items}) <= 1 else tuple(str(x) for x in items)
    return clean(str(v), limit)


def _attributes(attrs: Any, limit: int) -> dict[str, Any]:
    if not isinstance(attrs, dict):
        return {}
    return {str(k): _value(v, limit) for k, v in attrs.items() if v is not None}


@dataclass(frozen=True)
class Prepared:
    """One span dict made OTLP-safe, as both exporters send it. Raises ``KeyError``,
    ``TypeError`` or ``ValueError`` for a malformed span (from a worker)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    error: str | None  # the status message of a failed span
    resource_key: tuple[str, str] | None  # (service, worker) of a span a worker measured

    @classmethod
    def of(cls, s: Mapping[str, Any]) -> Prepared:
        ids = [s["trace_id"], s["span_id"], s.get("parent_span_id") or None]
        for value, size in zip(ids, (32, 16, 16)):  # hex of the right length (a parent may be absent)
            if value is not None and (not isinstance(value, str) or len(value) != size or int(value, 16) == 0):
                raise ValueError(f"bad span id {value!r}")
        events = [
            (clean(str(e["name"]), 256), int(float(e["time"]) * 1e9), _attributes(e.get("attributes"), MAX_TEXT))
            for e in s.get("events") or () if isinstance(e, dict)
        ]
        error = s.get("error")
        service = s.get("service")
        worker = (s.get("attributes") or {}).get("corral.worker_id")
        return cls(
            ids[0], ids[1], ids[2], clean(str(s["name"]), 256), str(s.get("kind") or "internal"),
            int(float(s["start"]) * 1e9), int(float(s["end"]) * 1e9), _attributes(s.get("attributes"), MAX_ERROR),
            events, None if error is None else clean(str(error), MAX_ERROR),
            (clean(service, 256), clean(worker, 256) if isinstance(worker, str) else "") if isinstance(service, str) else None,
        )


class _CountingExporter:
    """The SDK's exporter, counting the spans handed to it and those it failed to send
    (written on the processor's thread only; read on the event loop)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.taken = 0
        self.failed = 0
        self.closed = False  # past shutdown, what is left is counted once, by ``OtlpExporter.close``

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self.closed:
            return SpanExportResult.FAILURE
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not kill the processor's thread
            log.exception("OTLP export failed")
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _sdk_exporter(protocol: str) -> SpanExporter:
    """The SDK's OTLP span exporter for ``protocol``; it reads its endpoint, headers,
    timeout, compression and certificates from the environment itself."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class _SdkSink:
    """Spans through the SDK: ``ReadableSpan``s to its ``BatchSpanProcessor`` and OTLP exporter."""

    def __init__(self, protocol: str, batching: Batching, exporter: OtlpExporter) -> None:
        from opentelemetry import trace as api
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.status import Status, StatusCode

        self._owner = exporter
        self._exporter = _CountingExporter(_sdk_exporter(protocol))
        self._processor = BatchSpanProcessor(
            self._exporter, max_queue_size=batching.max_queue, max_export_batch_size=batching.batch_size,  # type: ignore[arg-type]
            schedule_delay_millis=batching.delay_s * 1000,
        )
        self.submitted = 0
        self.malformed = 0  # counted on the event loop (the exporter's counts are its thread's)
        self._api, self._readable, self._event, self._status, self._code = api, ReadableSpan, Event, Status, StatusCode
        self._kinds = {SERVER: api.SpanKind.SERVER, CLIENT: api.SpanKind.CLIENT}

    @property
    def pending(self) -> int:
        return self.submitted - self._exporter.taken

    @property
    def failed(self) -> int:
        return self._exporter.failed + self.malformed

    def submit(self, spans: list[Mapping[str, Any]]) -> None:
        for s in spans:
            try:
                readable = self._to_sdk(Prepared.of(s))
            except (KeyError, TypeError, ValueError):  # a malformed span from a worker
                self.malformed += 1
                continue
            self.submitted += 1
            self._processor.on_end(readable)

    def _to_sdk(self, p: Prepared) -> ReadableSpan:
        api = self._api
        trace_id = int(p.trace_id, 16)
        sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
        context = api.SpanContext(trace_id, int(p.span_id, 16), is_remote=False, trace_flags=sampled)
        # a server span's parent came over the network (the caller's, or the gateway's for a worker)
        parent = api.SpanContext(trace_id, int(p.parent_span_id, 16), is_remote=p.kind == SERVER,
                                 trace_flags=sampled) if p.parent_span_id else None
        status = self._status(self._code.ERROR, p.error) if p.error is not None else self._status(self._code.UNSET)
        return self._readable(
            name=p.name, context=context, parent=parent, resource=self._owner.resource_for(p.resource_key),
            attributes=p.attributes, events=[self._event(name, attrs, t) for name, t, attrs in p.events],
            kind=self._kinds.get(p.kind, api.SpanKind.INTERNAL), status=status,
            start_time=p.start_ns, end_time=p.end_ns, instrumentation_scope=self._owner.scope,
        )

    def force_flush(self, timeout_s: float) -> bool:
        return self._processor.force_flush(int(timeout_s * 1000))

    def close(self, timeout_s: float) -> int:
        """Send what is queued for at most ``timeout_s``; the spans never sent are returned.
        The SDK's shutdown waits up to 30 s for a collector that is down; past ``timeout_s``
        the exporter is shut down under it, which ends its retries."""
        closing = threading.Thread(target=self._processor.shutdown, name="otlp-shutdown", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            self._exporter.shutdown()
        self._exporter.closed = True
        left = self.submitted - self._exporter.taken
        self.submitted = self._exporter.taken
        return left


class OtlpExporter:
    """The observer that exports every sampled request's spans (see the module docstring):
    over HTTP/protobuf with the thin exporter of ``otlp_http`` (or, with
    ``CORRAL_OTLP_EXPORTER=sdk``, the SDK's), over gRPC with the SDK's."""

    def __init__(self, service: str, protocol: str, environ: Mapping[str, str] | None = None) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        import corral

        environ = os.environ if environ is None else environ
        resource = Resource.create({})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service}))  # neither variable named the service
        if "service.version" not in resource.attributes:
            resource = resource.merge(Resource({"service.version": corral.__version__}))
        self.resource: Resource = resource
        # the sampler the SDK configures from OTEL_TRACES_SAMPLER(_ARG) (its default: parentbased_always_on)
        self.sampler = TracerProvider(resource=resource, shutdown_on_exit=False).sampler
        self.scope = InstrumentationScope("corral", corral.__version__)
        self.batching = Batching.from_env(environ)
        self.protocol = protocol
        self._resources: dict[tuple[str, str] | None, Resource] = {None: resource}
        self._refused = 0  # spans dropped on the event loop: the queue was full
        self._lost = 0  # spans still queued when the exporter closed
        from opentelemetry import trace as api

        self._api = api
        self.implementation = "sdk" if protocol == "grpc" or _env(environ, "CORRAL_OTLP_EXPORTER") == "sdk" else "wire"
        if self.implementation == "sdk":
            self._sink: _SdkSink | HttpSink = _SdkSink(protocol, self.batching, self)
        else:
            self._wire = Encoder("corral", corral.__version__)
            self._encoded_resources: dict[tuple[str, str] | None, bytes] = {}
            self._sink = HttpSink(HttpConfig.from_env(environ), self.batching, self._wire, self._encode_span)

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> OtlpExporter | None:
        """An exporter when the environment configures one (``export_protocol``), else None.
        Raises ``ConfigError`` when it does but the SDK is not installed or a value is wrong."""
        environ = os.environ if environ is None else environ
        protocol = export_protocol(environ)
        if protocol is None:
            return None
        try:
            return cls(service, protocol, environ)
        except ImportError as exc:
            raise ConfigError(
                f"OTLP trace export is configured (OTEL_* variables) but the OpenTelemetry SDK is missing ({exc.name}): "
                "pip install 'corral[otel]', or unset OTEL_EXPORTER_OTLP_ENDPOINT"
            ) from None

    @property
    def dropped_total(self) -> int:
        return self._refused + self._sink.failed + self._lost

    def request_finished(self, event: RequestEvent) -> None:
        if event.trace_id is None or not self._sampled(event):
            return
        spans = all_spans(event)
        if self._sink.pending + len(spans) > self.batching.max_queue:
            self._refused += len(spans)  # the collector is slow or down: never wait for it
            return
        self._sink.submit(spans)

    def _sampled(self, event: RequestEvent) -> bool:
        """The sampler's decision for the request's trace (its ratio is by trace id, so every
        gateway and every span of a trace agree); a caller's ``traceparent`` is the parent."""
        api = self._api
        context = None
        if event.parent_span_id is not None:
            parent = api.SpanContext(
                int(event.trace_id, 16), int(event.parent_span_id, 16), is_remote=True,  # type: ignore[arg-type]
                trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED if event.parent_sampled else api.TraceFlags.DEFAULT),
            )
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        result = self.sampler.should_sample(context, int(event.trace_id, 16), event.route, api.SpanKind.SERVER)  # type: ignore[arg-type]
        return result.decision.is_sampled()

    def resource_for(self, key: tuple[str, str] | None) -> Resource:
        """The gateway's resource, or for a span a worker measured, the same under the
        worker's service name and id."""
        resource = self._resources.get(key)
        if resource is None:
            from opentelemetry.sdk.resources import Resource

            assert key is not None
            service, worker = key
            extra = {"service.name": service, **({"service.instance.id": worker} if worker else {})}
            resource = self.resource.merge(Resource(extra))
            if len(self._resources) < 256:  # workers are few; a flood of names is not cached
                self._resources[key] = resource
        return resource

    def _encode_span(self, s: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
        """(encoded resource, encoded span) for the thin exporter, on its thread; None when malformed."""
        try:
            p = Prepared.of(s)
        except (KeyError, TypeError, ValueError):
            return None
        resource = self._encoded_resources.get(p.resource_key)
        if resource is None:
            resource = self._wire.resource(dict(self.resource_for(p.resource_key).attributes))
            if len(self._encoded_resources) < 256:
                self._encoded_resources[p.resource_key] = resource
        span = {"trace_id": p.trace_id, "span_id": p.span_id, "parent_span_id": p.parent_span_id, "name": p.name,
                "kind": p.kind, "start_ns": p.start_ns, "end_ns": p.end_ns}
        return resource, self._wire.span(span, p.attributes, p.events, p.error)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued now (blocking: call it off the event loop)."""
        return self._sink.force_flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, for at most ``timeout_s``, then stop (blocking: off the loop)."""
        self._lost += self._sink.close(timeout_s)
