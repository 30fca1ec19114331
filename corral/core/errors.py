"""The one error hierarchy of Corral.

Every layer raises these; each protocol front-end renders them in its own wire format
in one place (``corral.web.errors`` for OpenAI's, ``corral.gateway.<protocol>.errors``
for the others). The fields are protocol-neutral: ``kind`` says what went wrong in
terms every protocol has a word for, ``status`` is the HTTP status a front-end uses
unless its protocol says otherwise (Anthropic's 529), ``code`` is a stable snake-case
name for the case, ``param`` the request field at fault.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"  # the caller's own limits (its key's quota)
    OVERLOADED = "overloaded"  # no capacity right now: retry later
    UNAVAILABLE = "unavailable"  # the model cannot be served now (no ready instance)
    SERVER = "server"


class CorralError(Exception):
    status: int = 500
    kind: ErrorKind = ErrorKind.SERVER
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(CorralError):
    """The request is malformed or asks for something this model cannot do."""

    status = 400
    kind = ErrorKind.INVALID_REQUEST


class Unauthorized(CorralError):
    status = 401
    kind = ErrorKind.AUTHENTICATION
    code = "invalid_api_key"


class ModelNotFound(CorralError):
    status = 404
    kind = ErrorKind.NOT_FOUND
    code = "model_not_found"


class NotFound(CorralError):
    status = 404
    kind = ErrorKind.NOT_FOUND
    code = "not_found"


class Conflict(CorralError):
    status = 409
    kind = ErrorKind.INVALID_REQUEST
    code = "conflict"


class ClientClosed(CorralError):
    """The client went away before its answer was ready; the work was cancelled. Nobody
    reads the response; the status (nginx's 499) is for records and metrics."""

    status = 499
    kind = ErrorKind.INVALID_REQUEST
    code = "client_closed_request"


class PayloadTooLarge(CorralError):
    status = 413
    kind = ErrorKind.TOO_LARGE
    code = "request_too_large"


class Overloaded(CorralError):
    """No capacity right now; the client should retry after ``retry_after`` seconds."""

    status = 429
    kind = ErrorKind.OVERLOADED
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(CorralError):
    """The engine failed while serving a request."""

    status = 500
    kind = ErrorKind.SERVER
    code = "engine_error"


class InstanceLost(EngineError):
    """The instance went away mid-generation (its worker died or the link broke)."""

    status = 503
    code = "instance_lost"


class Unavailable(CorralError):
    """The model exists but no instance can serve it now (loading, draining, failed)."""

    status = 503
    kind = ErrorKind.UNAVAILABLE
    code = "model_unavailable"


class Unreachable(Unavailable):
    """An instance could not be reached before its response started; safe to retry elsewhere."""

    code = "instance_unreachable"


class ConfigError(CorralError):
    """A configuration file or flag is invalid. Raised at start, shown without a traceback."""

    status = 400
    kind = ErrorKind.INVALID_REQUEST
    code = "invalid_config"


class EngineNotInstalled(ConfigError):
    """The engine named by a model spec needs an optional dependency that is missing."""

    code = "engine_not_installed"


class Forbidden(CorralError):
    """The caller is known but may not do this (a key outside its models)."""

    status = 403
    kind = ErrorKind.PERMISSION
    code = "permission_denied"


class HttpError(CorralError):
    """A status the HTTP layer decided (no such route, method not allowed)."""

    def __init__(self, status: int, message: str, kind: ErrorKind = ErrorKind.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class RateLimited(CorralError):
    """The caller's key is over one of its limits (rpm, tpm, concurrency, budget): retry
    after ``retry_after`` seconds. ``headers``: the ``x-ratelimit-*`` headers to send."""

    status = 429
    kind = ErrorKind.RATE_LIMITED
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers or {}
