"""OpenAI's error object, and the words its ``type`` field uses for each error kind."""

from __future__ import annotations

from typing import Any

# ErrorKind value -> OpenAI's error type (OpenAI reports a missing model as an invalid request)
ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "overloaded": "rate_limit_error",
    "unavailable": "server_error",
    "server": "server_error",
}


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``kind`` is an ``ErrorKind`` value (protocol types do not import Corral's core)."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(kind, "server_error"), "param": param, "code": code}}
