"""Request limits shared by local engines."""

from __future__ import annotations

from corral.core.errors import InvalidRequest


def context_room(max_context: int, prompt_tokens: int, max_tokens: int | None, prompt_param: str) -> int:
    """Tokens left for the completion; refuses (400 ``context_length_exceeded``) a prompt
    that fills the context, or a ``max_tokens`` that does not fit after it."""
    room = max_context - prompt_tokens
    if room <= 0:
        raise InvalidRequest(
            f"this model's maximum context length is {max_context} tokens; the prompt has {prompt_tokens}",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > room:
        raise InvalidRequest(
            f"this model's maximum context length is {max_context} tokens; the prompt has "
            f"{prompt_tokens} and max_tokens asks for {max_tokens}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return room
