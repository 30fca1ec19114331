"""The internal worker protocol: how a gateway asks a worker's instance to generate or
embed, in compact JSON.

- ``POST /internal/v1/instances/{id}/generate``: body = ``encode_generation(request)``;
  200 and one JSON object per line: ``{"i": choice, "t": text, "f": finish|null}`` deltas,
  then ``{"u": [prompt_tokens, completion_tokens], "s": [spans]}`` (spans only when the
  request carried a trace context); a failure after the first byte is a
  line ``{"error": {...}}``. Deltas only, never cumulative text.
- ``POST /internal/v1/instances/{id}/embed``: body = ``encode_embedding(request)``;
  200 and ``{"v": [[...], ...], "u": [prompt_tokens, 0]}``.
- Any error before the first byte: its HTTP status and ``{"error": {message, type,
  param, code}}``; ``error_from_wire`` rebuilds the same ``CorralError`` on the gateway.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.core.errors import (
    CorralError,
    EngineError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from corral.core.types import (
    ChatMessage,
    EmbeddingRequest,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    RerankRequest,
    SamplingParams,
    Usage,
)


def encode_generation(req: GenerationRequest) -> bytes:
    s = req.sampling
    return orjson.dumps(
        {
            "request_id": req.request_id,
            "model": req.model,
            "sampling": {
                "max_tokens": s.max_tokens,
                "temperature": s.temperature,
                "top_p": s.top_p,
                "stop": list(s.stop),
                "seed": s.seed,
                "n": s.n,
                "ignore_eos": s.ignore_eos,
                "presence_penalty": s.presence_penalty,
                "frequency_penalty": s.frequency_penalty,
            },
            "messages": None
            if req.messages is None
            else [{"role": m.role, "content": m.content, "name": m.name} for m in req.messages],
            "prompt": req.prompt,
            "echo": req.echo,
            "user": req.user,
            "session": req.session,
            "traceparent": req.traceparent,
        }
    )


def decode_generation(body: bytes) -> GenerationRequest:
    try:
        d = orjson.loads(body)
        s = d["sampling"]
        return GenerationRequest(
            request_id=str(d["request_id"]),
            model=str(d["model"]),
            sampling=SamplingParams(
                max_tokens=s["max_tokens"],
                temperature=float(s["temperature"]),
                top_p=float(s["top_p"]),
                stop=tuple(s["stop"]),
                seed=s["seed"],
                n=int(s["n"]),
                ignore_eos=bool(s["ignore_eos"]),
                presence_penalty=float(s["presence_penalty"]),
                frequency_penalty=float(s["frequency_penalty"]),
            ),
            messages=None
            if d["messages"] is None
            else tuple(ChatMessage(m["role"], m["content"], m.get("name")) for m in d["messages"]),
            prompt=d["prompt"],
            echo=bool(d["echo"]),
            user=d.get("user"),
            session=d.get("session"),
            traceparent=d.get("traceparent"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed internal generation request: {exc}") from None


def encode_item(item: GenerationChunk | GenerationEnd) -> bytes:
    if isinstance(item, GenerationEnd):
        if item.spans:
            return orjson.dumps({"u": [item.usage.prompt_tokens, item.usage.completion_tokens], "s": item.spans}) + b"\n"
        return b'{"u":[%d,%d]}\n' % (item.usage.prompt_tokens, item.usage.completion_tokens)
    finish = item.finish_reason.value if item.finish_reason is not None else None
    return orjson.dumps({"i": item.index, "t": item.text, "f": finish}) + b"\n"


def decode_item(line: bytes) -> GenerationChunk | GenerationEnd:
    """Raises the carried ``CorralError`` for an error line."""
    d = orjson.loads(line)
    if "t" in d:
        finish = d["f"]
        return GenerationChunk(d["i"], d["t"], FinishReason(finish) if finish is not None else None)
    if "u" in d:
        return GenerationEnd(Usage(d["u"][0], d["u"][1]), tuple(d.get("s", ())))
    if "error" in d:
        raise error_from_wire(int(d["error"].get("status", 500)), d)
    raise EngineError("malformed line from worker")


def encode_embedding(req: EmbeddingRequest) -> bytes:
    return orjson.dumps(
        {"request_id": req.request_id, "model": req.model, "inputs": list(req.inputs), "dimensions": req.dimensions}
    )


def decode_embedding(body: bytes) -> EmbeddingRequest:
    try:
        d = orjson.loads(body)
        return EmbeddingRequest(
            request_id=str(d["request_id"]),
            model=str(d["model"]),
            inputs=tuple(str(t) for t in d["inputs"]),
            dimensions=d["dimensions"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"malformed internal embedding request: {exc}") from None


def encode_rerank(req: RerankRequest) -> bytes:
    return orjson.dumps(
        {"request_id": req.request_id, "model": req.model, "query": req.query, "documents": list(req.documents)}
    )


def decode_rerank(body: bytes) -> RerankRequest:
    try:
        d = orjson.loads(body)
        return RerankRequest(
            request_id=str(d["request_id"]), model=str(d["model"]), query=str(d["query"]),
            documents=tuple(str(t) for t in d["documents"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"malformed internal rerank request: {exc}") from None


def error_to_wire(exc: CorralError) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code, "status": exc.status
    }
    if isinstance(exc, Overloaded):
        error["retry_after"] = exc.retry_after
    return {"error": error}


_BY_STATUS: dict[int, type[CorralError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    413: PayloadTooLarge,
    429: Overloaded,
    503: Unavailable,
}


def error_from_wire(status: int, body: Any) -> CorralError:
    """Rebuild the worker's error on the gateway, keeping message, param and code."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return EngineError(f"worker answered HTTP {status}")
    message = str(err.get("message") or f"worker answered HTTP {status}")
    code = err.get("code")
    if status == 404:
        cls: type[CorralError] = ModelNotFound if code == "model_not_found" else NotFound
    else:
        cls = _BY_STATUS.get(status, EngineError)
    if cls is Overloaded:
        return Overloaded(message, retry_after=float(err.get("retry_after") or 1.0))
    return cls(message, param=err.get("param"), code=code)
