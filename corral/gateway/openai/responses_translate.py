"""Responses API requests -> Corral's internal ``GenerationRequest``, and collected
results -> the Responses output items.

Input items become chat messages: ``instructions`` a leading system message (not carried
over to a continuation, as in OpenAI's API), message items by role (developer as
system), a ``function_call`` item joins the assistant turn before it as a tool call, a
``function_call_output`` item is a tool turn. What Corral cannot honour is refused with a
400 naming the field (built-in tools, ``background``, reasoning parameters, non-text
content...); tools and ``text.format`` pass through as the neutral ``Tool`` and the
chat API's ``response_format``, which the router refuses for engines that lack them.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ValidationError

from corral.core.errors import InvalidRequest
from corral.core.types import ChatMessage, GenerationRequest, SamplingParams, Tool, ToolCall, ToolChoice, ToolMode
from corral.gateway.pipeline import Choice
from corral.protocol.openai.responses_api import (
    TEXT_PARTS,
    Content,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    MessageItem,
    NamedFunctionChoice,
    OtherItem,
    OtherToolChoice,
    ResponsesRequest,
    function_call_item,
    item_model,
    message_item,
)
from corral.web.errors import from_validation

Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
_SERVICE_TIERS = (None, "auto", "default")


def new_id(prefix: str) -> str:
    """A fresh object id (``resp_...``, ``msg_...``, ``fc_...``): never the request id,
    which a client may choose (``x-request-id``) and so repeat."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this server", param=param, code="unsupported_parameter")


def refuse_unsupported(req: ResponsesRequest) -> None:
    """A 400 naming the first parameter Corral would otherwise silently ignore."""
    if req.background:
        raise _refuse("background", "background: true (responses run while the request is open)")
    reasoning = req.reasoning
    if reasoning is not None and (reasoning.effort or reasoning.summary or reasoning.generate_summary):
        raise _refuse("reasoning", "reasoning parameters (the models served here have none)")
    if req.include:
        raise _refuse("include", f"include {req.include[0]!r}")
    if req.truncation not in (None, "disabled"):
        raise _refuse("truncation", f"truncation {req.truncation!r}")
    if req.max_tool_calls is not None:
        raise _refuse("max_tool_calls", "max_tool_calls (it bounds built-in tools, which are not served)")
    if req.top_logprobs:
        raise _refuse("top_logprobs", "top_logprobs")
    if req.conversation is not None:
        raise _refuse("conversation", "conversation objects (use previous_response_id)")
    if req.prompt is not None:
        raise _refuse("prompt", "prompt templates")
    if req.service_tier not in _SERVICE_TIERS:
        raise _refuse("service_tier", f"service_tier {req.service_tier!r}")
    if req.text is not None and req.text.verbosity is not None:
        raise _refuse("text.verbosity", "text.verbosity")
    for i, tool in enumerate(req.tools or ()):
        if not isinstance(tool, FunctionTool):
            raise _refuse(f"tools[{i}].type", f"the built-in tool {tool.type!r} (only function tools are)")


def parse_items(raw: list[dict[str, Any]], where: str = "input") -> list[Item]:
    """Each item validated by the model of its ``type``; an error names ``input[i]...``."""
    items: list[Item] = []
    for i, value in enumerate(raw):
        model = item_model(value)
        try:
            item = model.model_validate(value)
        except ValidationError as exc:
            inner = from_validation(exc)
            param = f"{where}[{i}].{inner.param}" if inner.param else f"{where}[{i}]"
            detail = inner.message.split(": ", 1)[-1]
            raise InvalidRequest(f"{param}: {detail}", param=param, code="invalid_value") from None
        if isinstance(item, OtherItem):
            raise _refuse(f"{where}[{i}].type", f"input items of type {item.type!r}")
        items.append(item)  # type: ignore[arg-type]
    return items


def own_items(req: ResponsesRequest) -> list[Item]:
    """This request's input as items (a string is one user message)."""
    if isinstance(req.input, str):
        return [MessageItem(role="user", content=req.input)]
    return parse_items(req.input)


def stored_items(items: list[Item]) -> list[dict[str, Any]]:
    """Items as kept for a continuation and read back: their fields as sent, no nulls."""
    return [item.model_dump(exclude_none=True, by_alias=True) for item in items]


