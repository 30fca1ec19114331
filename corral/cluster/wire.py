"""The internal worker protocol: how a gateway asks a worker's instance to generate or
embed, in compact JSON.

- ``POST /internal/v1/instances/{id}/generate``: body = ``encode_generation(request)``;
  200 and one JSON object per line: ``{"i": choice, "t": text, "f": finish|null}`` deltas
  (with ``"c": [[index, id, name, arguments], ...]`` when the delta carries tool calls,
  ``"q": stop`` when a stop string ended the choice),
  then ``{"u": [prompt_tokens, completion_tokens], "s": [spans]}`` (spans only when the
  request carried a trace context); a failure after the first byte is a
  line ``{"error": {...}}``. Deltas only, never cumulative text. A blank line is a
  keep-alive the worker sends while the engine is silent; readers skip it. A request
  with ``"stream": false`` gets the same lines in one write.
- ``POST /internal/v1/instances/{id}/embed``: body = ``encode_embedding(request)``;
  200 and ``{"v": [[...], ...], "u": [prompt_tokens, 0]}``.
- ``POST /internal/v1/instances/{id}/count_tokens``: body = ``encode_generation(request)``;
  200 and ``{"n": prompt_tokens}`` (nothing generated).
- Any error before the first byte: its HTTP status and ``{"error": {message, type,
  param, code}}``; ``error_from_wire`` rebuilds the same ``CorralError`` on the gateway.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.core.errors import (
    CorralError,
    EngineError,
    InstanceLost,
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
    Tool,
    ToolCall,
    ToolChoice,
    ToolMode,
    ToolCallDelta,
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
                "top_k": s.top_k,
                "repetition_penalty": s.repetition_penalty,
            },
            "messages": None if req.messages is None else [_message_out(m) for m in req.messages],
            "prompt": req.prompt,
            "echo": req.echo,
            "user": req.user,
            "session": req.session,
            "traceparent": req.traceparent,
            "stream": req.stream,
            "tools": [[t.name, t.description, t.parameters, t.strict] for t in req.tools],
            "tool_choice": None if req.tool_choice is None else [req.tool_choice.mode.value, req.tool_choice.name],
            "parallel_tool_calls": req.parallel_tool_calls,
            "response_format": req.response_format,
        }
    )


def _message_out(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content, "name": m.name}
    if m.tool_calls:
        out["tool_calls"] = [[c.id, c.name, c.arguments] for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _message_in(m: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        m["role"], m["content"], m.get("name"),
        tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in m.get("tool_calls", ())),
        m.get("tool_call_id"),
    )


def _tool_choice_in(value: Any) -> ToolChoice | None:
    if value is None:
        return None
    mode, name = value
    return ToolChoice(ToolMode(mode), name)


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
                top_k=int(s.get("top_k", 0)),
                repetition_penalty=float(s.get("repetition_penalty", 1.0)),
            ),
            messages=None
            if d["messages"] is None
            else tuple(_message_in(m) for m in d["messages"]),
            prompt=d["prompt"],
            echo=bool(d["echo"]),
            user=d.get("user"),
            session=d.get("session"),
            traceparent=d.get("traceparent"),
            stream=bool(d.get("stream", True)),
            tools=tuple(Tool(str(n), desc, params, strict) for n, desc, params, strict in d.get("tools") or ()),
            tool_choice=_tool_choice_in(d.get("tool_choice")),
            parallel_tool_calls=d.get("parallel_tool_calls"),
            response_format=d.get("response_format"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed internal generation request: {exc}") from None


def encode_item(item: GenerationChunk | GenerationEnd) -> bytes:
    if isinstance(item, GenerationEnd):
        if item.spans:
            return orjson.dumps({"u": [item.usage.prompt_tokens, item.usage.completion_tokens], "s": item.spans}) + b"\n"
        return b'{"u":[%d,%d]}\n' % (item.usage.prompt_tokens, item.usage.completion_tokens)
    finish = item.finish_reason.value if item.finish_reason is not None else None
    if item.tool_calls or item.stop_sequence is not None:
        out: dict[str, object] = {"i": item.index, "t": item.text, "f": finish}
        if item.tool_calls:
            out["c"] = [[d.index, d.id, d.name, d.arguments] for d in item.tool_calls]
        if item.stop_sequence is not None:
            out["q"] = item.stop_sequence
        return orjson.dumps(out) + b"\n"
    return orjson.dumps({"i": item.index, "t": item.text, "f": finish}) + b"\n"


def decode_item(line: bytes) -> GenerationChunk | GenerationEnd:
    """Raises the carried ``CorralError`` for an error line."""
    d = orjson.loads(line)
    if "t" in d:
        finish = d["f"]
        calls = tuple(ToolCallDelta(i, id_, name, args) for i, id_, name, args in d.get("c", ()))
        return GenerationChunk(d["i"], d["t"], FinishReason(finish) if finish is not None else None, calls, d.get("q"))
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
        "message": exc.message, "kind": exc.kind.value, "param": exc.param, "code": exc.code, "status": exc.status
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
    elif code == InstanceLost.code:  # the engine's upstream went away mid-way: retryable elsewhere
        cls = InstanceLost
    else:
        cls = _BY_STATUS.get(status, EngineError)
    if cls is Overloaded:
        return Overloaded(message, retry_after=float(err.get("retry_after") or 1.0))
    rebuilt = cls(message, param=err.get("param"), code=code)
    if rebuilt.status != status and status >= 400:
        rebuilt.status = status  # e.g. 502 for an upstream that refused the credentials
    return rebuilt
