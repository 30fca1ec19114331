"""Ollama request models -> Corral's internal request types.

``options`` are taken one by one (docs/protocols-ollama.md has the table): sampling
options map to ``SamplingParams``; pure runner hints (threads, GPU layers, batch size,
memory mapping) and ``num_ctx`` are accepted and ignored, since a deployment fixes them;
every other option is refused with a 400 naming it unless it has the value that turns
it off, because ignoring it would change the answer without the client knowing.
"""

from __future__ import annotations

import orjson

from corral.core.errors import InvalidRequest
from corral.core.types import (
    ChatMessage,
    EmbeddingRequest,
    GenerationRequest,
    JSONObject,
    SamplingParams,
    Tool,
    ToolCall,
)
from corral.protocol.ollama.requests import ChatRequest, EmbedRequest, GenerateRequest, MessageIn, Options

# accepted and ignored: they tune how a runner uses the machine, never what it answers
# (num_ctx: the deployment fixes the context, and a prompt beyond it is a 400, never
# truncated; num_keep: what to keep when Ollama shifts a full context, which Corral never does;
# mirostat_tau/eta: mirostat's settings, which do nothing while mirostat is 0)
IGNORED_OPTIONS = frozenset({
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "low_vram", "numa", "f16_kv", "use_mmap",
    "use_mlock", "num_keep", "mirostat_tau", "mirostat_eta",
})
# refused unless they have the value that turns them off
OFF_VALUES: dict[str, object] = {
    "min_p": 0.0, "typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "penalize_newline": False,
    "vocab_only": False, "logits_all": False, "embedding_only": False,
}


def _refuse(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code="unsupported_parameter")


def model_name(model: str, name: str | None) -> str:
    """The model the client named (``model``, or the older ``name``)."""
    chosen = model or name or ""
    if not chosen:
        raise InvalidRequest("model: a model name is required", param="model", code="missing_field")
    return chosen


def sampling(options: Options | None) -> SamplingParams:
    """``options`` as sampling parameters; what the client left out is Corral's default
    (the model's ``[models.sampling]`` for temperature and top_p), as on /v1."""
    o = options or Options()
    for name, off in OFF_VALUES.items():
        value = getattr(o, name)
        if value is not None and value != off:
            raise _refuse(f"options.{name}", f"not supported by this server (only {off!r}, which turns it off)")
    penalty = 1.0 if o.repeat_penalty is None else o.repeat_penalty
    if o.repeat_last_n is not None:
        if o.repeat_last_n == 0:  # Ollama: 0 disables the repeat penalty
            penalty = 1.0
        elif o.repeat_last_n != -1:
            raise _refuse(
                "options.repeat_last_n",
                "the repeat penalty here looks at the whole prompt and answer (-1); 0 turns it off; "
                "a window of the last N tokens is not supported",
            )
    if o.num_predict == 0:
        raise _refuse("options.num_predict", "must be positive, or -1 for no limit")
    unset = frozenset(k for k in ("temperature", "top_p") if getattr(o, k) is None)
    return SamplingParams(
        max_tokens=o.num_predict if o.num_predict is not None and o.num_predict > 0 else None,
        temperature=1.0 if o.temperature is None else o.temperature,
        top_p=1.0 if o.top_p is None else o.top_p,
        top_k=o.top_k or 0,
        stop=tuple(o.stop or ()),
        seed=o.seed,
        presence_penalty=o.presence_penalty or 0.0,
        frequency_penalty=o.frequency_penalty or 0.0,
        repetition_penalty=penalty,
        unset=unset,
    )


def response_format(fmt: str | JSONObject | None) -> JSONObject | None:
    """``format``: "json" is JSON mode, an object is a JSON schema the answer follows."""
    if not fmt:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    assert isinstance(fmt, dict)
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt, "strict": True}}


def _common(req: ChatRequest | GenerateRequest) -> None:
    if req.think:
        raise _refuse("think", "thinking output is not supported by this server's models")
    if req.logprobs:
        raise _refuse("logprobs", "log probabilities are not supported by this server's engines")
    if req.top_logprobs:
        raise _refuse("top_logprobs", "log probabilities are not supported by this server's engines")


