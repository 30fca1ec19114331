"""OpenAI request models -> Corral's internal request types.

Parameters no engine of this build can honour are refused here with a 400 naming the
field, rather than silently ignored. Tools and ``response_format`` pass through; the
router refuses them for models whose engine does not honour them.
"""

from __future__ import annotations

from corral.core.errors import InvalidRequest
from corral.core.types import (
    ChatMessage,
    EmbeddingRequest,
    GenerationRequest,
    RerankRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    ToolMode,
)
from corral.protocol.openai.requests import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    EmbeddingsRequest,
    NamedToolChoice,
    RerankRequestIn,
    SamplingFields,
    TextPart,
)


def _refuse(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this server's engines", param=param, code="unsupported_parameter")


def _sampling(req: SamplingFields, max_tokens: int | None) -> SamplingParams:
    if req.logit_bias:
        raise _refuse("logit_bias", "logit_bias")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop,
        seed=req.seed,
        n=req.n,
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        top_k=max(req.top_k, 0),
        repetition_penalty=req.repetition_penalty,
        unset=frozenset(k for k in ("temperature", "top_p") if getattr(req, k) is None),
    )


def _message(i: int, msg: ChatMessageIn) -> ChatMessage:
    if isinstance(msg.content, list):
        parts = []
        for j, part in enumerate(msg.content):
            if not isinstance(part, TextPart):
                raise _refuse(f"messages[{i}].content[{j}]", f"content of type {part.type!r}")
            parts.append(part.text)
        content = "".join(parts)
    else:
        content = msg.content or ""
    role = "system" if msg.role == "developer" else msg.role
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls or ())
    return ChatMessage(role=role, content=content, name=msg.name, tool_calls=calls, tool_call_id=msg.tool_call_id)


def chat(
    req: ChatCompletionRequest, request_id: str, session: str | None = None, traceparent: str | None = None
) -> GenerationRequest:
    if req.logprobs:
        raise _refuse("logprobs", "logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return GenerationRequest(
        request_id=request_id,
        model=req.model,
        sampling=_sampling(req, max_tokens),
        messages=tuple(_message(i, m) for i, m in enumerate(req.messages)),
        user=req.user,
        session=session,
        traceparent=traceparent,
        stream=req.stream,
        tools=tuple(Tool(t.function.name, t.function.description, t.function.parameters, t.function.strict) for t in req.tools or ()),
        tool_choice=_tool_choice(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=None
        if req.response_format is None or req.response_format.type == "text"
        else req.response_format.model_dump(exclude_unset=True, by_alias=True),
    )


def _tool_choice(value: str | NamedToolChoice | None) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, NamedToolChoice):
        return ToolChoice(ToolMode.NAMED, value.function.name)
    return ToolChoice(ToolMode(value))


def completions(
    req: CompletionRequest, request_id: str, session: str | None = None, traceparent: str | None = None
) -> list[GenerationRequest]:
    if req.logprobs is not None:
        raise _refuse("logprobs", "logprobs")
    if req.suffix:
        raise _refuse("suffix", "suffix (fill-in-the-middle)")
    if req.best_of not in (None, 1):
        raise _refuse("best_of", "best_of")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    sampling = _sampling(req, req.max_tokens)
    return [
        GenerationRequest(
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
            model=req.model,
            sampling=sampling,
            prompt=prompt,
            echo=req.echo,
            user=req.user,
            session=session,
            traceparent=traceparent,
            stream=req.stream,
        )
        for i, prompt in enumerate(prompts)
    ]


def rerank(req: RerankRequestIn, request_id: str) -> RerankRequest:
    docs = tuple(d if isinstance(d, str) else d.text for d in req.documents)
    return RerankRequest(request_id=request_id, model=req.model, query=req.query, documents=docs)


def embeddings(req: EmbeddingsRequest, request_id: str) -> EmbeddingRequest:
    inputs = (req.input,) if isinstance(req.input, str) else tuple(req.input)
    for i, text in enumerate(inputs):
        if not text:
            raise InvalidRequest("input must not contain empty strings", param=f"input[{i}]" if len(inputs) > 1 else "input")
    return EmbeddingRequest(request_id=request_id, model=req.model, inputs=inputs, dimensions=req.dimensions)
