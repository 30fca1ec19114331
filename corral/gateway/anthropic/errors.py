"""Corral errors in Anthropic's format: ``{"type": "error", "error": {"type", "message"}}``
with the status Anthropic gives each type (529 ``overloaded_error`` for no capacity).

Corral's ``param`` has no field of its own in Anthropic's error object, so the message
names it (``messages[0].content: ...``), as Anthropic's own messages do.
"""

from __future__ import annotations

from starlette.responses import Response

from corral.core.errors import CorralError
from corral.protocol.anthropic import responses as wire
from corral.web.errors import retry_headers
from corral.web.responses import json_response


def error_of(exc: CorralError) -> tuple[str, str]:
    """(Anthropic's error type, the message) of ``exc``."""
    kind, _ = wire.error_type(exc.kind.value, exc.status)
    message = exc.message
    if exc.param and exc.param not in message:
        message = f"{exc.param}: {message}"
    return kind, message


def render_error(exc: CorralError) -> Response:
    kind, status = wire.error_type(exc.kind.value, exc.status)
    return json_response(status, wire.error_body(kind, error_of(exc)[1]), retry_headers(exc))
