"""Fake of ``vllm.exceptions``: vLLM 0.33's error classes, under the same names.

Checked against vllm/exceptions.py of the vLLM 0.33.0 wheel (line numbers below). What
matters to the adapter is the hierarchy: ``VLLMValidationError`` is a ``VLLMClientError``
(4xx) and not a ``ValueError``; the queue limits raise ``GracefulHTTPError`` subclasses.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class VLLMError(Exception):  # vllm/exceptions.py:10
    """Base class for all vLLM-specific errors."""


class VLLMClientError(VLLMError):  # vllm/exceptions.py:20
    """Caused by the client request (4xx)."""


class VLLMServerError(VLLMError):  # vllm/exceptions.py:24
    """Caused by the server (5xx)."""


class VLLMValidationError(VLLMClientError):  # vllm/exceptions.py:28-56
    """A request validation failure, naming the parameter when vLLM knows it."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:  # vllm/exceptions.py:49-56
        base = super().__str__()
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        return f"{base} ({', '.join(extras)})" if extras else base


class GenerationError(VLLMServerError):  # vllm/exceptions.py:131
    def __init__(self, message: str = "Internal server error") -> None:
        super().__init__(message)
        self.status_code = HTTPStatus.INTERNAL_SERVER_ERROR


class GracefulHTTPError(VLLMError):  # vllm/exceptions.py:147
    """An expected rejection (admission control) carrying its HTTP status."""

    def __init__(self, message: str, http_status: HTTPStatus) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class QueueOverflowError(GracefulHTTPError):  # vllm/exceptions.py:162-174
    """Admitting the request would exceed ``max_num_queued_reqs``."""

    def __init__(self) -> None:
        super().__init__(
            "The engine is currently busy and cannot accept new requests. "
            "Please try again later or on a different instance.",
            HTTPStatus.SERVICE_UNAVAILABLE,
        )


class MaxQueuedTokensError(GracefulHTTPError):  # vllm/exceptions.py:177-189
    """The pending prefill tokens exceed ``max_num_queued_tokens``."""

    def __init__(self) -> None:
        super().__init__(
            "The engine has reached its prefill token backlog limit. "
            "Please try again later or on a different instance.",
            HTTPStatus.SERVICE_UNAVAILABLE,
        )
