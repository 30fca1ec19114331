"""Anthropic Messages requests -> Corral's internal request types.

The system prompt and the turns become ``ChatMessage``s: text blocks are joined, an
assistant's ``tool_use`` blocks become its ``tool_calls``, each ``tool_result`` block a
``tool`` turn answering its call. What no engine here can honour (images, documents,
extended thinking, server tools, MCP servers) is refused with a 400 naming the field,
never dropped. Tools pass through as neutral ``Tool``s; the router refuses them for
models whose engine does not honour tools.
"""

from __future__ import annotations

import orjson

from corral.core.errors import InvalidRequest
from corral.core.types import ChatMessage, GenerationRequest, SamplingParams, Tool, ToolCall, ToolChoice, ToolMode
from corral.protocol.anthropic.requests import (
    Block,
    CountTokensRequest,
    MessageIn,
    MessagesRequest,
    OtherBlock,
    TextBlock,
    ToolChoiceIn,
    ToolIn,
    ToolResultBlock,
    ToolUseBlock,
)

_MODES = {"auto": ToolMode.AUTO, "any": ToolMode.REQUIRED, "none": ToolMode.NONE, "tool": ToolMode.NAMED}
# what a request may leave out: it then gets Anthropic's default (temperature and top_p 1,
# top_k off), which the model's own sampling defaults replace (``SamplingParams.unset``)
_DEFAULTED = ("temperature", "top_p", "top_k")


def _refuse(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this server", param=param, code="unsupported_parameter")


def messages(req: MessagesRequest, request_id: str, session: str | None, traceparent: str | None) -> GenerationRequest:
    if req.container is not None:
        raise _refuse("container", "container (code execution)")
    if req.mcp_servers is not None:
        raise _refuse("mcp_servers", "mcp_servers")
    sampling = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=0 if req.top_k is None else req.top_k,
        stop=tuple(req.stop_sequences or ()),
        unset=frozenset(k for k in _DEFAULTED if getattr(req, k) is None),
    )
    return prompt(req, request_id, sampling, session, traceparent, req.stream, req.metadata.user_id if req.metadata else None)


def prompt(
    req: CountTokensRequest,
    request_id: str,
    sampling: SamplingParams,
    session: str | None = None,
    traceparent: str | None = None,
    stream: bool = False,
    user: str | None = None,
) -> GenerationRequest:
    """The generation ``req`` describes (for ``count_tokens``: the prompt it would be)."""
    if req.thinking is not None and req.thinking.type != "disabled":
        raise _refuse("thinking", "extended thinking")
    tools = tuple(_tool(i, t) for i, t in enumerate(req.tools or ()))
    choice, parallel = _tool_choice(req.tool_choice)
    turns: list[ChatMessage] = []
    system = _system(req.system)
    if system:
        turns.append(ChatMessage("system", system))
    for i, message in enumerate(req.messages):
        turns.extend(_turn(i, message))
    return GenerationRequest(
        request_id=request_id,
        model=req.model,
        sampling=sampling,
        messages=tuple(turns),
        user=user,
        session=session,
        traceparent=traceparent,
        stream=stream,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )


def _system(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n\n".join(b.text for b in system)


def _turn(i: int, message: MessageIn) -> list[ChatMessage]:
    """One Messages turn as chat messages: a user turn's tool results are ``tool``
    messages (in their order, before its text), an assistant's calls its tool_calls."""
    if isinstance(message.content, str):
        return [ChatMessage(message.role, message.content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise InvalidRequest("tool_use blocks belong to assistant turns", param=where)
            calls.append(ToolCall(block.id, block.name, orjson.dumps(block.input).decode()))
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise InvalidRequest("tool_result blocks belong to user turns", param=where)
            results.append(ChatMessage("tool", _result_text(where, block), tool_call_id=block.tool_use_id))
        else:
            raise _unsupported_block(where, block)
    out = results
    if texts or calls or not results:
        out.append(ChatMessage(message.role, "".join(texts), tool_calls=tuple(calls)))
    return out


def _result_text(where: str, block: ToolResultBlock) -> str:
    if block.content is None or isinstance(block.content, str):
        return block.content or ""
    parts = []
    for k, part in enumerate(block.content):
        if not isinstance(part, TextBlock):
            raise _unsupported_block(f"{where}.content[{k}]", part)
        parts.append(part.text)
    return "".join(parts)


def _unsupported_block(where: str, block: Block) -> InvalidRequest:
    assert isinstance(block, OtherBlock)
    return _refuse(where, f"content of type {block.type!r}")


def _tool(i: int, tool: ToolIn) -> Tool:
    if tool.type not in (None, "custom"):
        raise _refuse(f"tools[{i}].type", f"the server tool {tool.type!r}")
    return Tool(tool.name, tool.description, tool.input_schema)


def _tool_choice(choice: ToolChoiceIn | None) -> tuple[ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    parallel = None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    mode = _MODES[choice.type]
    return ToolChoice(mode, choice.name if mode is ToolMode.NAMED else None), parallel
