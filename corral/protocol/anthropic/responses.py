"""Response bodies and stream events of Anthropic's Messages API, as plain dicts and
bytes (orjson): a whole ``message``, the server-sent events of a streamed one, the
``count_tokens`` answer and the error object with the status each error type has."""

from __future__ import annotations

from typing import Any

import orjson

# ErrorKind value (protocol types import nothing from Corral) -> (Anthropic's error type,
# its status; None keeps Corral's). "overloaded" and "unavailable" are both "no capacity
# now, retry later", which Anthropic's clients know as 529 overloaded_error.
ERRORS: dict[str, tuple[str, int | None]] = {
    "invalid_request": ("invalid_request_error", None),  # 400, and 405/409/499 as Corral has them
    "authentication": ("authentication_error", 401),
    "permission": ("permission_error", 403),
    "not_found": ("not_found_error", 404),
    "too_large": ("request_too_large", 413),
    "rate_limited": ("rate_limit_error", 429),
    "overloaded": ("overloaded_error", 529),
    "unavailable": ("overloaded_error", 529),
    "server": ("api_error", None),  # 500, or the 5xx Corral chose (502 from an upstream, 504)
}


def error_type(kind: str, status: int) -> tuple[str, int]:
    """(Anthropic's error type, the HTTP status) for a Corral error of ``kind``."""
    name, fixed = ERRORS.get(kind, ("api_error", None))
    return name, fixed if fixed is not None else status


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(id_: str, name: str, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def message(
    id_: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    stop_sequence: str | None,
    usage_: dict[str, int],
) -> dict[str, Any]:
    return {
        "id": id_, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage_,
    }


def token_count(input_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens}


# -- the stream ---------------------------------------------------------------------------


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event; ``data`` carries its ``type`` as Anthropic's do."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING = event("ping", {"type": "ping"})
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})


def message_start(id_: str, model: str, input_tokens: int) -> bytes:
    body = message(id_, model, [], None, None, usage(input_tokens, 0))
    return event("message_start", {"type": "message_start", "message": body})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


# the frame every token takes, filled in place: no dict to build and encode per token
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'
_JSON_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
)


def text_delta(index: int, text: str) -> bytes:
    return _TEXT_DELTA % (index, orjson.dumps(text))


def json_delta(index: int, partial_json: str) -> bytes:
    return _JSON_DELTA % (index, orjson.dumps(partial_json))


def block_stop(index: int) -> bytes:
    return event("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str | None, stop_sequence: str | None, usage_: dict[str, int]) -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
    return event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_})


def error_event(kind: str, message_: str) -> bytes:
    return event("error", error_body(kind, message_))
