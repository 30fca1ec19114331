"""Builders of OpenAI response bodies and stream chunks.

Plain dicts serialised once with orjson: on the streaming hot path a pydantic model per
chunk costs more than the engine's own work for a small model.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


ChoiceOut = tuple[str, str | None, list[dict[str, Any]]]  # text, finish reason, tool calls (see tool_call)


def tool_call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_call_delta(index: int, id_: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    """A streamed fragment: id, type and name only in a call's first fragment."""
    out: dict[str, Any] = {"index": index}
    function: dict[str, Any] = {}
    if id_ is not None:
        out["id"] = id_
        out["type"] = "function"
    if name is not None:
        function["name"] = name
    function["arguments"] = arguments
    out["function"] = function
    return out


def chat_message(text: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    if not tool_calls:
        return {"role": "assistant", "content": text}
    # OpenAI sends null content beside tool calls when the model wrote no text
    return {"role": "assistant", "content": text or None, "tool_calls": tool_calls}


def chat_completion(
    id_: str, created: int, model: str, choices: list[ChoiceOut], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": chat_message(text, calls),
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish, calls) in enumerate(choices)
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def text_completion(
    id_: str, created: int, model: str, choices: list[ChoiceOut], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish, _) in enumerate(choices)
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def chat_delta(
    index: int, content: str | None, finish: str | None, first: bool, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": content or ""} if first else {}
    if content and not first:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
        if first and not content:
            delta["content"] = None
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def text_delta(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def embeddings(model: str, vectors: list[list[float]], encoding: str, prompt_tokens: int) -> dict[str, Any]:
    if encoding == "base64":
        import array

        def encode(v: list[float]) -> Any:
            return base64.b64encode(array.array("f", v).tobytes()).decode("ascii")

    else:

        def encode(v: list[float]) -> Any:
            return v

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def rerank(
    id_: str, model: str, ranked: list[tuple[int, float]], documents: list[str] | None, prompt_tokens: int
) -> dict[str, Any]:
    """``ranked``: (document index, relevance score), best first."""
    return {
        "id": id_,
        "model": model,
        "results": [
            {"index": i, "relevance_score": score, **({"document": {"text": documents[i]}} if documents else {})}
            for i, score in ranked
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def models_list(names: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "corral"} for name, created in names],
    }


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkFrames:
    """SSE frames of one stream's chunks. The fields every chunk repeats (id, object,
    created, model...) are encoded once; each frame encodes only its choice."""

    __slots__ = ("_head",)

    def __init__(self, base: dict[str, Any]) -> None:
        self._head = b"data: " + orjson.dumps(base)[:-1] + b',"choices":['

    def frame(self, choice: dict[str, Any]) -> bytes:
        return self._head + orjson.dumps(choice) + b"]}\n\n"
