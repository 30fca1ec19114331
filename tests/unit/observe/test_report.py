"""The report builder (statistics, SVG charts, text summary) and ``corral report``'s own code."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import pytest

from corral.cli.report import run_report
from corral.cli.report_args import add_report_command, parse_duration
from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.report import MAX_MODEL_CHARTS, bucket_size, build_report, chart_count, percentile, stats

NOW = 1_700_000_000.0


def row(i: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": f"req-{i}", "time": NOW - 3600 + i, "model": "alpha", "instance_id": "alpha-0",
        "route": "chat", "stream": True, "outcome": "ok", "http_status": 200, "error": None,
        "latency_s": 0.5, "ttft_s": 0.1, "prompt_tokens": 10, "completion_tokens": 20, "feedback_rating": None,
    }
    return {**base, **fields}


def known_rows() -> list[dict[str, Any]]:
    """alpha: latencies 0.01 .. 1.00 s on two instances; beta: 10 requests, 2 failed, with feedback."""
    rows = [row(i, latency_s=(i + 1) / 100, ttft_s=(i + 1) / 1000, instance_id=f"alpha-{i % 2}")
            for i in range(100)]
    rows += [row(100 + i, model="beta", instance_id="beta-0", latency_s=2.0, ttft_s=None, stream=False,
                 feedback_rating=[5, 4, -1][i % 3] if i < 6 else None) for i in range(8)]
    rows += [row(200 + i, model="beta", instance_id=None, outcome="error", http_status=503, latency_s=0.001,
                 ttft_s=None, completion_tokens=0, error="no instance of <beta> & co is ready") for i in range(2)]
    return rows


# ---------------------------------------------------------------------------- statistics


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert percentile([], 50) is None


def test_stats_per_group_on_known_data() -> None:
    rows = known_rows()
    alpha = stats([r for r in rows if r["model"] == "alpha"])
    assert alpha.requests == 100 and alpha.errors == 0
    assert alpha.latency == pytest.approx((0.505, 0.901, 0.9901))
    assert alpha.ttft == pytest.approx((0.0505, 0.0901, 0.09901))
    assert (alpha.prompt_tokens, alpha.completion_tokens) == (1000, 2000)
    assert alpha.feedback_avg is None and alpha.feedback_count == 0
    beta = stats([r for r in rows if r["model"] == "beta"])
    assert beta.requests == 10 and beta.errors == 2 and beta.error_rate == pytest.approx(0.2)
    assert beta.ttft == (None, None, None)
    assert beta.feedback_count == 6 and beta.feedback_avg == pytest.approx((5 + 4 - 1) * 2 / 6)


def test_bucket_size_keeps_at_most_60_buckets() -> None:
    assert bucket_size(3600) == 60
    assert bucket_size(86400) == 1800
    assert bucket_size(7 * 86400) == 3 * 3600  # 56 buckets
    for span in (1, 59, 600, 3599, 86400 * 30):
        assert span / bucket_size(span) <= 60


# ---------------------------------------------------------------------------- the report


def test_report_html_has_one_svg_chart_per_chart_with_drawn_lines() -> None:
    html, _ = build_report(known_rows(), NOW - 7200, NOW)
    charts = re.findall(r'<svg class="chart".*?</svg>', html, flags=re.S)
    assert len(charts) == chart_count(2) == html.count('<svg class="chart"') == 8
    titles = [re.search(r'data-title="([^"]*)"', c).group(1) for c in charts]  # type: ignore[union-attr]
    assert titles[:4] == ["Requests per minute (per 2 min)", "Error rate (per 2 min)",
                          "Completion tokens per minute (per 2 min)", "Requests by instance"]
    assert "Latency of alpha (s)" in titles and "Time to first token of beta (s)" in titles
    for chart, title in zip(charts, titles):
        assert "<title>" in chart and "axis" in chart, title
        if title == "Requests by instance":
            assert chart.count('<rect class="bar"') == 4  # alpha-0, alpha-1, beta-0, (none)
            assert chart.count('<rect class="bar error"') == 4
        elif title == "Time to first token of beta (s)":
            assert "<path" not in chart and "no data" in chart  # beta never streamed
        else:
            paths = re.findall(r'<path class="line" d="([^"]+)"', chart)
            assert paths and all(d.startswith("M") for d in paths), title


def test_throughput_chart_is_requests_per_minute() -> None:
    bucket = (NOW // 120) * 120 - 1200  # a whole 2-minute bucket inside the 2-hour window
    html, _ = build_report([row(i, time=bucket + i) for i in range(50)], NOW - 7200, NOW)
    chart = re.search(r'<svg class="chart".*?</svg>', html, flags=re.S).group(0)  # type: ignore[union-attr]
    assert ">25</text>" in chart  # 50 requests in 2 minutes: the axis tops out at 25/min
    assert re.search(r"[ML][\d.]+ 40\.0", chart)  # one point at the top of the plot (y = TOP)
    assert ">0</text>" in chart


def test_report_html_is_self_contained_and_escaped() -> None:
    html, _ = build_report(known_rows(), NOW - 7200, NOW)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html and "<link" not in html and "src=" not in html and "@import" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<beta>" not in html and "no instance of &lt;beta&gt; &amp; co is ready" in html


def test_report_tables_models_instances_slowest_and_failed() -> None:
    html, _ = build_report(known_rows(), NOW - 7200, NOW)
    models = html[html.index("<h2>Models</h2>"):html.index("<h2>Instances</h2>")]
    alpha = re.search(r"<tr><td>alpha</td>(.*?)</tr>", models).group(1)  # type: ignore[union-attr]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", alpha)
    assert cells[:10] == ["100", "0", "0.0", "0", "505ms", "901ms", "990ms", "50ms", "90ms", "99ms"]
    beta_row = re.search(r"<tr><td>beta</td>(.*?)</tr>", models).group(1)  # type: ignore[union-attr]
    beta = re.findall(r"<td[^>]*>(.*?)</td>", beta_row)
    assert beta[:3] == ["10", "2", "20.0"] and beta[-1] == "2.67 (6)"
    slowest = html[html.index("<h2>Slowest requests (20)</h2>"):html.index("<h2>Failed requests")]
    assert slowest.count("<tr><td>") == 20
    ids = re.findall(r"<td>(req-\d+)</td>", slowest)
    assert ids[:8] == [f"req-{100 + i}" for i in range(8)]  # beta's 2.0 s, then alpha's slowest
    assert ids[8:10] == ["req-99", "req-98"]
    failed = html[html.index("<h2>Failed requests (2)</h2>"):]
    assert "req-200" in failed and "req-201" in failed and "503" in failed


def test_text_summary_is_a_compact_table() -> None:
    _, text = build_report(known_rows(), NOW - 7200, NOW)
    lines = text.splitlines()
    assert "110 requests, 2 errors (1.8%)" in lines[0]
    header = next(line for line in lines if line.startswith("MODEL"))
    assert header.split()[:6] == ["MODEL", "REQUESTS", "ERRORS", "P50", "P90", "P99"]
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert alpha.split()[:6] == ["alpha", "100", "0.0%", "505ms", "901ms", "990ms"]
    assert any(line.startswith("INSTANCE") for line in lines)
    assert any(line.startswith("alpha-1 ") for line in lines)
    assert lines[-1].startswith("slowest: 2.00s req-100 (beta, beta-0)")
    assert max(len(line) for line in lines) < 140


def test_report_with_many_models_caps_the_per_model_charts() -> None:
    rows = [row(i, model=f"m{i % 20:02d}", instance_id=f"m{i % 20:02d}-0") for i in range(400)]
    html, text = build_report(rows, NOW - 7200, NOW)
    assert html.count('<svg class="chart"') == chart_count(20) == 4 + 2 * MAX_MODEL_CHARTS
    throughput = re.search(r'<svg class="chart".*?</svg>', html, flags=re.S).group(0)  # type: ignore[union-attr]
    assert throughput.count('<path class="line"') == 8 and ">other</text>" in throughput
    assert len([line for line in text.splitlines() if line.startswith("m")]) == 40  # models and instances


def test_report_of_no_rows_still_renders() -> None:
    html, text = build_report([], NOW - 60, NOW)
    assert html.count('<svg class="chart"') == chart_count(0) and "no data" in html
    assert "0 requests" in text


# ---------------------------------------------------------------------------- corral report


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1.5h", 5400), ("90s", 90), ("2w", 1209600), ("45", 45),
    (" 10M ", 600),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "0h", "3x", "1e3", "24 hours", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral")
    add_report_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["report", *argv])


def test_report_args_defaults_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse([])
    assert (args.since, args.out, args.records, args.model) == (86400, "report.html", None, None)
    with pytest.raises(SystemExit) as info:
        parse(["--since", "soon"])
    assert info.value.code == 2 and "not a duration" in capsys.readouterr().err


def test_report_args_import_only_the_standard_library() -> None:
    import subprocess
    import sys

    code = ("import sys; import corral.cli.report_args; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'pydantic', 'starlette', 'httpx', 'orjson', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def write_records(db: Path, events: list[RequestEvent]) -> None:
    store = RecordStore(f"sqlite:///{db}")
    await store.open()
    for event in events:
        store.request_finished(event)
    await store.close()


async def test_run_report_writes_html_and_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out = tmp_path / "records.db", tmp_path / "out" / "r.html"
    out.parent.mkdir()
    now = time.time()
    events = [RequestEvent(request_id=f"e{i}", route="chat", started_at=now - 60 * i, model=["a", "b"][i % 2],
                           instance_id=f"inst-{i % 3}", latency_s=0.1 * (i + 1), prompt_tokens=5,
                           completion_tokens=7) for i in range(30)]
    events.append(RequestEvent(request_id="too-old", route="chat", started_at=now - 7200, model="old"))
    await write_records(db, events)
    code = await _run(parse(["--since", "1h", "--records", f"sqlite:///{db}", "--out", str(out)]))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "30 requests" in captured.out and f"report written to {out}" in captured.out
    assert out.read_text().count('<svg class="chart"') == chart_count(2)
    code = await _run(parse(["--since", "1h", "--records", f"sqlite:///{db}", "--out", str(out), "--model", "a"]))
    assert code == 0 and "15 requests" in capsys.readouterr().out
    code = await _run(parse(["--since", "1h", "--records", f"sqlite:///{db}", "--out", str(out), "--model", "zz"]))
    assert code == 1 and "no requests recorded for model 'zz' in the last 1h" in capsys.readouterr().err


async def test_run_report_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.html"
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    assert await _run(parse(["--out", str(out)])) == 1  # default: $CORRAL_HOME/records.db, missing
    err = capsys.readouterr().err
    assert f"no request records at {tmp_path / 'home' / 'records.db'}" in err and "hint:" in err
    assert not (tmp_path / "home" / "records.db").exists()  # nothing created

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert await _run(parse(["--records", f"sqlite:///{empty}", "--out", str(out)])) == 1
    assert "no table corral_requests" in capsys.readouterr().err

    await write_records(tmp_path / "none.db", [])
    assert await _run(parse(["--records", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(out)])) == 1
    assert "no requests recorded in the last 24h" in capsys.readouterr().err

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    assert await _run(parse(["--records", f"sqlite:///{garbage}", "--out", str(out)])) == 1
    assert "unavailable" in capsys.readouterr().err

    assert await _run(parse(["--records", "mysql://h/db", "--out", str(out)])) == 2
    assert "unsupported" in capsys.readouterr().err
    assert not out.exists()


async def _run(args: argparse.Namespace) -> int:
    """``run_report`` calls ``asyncio.run``: run it off this test's event loop."""
    import asyncio

    return await asyncio.to_thread(run_report, args)


def test_per_key_table_counts_each_key_and_keyless_requests() -> None:
    rows = [row(i, api_key_id="key_aaaa00000001", prompt_tokens=3, completion_tokens=4) for i in range(3)]
    rows += [row(10 + i, api_key_id="key_bbbb00000002", outcome="error", http_status=429) for i in range(2)]
    rows += [row(20)]  # a server without keys
    html, text = build_report(rows, NOW - 3600, NOW)
    table = text.split("KEY ID", 1)[1]
    line_a = next(line for line in table.splitlines() if line.startswith("key_aaaa00000001"))
    line_b = next(line for line in table.splitlines() if line.startswith("key_bbbb00000002"))
    assert line_a.split()[1:3] == ["3", "0.0%"] and "9/12" in line_a
    assert line_b.split()[1:3] == ["2", "100.0%"]
    assert any(line.startswith("(none)") for line in table.splitlines())
    assert "<h2>API keys</h2>" in html and "key_bbbb00000002" in html
