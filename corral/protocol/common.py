"""Bounds and checks every protocol's wire types share.

Every number is bounded and finite, and every free client string that is not text for
the model has a length bound, so what passes the wire fits a signed 64-bit column, a
JSON encoder and a log line, whichever protocol it came in.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictStr

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_ID_CHARS = 256  # model names, ids, function names, user ids
MAX_STOP_CHARS = 1024
MAX_TOKENS = 1 << 20  # above any context window served today; engines check their own

Id = Annotated[StrictStr, Field(max_length=MAX_ID_CHARS)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]


def encodable(value: Any) -> Any:
    """Free JSON (a JSON Schema, tool input, vendor extras) that engines re-encode: no
    integer beyond signed 64 bits (orjson refuses them; so do most JSON stacks)."""
    todo = [value]
    while todo:  # iterative: nesting is bounded by the parser, not by Python's stack
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            raise ValueError("integers are limited to signed 64 bits (-2**63 to 2**63-1)")
    return value


def check_stops(stops: list[str], most: int) -> None:
    """Stop sequences: at most ``most``, each non-empty and bounded."""
    if len(stops) > most:
        raise ValueError(f"at most {most} stop sequences, not {len(stops)}")
    for s in stops:
        if not s:
            raise ValueError("a stop sequence cannot be empty")
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence has at most {MAX_STOP_CHARS} characters, not {len(s)}")
