"""Request limits shared by local engines."""

from __future__ import annotations

from corral.core.errors import InvalidRequest
from corral.core.types import GenerationRequest


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


def require_text(text: str, param: str) -> None:
    """Refuses (400) text that no tokenizer can take: a lone surrogate (``"\\ud800"``)
    is a valid Python ``str`` but not Unicode text, and tokenizers raise on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{param} is not valid Unicode text: a lone surrogate at position {exc.start}",
            param=param,
            code="invalid_value",
        ) from None


def require_choices(n: int, at_once: int) -> None:
    """Refuses (400 on ``n``) more choices than the engine generates at once."""
    if n > at_once:
        raise InvalidRequest(
            f"n={n}: this model generates at most {at_once} choices at once (its max_batch_size)",
            param="n",
            code="invalid_value",
        )


def starting_ids(ids: list[int], bos: int | None, request: GenerationRequest, model: str) -> list[int]:
    """A prompt's token ids, or for one that tokenizes to nothing the beginning-of-text
    token to generate from; refuses (400 ``empty_prompt``) when the model has none."""
    if ids:
        return ids
    if bos is not None:
        return [bos]
    param = "messages" if request.messages is not None else "prompt"
    raise InvalidRequest(
        f"the {param} is empty once tokenized, and model {model!r} has no beginning-of-text "
        "token to start from; send at least one character",
        param=param,
        code="empty_prompt",
    )