def _messages(messages: list[MessageIn]) -> tuple[ChatMessage, ...]:
    """Ollama's history as Corral's: tool calls have no ids in Ollama, so each call gets
    one from its position, and a tool turn answers the first unanswered call of its
    ``tool_name`` (or the first unanswered one, without a name)."""
    out = []
    pending: list[tuple[str, str]] = []  # (call id, function name) not answered yet
    for i, m in enumerate(messages):
        if m.images:
            raise _refuse(f"messages[{i}].images", "images are not supported by this server's engines")
        if m.role == "assistant" and m.tool_calls:
            calls = tuple(
                ToolCall(f"call_{i}_{j}", c.function.name, _json(c.function.arguments)) for j, c in enumerate(m.tool_calls)
            )
            pending = [(c.id, c.name) for c in calls]
            out.append(ChatMessage("assistant", m.content, tool_calls=calls))
        elif m.role == "tool":
            match = next((p for p in pending if m.tool_name is None or p[1] == m.tool_name), None)
            if match is None:
                raise InvalidRequest(
                    f"messages[{i}]: a tool message must follow an assistant message whose tool_calls it answers",
                    param=f"messages[{i}]", code="invalid_value",
                )
            pending.remove(match)
            out.append(ChatMessage("tool", m.content, tool_call_id=match[0]))
        else:
            out.append(ChatMessage(m.role, m.content))
    return tuple(out)


def _json(arguments: JSONObject) -> str:
    """Internal types carry a call's arguments as JSON text, as models write them."""
    return orjson.dumps(arguments).decode()


def chat(req: ChatRequest, model: str, request_id: str, session: str | None, traceparent: str | None) -> GenerationRequest:
    _common(req)
    return GenerationRequest(
        request_id=request_id,
        model=model,
        sampling=sampling(req.options),
        messages=_messages(req.messages),
        session=session,
        traceparent=traceparent,
        stream=req.stream,
        tools=tuple(Tool(t.function.name, t.function.description, t.function.parameters) for t in req.tools or ()),
        response_format=response_format(req.format),
    )


def generate(
    req: GenerateRequest, model: str, request_id: str, session: str | None, traceparent: str | None
) -> GenerationRequest:
    """``raw``: the prompt as is (a text completion); otherwise the prompt (and
    ``system``) through the model's chat template, as Ollama applies its template."""
    _common(req)
    for name, what in (("suffix", "fill-in-the-middle (suffix)"), ("template", "a prompt template of the request's own"),
                       ("images", "images")):
        if getattr(req, name):
            raise _refuse(name, f"{what} is not supported by this server; the model's own chat template applies")
    if req.context:
        raise _refuse("context", "continuing from token ids is not supported; send the conversation to /api/chat")
    if req.raw and req.system:
        raise _refuse("system", "a raw prompt takes no system prompt: write it into the prompt")
    system = (ChatMessage("system", req.system),) if req.system else ()
    return GenerationRequest(
        request_id=request_id,
        model=model,
        sampling=sampling(req.options),
        prompt=req.prompt if req.raw else None,
        messages=None if req.raw else (*system, ChatMessage("user", req.prompt)),
        session=session,
        traceparent=traceparent,
        stream=req.stream,
        response_format=response_format(req.format),
    )


def embed(req: EmbedRequest, model: str, request_id: str) -> EmbeddingRequest:
    if not req.truncate:
        raise _refuse("truncate", "inputs are cut to the model's limit by its engine; false is not supported")
    inputs = (req.input,) if isinstance(req.input, str) else tuple(req.input)
    for i, text in enumerate(inputs):
        if not text:
            raise InvalidRequest("input must not contain empty strings", param=f"input[{i}]" if len(inputs) > 1 else "input")
    sampling(req.options)  # the same options checks; none of them applies to an embedding
    return EmbeddingRequest(request_id=request_id, model=model, inputs=inputs, dimensions=req.dimensions)
