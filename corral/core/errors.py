"""The one error hierarchy of Corral.

Every layer raises these; the protocol front-ends translate them to wire errors in one
place (``corral.web.errors``). ``status`` is the HTTP status a front-end should use,
``code``/``param`` follow OpenAI's error object.
"""

from __future__ import annotations


class CorralError(Exception):
    status: int = 500
    type: str = "server_error"
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
    type = "invalid_request_error"


class Unauthorized(CorralError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(CorralError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(CorralError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(CorralError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ClientClosed(CorralError):
    """The client went away before its answer was ready; the work was cancelled. Nobody
    reads the response; the status (nginx's 499) is for records and metrics."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class PayloadTooLarge(CorralError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(CorralError):
    """No capacity right now; the client should retry after ``retry_after`` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(CorralError):
    """The engine failed while serving a request."""

    status = 500
    type = "server_error"
    code = "engine_error"


class InstanceLost(EngineError):
    """The instance went away mid-generation (its worker died or the link broke)."""

    status = 503
    code = "instance_lost"


class Unavailable(CorralError):
    """The model exists but no instance can serve it now (loading, draining, failed)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class Unreachable(Unavailable):
    """An instance could not be reached before its response started; safe to retry elsewhere."""

    code = "instance_unreachable"


class ConfigError(CorralError):
    """A configuration file or flag is invalid. Raised at start, shown without a traceback."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_config"


class EngineNotInstalled(ConfigError):
    """The engine named by a model spec needs an optional dependency that is missing."""

    code = "engine_not_installed"
