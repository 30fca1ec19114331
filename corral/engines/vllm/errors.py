"""vLLM's exceptions as Corral errors, for the vllm engine.

vLLM 0.33 has its own hierarchy (vllm/exceptions.py, vllm/v1/engine/exceptions.py):
``VLLMClientError`` (``VLLMValidationError`` among them, not a ``ValueError``) is the
request's fault; ``GracefulHTTPError`` is an admission rejection (its queue limits);
``EngineDeadError`` means the engine can serve no more; anything else leaves
``AsyncLLM.generate`` as ``EngineGenerateError``. The classes are only known once vLLM is
imported (on the loader thread), hence ``VLLMErrors.load``.
"""

from __future__ import annotations

import dataclasses

from corral.core.errors import CorralError, EngineError, InvalidRequest, Overloaded

# Request fields under the same name in vLLM's SamplingParams and in the OpenAI API: a
# vLLM message starting with one of them is about that field when vLLM names none.
_SAMPLING_FIELDS = frozenset(
    {"n", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
     "repetition_penalty"}
)


@dataclasses.dataclass(frozen=True)
class VLLMErrors:
    client: tuple[type[BaseException], ...]
    busy: tuple[type[BaseException], ...]
    dead: tuple[type[BaseException], ...]

    @classmethod
    def load(cls) -> VLLMErrors:
        """The classes of the installed vLLM (call after importing it)."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        return cls(client=(VLLMClientError,), busy=(GracefulHTTPError,), dead=(EngineDeadError,))

    def is_dead(self, exc: BaseException) -> bool:
        return isinstance(exc, self.dead)

    def translate(self, exc: BaseException, model: str, prompt_param: str) -> CorralError:
        """The Corral error for ``exc``, raised by vLLM for a request of ``model``."""
        if isinstance(exc, CorralError):
            return exc
        message = str(exc.args[0]) if exc.args else str(exc)  # without vLLM's "(parameter=...)" suffix
        if isinstance(exc, self.client):
            return InvalidRequest(
                f"vLLM refused the request: {message}", param=_param(exc, message, prompt_param), code="invalid_value"
            )
        if isinstance(exc, self.busy):
            # vLLM answers 503 so that its own clients retry elsewhere; Corral's word for
            # "no capacity now, retry" is Overloaded (429 with Retry-After)
            return Overloaded(f"model {model!r} is at its vLLM request limit: {message}")
        cause = exc.__cause__ or exc  # EngineGenerateError carries the real failure as its cause
        return EngineError(f"model {model!r} failed while generating: {type(cause).__name__}: {cause}")


def _param(exc: BaseException, message: str, prompt_param: str) -> str | None:
    named = getattr(exc, "parameter", None)
    if isinstance(named, str) and named:
        return named
    first = message.split(" ", 1)[0]
    if first in _SAMPLING_FIELDS:  # "n must be 1 when using greedy sampling", "stop cannot contain ..."
        return first
    if "prompt" in message.split(" ", 3)[:3]:  # "The decoder prompt (length ...) is longer ..."
        return prompt_param
    return None
