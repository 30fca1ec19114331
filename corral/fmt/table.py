"""A tiny, dependency-free plain-text table renderer for the management CLI.

``render_table(headers, rows)`` pads every column to its widest cell, left-aligns text and
right-aligns numbers (a column whose non-empty cells are all ``int``/``float``; override
with ``align``), cuts cells longer than ``max_cell`` display columns with ``...`` (however
long the cell: what a client typed may reach a table) and, given ``width``,
shrinks the widest columns until the table fits. ``None`` renders as an empty cell;
newlines and other control characters become spaces. Wide (CJK) characters count as two
columns. Also here: small cell formatters shared by the commands (durations, ages, times).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

Cell = str | int | float | None
Align = Literal["l", "r"]

ELLIPSIS = "..."
GAP = "  "
_ZERO_WIDTH = ("Mn", "Me", "Cf")  # marks, and format characters such as the emoji joiner U+200D
MIN_SHRINK = 8  # a column shrunk to fit ``width`` keeps at least this many columns (or its header)


def _text(cell: Cell, limit: int) -> str:
    """The cell as one line; only its first ``limit`` characters and one more are looked at
    (a cell may be a 100,000-character string a client sent: it is cut anyway)."""
    if cell is None:
        return ""
    if isinstance(cell, float):
        text = f"{cell:.1f}" if abs(cell) < 1e15 else f"{cell:g}"
    else:
        text = str(cell)
    return "".join(" " if (c < " " or c == "\x7f") else c for c in text[: limit + 1])


def _is_number(cell: Cell) -> bool:
    return isinstance(cell, int | float) and not isinstance(cell, bool)


def char_width(char: str) -> int:
    """Terminal columns taken by one character: 2 for wide East Asian, 0 for combining marks."""
    if unicodedata.combining(char) or unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(c) for c in text)


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` display columns, ending in ``...`` when cut."""
    if display_width(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return ELLIPSIS[:max(width, 0)]
    room, out, used = width - len(ELLIPSIS), [], 0
    for char in text:
        w = char_width(char)
        if used + w > room:
            break
        out.append(char)
        used += w
    return "".join(out).rstrip() + ELLIPSIS


def _pad(text: str, width: int, align: Align) -> str:
    fill = " " * max(width - display_width(text), 0)
    return fill + text if align == "r" else text + fill


def _fit(widths: list[int], floors: list[int], width: int) -> list[int]:
    """Shrink the widest shrinkable column one step at a time until the row fits ``width``."""
    widths = list(widths)
    while sum(widths) + len(GAP) * (len(widths) - 1) > width:
        candidates = [i for i, w in enumerate(widths) if w > floors[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    align: Sequence[Align] | None = None,
    max_cell: int = 60,
    width: int | None = None,
    shrink: Sequence[int] | None = None,
) -> str:
    """The table as text (no trailing newline): a header line, then one line per row.

    Rows shorter than ``headers`` are padded with empty cells; longer ones are an error.
    With ``width``, only the columns at the indices in ``shrink`` (default: all) are cut to
    fit; a table that still does not fit is left wider than ``width``.
    """
    ncols = len(headers)
    if align is not None and len(align) != ncols:
        raise ValueError(f"align has {len(align)} entries for {ncols} columns")
    for row in rows:
        if len(row) > ncols:
            raise ValueError(f"row has {len(row)} cells for {ncols} columns: {row!r}")
    full_rows = [list(row) + [None] * (ncols - len(row)) for row in rows]
    if align is None:
        align = [
            "r" if any(r[i] is not None for r in full_rows) and all(
                r[i] is None or _is_number(r[i]) for r in full_rows
            ) else "l"
            for i in range(ncols)
        ]
    texts = [[truncate(_text(c, max_cell), max_cell) for c in row] for row in full_rows]
    head = [truncate(_text(h, max_cell), max_cell) for h in headers]
    widths = [max([display_width(head[i])] + [display_width(r[i]) for r in texts]) for i in range(ncols)]
    if width is not None:
        allowed = range(ncols) if shrink is None else shrink
        floors = [min(widths[i], max(MIN_SHRINK, display_width(head[i]))) if i in allowed else widths[i]
                  for i in range(ncols)]
        widths = _fit(widths, floors, width)
    lines = []
    for row in [head, *texts]:
        cells = [_pad(truncate(row[i], widths[i]), widths[i], align[i]) for i in range(ncols)]
        lines.append(GAP.join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------- formatters


def format_duration(seconds: float | None) -> str:
    """A compact duration: ``45s``, ``5m12s``, ``2h03m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_ago(seconds: float | None) -> str:
    """How long ago: ``0.4s ago`` below ten seconds, else ``format_duration`` + `` ago``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s ago"
    return f"{format_duration(seconds)} ago"


def format_time(value: Any) -> str:
    """An audit time (epoch seconds or ISO 8601; naive means UTC) as local ISO time to the second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return str(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    else:
        return "" if value is None else str(value)
    return moment.astimezone().replace(tzinfo=None).isoformat(timespec="seconds")


def format_detail(detail: Any) -> str:
    """An audit detail on one line: a mapping as ``key=value`` pairs (non-strings as JSON)."""
    if detail is None:
        return ""
    if isinstance(detail, dict):
        return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in detail.items())
    return detail if isinstance(detail, str) else json.dumps(detail)
