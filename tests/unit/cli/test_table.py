"""Tests of the dependency-free table renderer and the cell formatters."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from corral.fmt.table import (
    display_width,
    format_ago,
    format_detail,
    format_duration,
    format_time,
    render_table,
    truncate,
)


def test_columns_padded_to_widest_cell_and_header() -> None:
    out = render_table(["NAME", "KIND"], [["chat", "llm"], ["all-minilm", "embedding"]])
    assert out.splitlines() == [
        "NAME        KIND",
        "chat        llm",
        "all-minilm  embedding",
    ]


def test_numbers_right_aligned_text_left_aligned() -> None:
    out = render_table(["ID", "IN-FLIGHT", "UPTIME"], [["a", 3, 1.5], ["bbbbbbbbbbbb", 120, 12.25]])
    lines = out.splitlines()
    assert lines[0] == "ID            IN-FLIGHT  UPTIME"
    assert lines[1] == "a                     3     1.5"
    assert lines[2] == "bbbbbbbbbbbb        120    12.2"


def test_mixed_column_is_left_aligned_and_none_is_empty() -> None:
    out = render_table(["A", "B"], [[1, None], ["x", 2]])
    assert out.splitlines() == ["A  B", "1", "x  2"]


def test_none_cells_do_not_break_numeric_alignment() -> None:
    out = render_table(["NAME", "N"], [["a", None], ["b", 10]])
    assert out.splitlines() == ["NAME   N", "a", "b     10"]


def test_explicit_align_overrides_detection() -> None:
    out = render_table(["R", "L"], [["1/2", 5], ["10/20", 6]], align=["r", "l"])
    assert out.splitlines() == ["    R  L", "  1/2  5", "10/20  6"]


def test_booleans_are_not_numbers() -> None:
    out = render_table(["FLAG", "X"], [[True, "a"], [False, "b"]])
    assert out.splitlines()[1] == "True   a"


def test_long_cells_truncated_with_ellipsis() -> None:
    out = render_table(["ERROR"], [["x" * 100]], max_cell=20)
    assert out.splitlines()[1] == "x" * 17 + "..."


def test_width_shrinks_only_allowed_columns() -> None:
    rows = [["chat-1a2b3c4d", "a fairly long error message that will not fit on a narrow terminal"]]
    out = render_table(["ID", "LAST ERROR"], rows, width=40, shrink=[1])
    line = out.splitlines()[1]
    assert line.startswith("chat-1a2b3c4d  ")
    assert len(line) == 40 and line.endswith("...")


def test_width_never_shrinks_below_floor() -> None:
    out = render_table(["ID", "LAST ERROR"], [["a" * 30, "b" * 30]], width=10, shrink=[1])
    line = out.splitlines()[1]
    assert line.startswith("a" * 30)  # the id column is not allowed to shrink
    assert line.endswith("bbbbb...")  # the error column stops at its floor (its header width)


def test_control_characters_become_spaces() -> None:
    out = render_table(["E"], [["line1\nline2\ttab\x1b[31m"]])
    assert out.splitlines()[1] == "line1 line2 tab [31m"


def test_no_trailing_spaces_and_short_rows_padded() -> None:
    out = render_table(["A", "B", "C"], [["x"]])
    assert out.splitlines() == ["A  B  C", "x"]


def test_row_longer_than_headers_is_an_error() -> None:
    with pytest.raises(ValueError):
        render_table(["A"], [["x", "y"]])
    with pytest.raises(ValueError):
        render_table(["A"], [["x"]], align=["l", "r"])


def test_empty_table_is_the_header() -> None:
    assert render_table(["NAME", "KIND"], []) == "NAME  KIND"


def test_wide_characters_count_double() -> None:
    assert display_width("模型") == 4
    out = render_table(["NAME", "K"], [["模型", "x"], ["ab", "y"]])
    assert out.splitlines() == ["NAME  K", "模型  x", "ab    y"]
    assert truncate("模型模型模型", 7) == "模型..."


def test_truncate() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("abcdefghij", 6) == "abc..."
    assert truncate("abcdefghij", 2) == ".."


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-1, "-"), (0, "0s"), (45.9, "45s"), (312.5, "5m12s"), (7380, "2h03m"), (273600, "3d04h")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_ago() -> None:
    assert format_ago(0.4) == "0.4s ago"
    assert format_ago(75) == "1m15s ago"
    assert format_ago(None) == "-"


def test_format_time_is_local_iso_seconds() -> None:
    moment = datetime(2025, 3, 1, 12, 30, 45, 678000, tzinfo=timezone.utc)
    local = moment.astimezone().replace(tzinfo=None).isoformat(timespec="seconds")
    assert format_time(moment.timestamp()) == local
    assert format_time("2025-03-01T12:30:45.678Z") == local
    assert format_time("2025-03-01T12:30:45.678+00:00") == local
    assert format_time("2025-03-01T12:30:45.678") == local  # naive: UTC
    assert format_time("yesterday") == "yesterday"
    assert format_time(None) == ""


def test_format_detail() -> None:
    assert format_detail(None) == ""
    assert format_detail("scaled") == "scaled"
    assert format_detail({"replicas": 2, "routing": "weighted", "ok": True}) == "replicas=2 routing=weighted ok=true"
    assert format_detail([1, 2]) == "[1, 2]"