def _text(content: Content, param: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PARTS:
            raise _refuse(f"{param}[{j}]", f"content of type {part.type!r}")
        parts.append(part.text or "")
    return "".join(parts)


def messages(instructions: str | None, items: list[Item], first_own: int) -> tuple[ChatMessage, ...]:
    """The chat turns of ``items`` (the history, then this request's input from index
    ``first_own``: errors name ``input[i]`` counted from there)."""
    out: list[ChatMessage] = [ChatMessage("system", instructions)] if instructions else []
    for i, item in enumerate(items):
        where = f"input[{i - first_own}]" if i >= first_own else "previous_response_id"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append(ChatMessage(role, _text(item.content, f"{where}.content")))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            if out and out[-1].role == "assistant":  # the calls of one assistant turn
                out[-1] = replace(out[-1], tool_calls=(*out[-1].tool_calls, call))
            else:
                out.append(ChatMessage("assistant", "", tool_calls=(call,)))
        else:
            out.append(ChatMessage("tool", _text(item.output, f"{where}.output"), tool_call_id=item.call_id))
    return tuple(out)


def _tools(req: ResponsesRequest) -> tuple[Tool, ...]:
    return tuple(
        Tool(t.name, t.description, t.parameters, t.strict) for t in req.tools or () if isinstance(t, FunctionTool)
    )


def _tool_choice(req: ResponsesRequest, tools: tuple[Tool, ...]) -> ToolChoice | None:
    value = req.tool_choice
    if value is None:
        return None
    if isinstance(value, OtherToolChoice):
        raise _refuse("tool_choice", f"tool_choice of type {value.type!r}")
    if isinstance(value, NamedFunctionChoice):
        if value.name not in {t.name for t in tools}:
            raise InvalidRequest(f"tool_choice names the function {value.name!r}, which tools does not declare",
                                 param="tool_choice", code="invalid_value")
        return ToolChoice(ToolMode.NAMED, value.name)
    if value == "required" and not tools:
        raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice", code="invalid_value")
    return ToolChoice(ToolMode(value))


def generation(
    req: ResponsesRequest, items: list[Item], first_own: int, request_id: str, session: str | None,
    traceparent: str | None,
) -> GenerationRequest:
    sampling = SamplingParams(
        max_tokens=req.max_output_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        unset=frozenset(k for k in ("temperature", "top_p") if getattr(req, k) is None),
    )
    tools = _tools(req)
    text_format = req.text.format if req.text is not None else None
    return GenerationRequest(
        request_id=request_id,
        model=req.model,
        sampling=sampling,
        messages=messages(req.instructions, items, first_own),
        user=req.user or req.safety_identifier,
        session=session or req.prompt_cache_key,
        traceparent=traceparent,
        stream=req.stream,
        tools=tools,
        tool_choice=_tool_choice(req, tools),
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=text_format.internal() if text_format is not None else None,
    )


def history_items(context: list[dict[str, Any]], output: list[dict[str, Any]]) -> list[Item]:
    """A stored response's context and output as the items a continuation starts with."""
    return parse_items(context + output, "previous_response_id")


def status_of(finish: str | None) -> str:
    """A response's (and its last item's) status for an engine's finish reason."""
    return "incomplete" if finish == "length" else "completed"


def output_items(choice: Choice) -> list[dict[str, Any]]:
    """The output of a whole answer: its message (also when empty and nothing else came),
    then one ``function_call`` item per call."""
    status = status_of(choice.finish)
    items = []
    if choice.text or not choice.tool_calls:
        items.append(message_item(new_id("msg"), choice.text, status))
    for call in choice.tool_calls:
        items.append(function_call_item(new_id("fc"), call.id or new_id("call"), call.name, call.arguments, "completed"))
    return items


def echo(req: ResponsesRequest, store: bool) -> dict[str, Any]:
    """The request's parameters as every response object repeats them."""
    text_format = req.text.format if req.text is not None and req.text.format is not None else None
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": _dump(text_format) if text_format is not None else {"type": "text"}},
        "tool_choice": _tool_choice_echo(req),
        "tools": [_dump(t) for t in req.tools or ()],
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "user": req.user,
        "metadata": req.metadata or {},
        "background": False,
        "service_tier": "default",
        "max_tool_calls": None,
        "top_logprobs": 0,
        "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key,
    }


def _tool_choice_echo(req: ResponsesRequest) -> Any:
    value = req.tool_choice
    if value is None:
        return "auto"
    return value if isinstance(value, str) else _dump(value)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True, by_alias=True)
