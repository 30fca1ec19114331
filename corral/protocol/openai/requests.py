"""Request bodies of the OpenAI API, as Corral accepts them.

Strict types (``"5"`` is not an integer) so wrong-typed fields get a 400 that names
them; unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients
that send newer parameters keep working. Fields Corral cannot honour are declared so
engines can refuse them explicitly rather than silently ignore them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

_CONFIG = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    model_config = _CONFIG
    type: Literal["text"]
    text: StrictStr


class ContentPart(BaseModel):
    """Any non-text part (image_url, input_audio, file): accepted by the schema, then
    refused by engines that cannot see it."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: StrictStr

    @field_validator("type")
    @classmethod
    def _not_text(cls, value: str) -> str:
        if value == "text":  # a malformed text part must fail, not pass as "some other part"
            raise ValueError("a text part needs a string 'text'")
        return value


class ChatMessageIn(BaseModel):
    model_config = _CONFIG
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart | ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None


class StreamOptions(BaseModel):
    model_config = _CONFIG
    include_usage: bool = False


PositiveInt = Annotated[int, Field(ge=1)]


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _CONFIG
    model: StrictStr
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=8)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    user: StrictStr | None = None
    logit_bias: dict[str, float] | None = None
    # Extension shared with vLLM: keep generating past end-of-sequence (benchmarks).
    ignore_eos: bool = False


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    echo: bool = False
    logprobs: int | None = None
    suffix: StrictStr | None = None
    best_of: int | None = None


class RerankDocument(BaseModel):
    model_config = _CONFIG
    text: StrictStr


class RerankRequestIn(BaseModel):
    """The Jina / Cohere rerank request: documents as strings or ``{"text": ...}``."""

    model_config = _CONFIG
    model: StrictStr
    query: Annotated[StrictStr, Field(min_length=1)]
    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1, max_length=4096)]
    top_n: PositiveInt | None = None
    return_documents: bool = False


class EmbeddingsRequest(BaseModel):
    model_config = _CONFIG
    model: StrictStr
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: StrictStr | None = None
