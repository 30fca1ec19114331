"""A report on request records: one self-contained HTML page and a terminal summary.

``build_report(rows, since, until)`` takes rows as ``RecordStore.query`` returns them and
gives ``(html, text)``. The page has, per model and per instance, request counts,
throughput, error rate, latency and time-to-first-token percentiles, tokens and feedback;
charts over time; the slowest and the failed requests. Charts are inline SVG drawn here
(``<svg class="chart">`` with ``<path>``/``<rect>``): no scripts, no network, so the file
can be mailed or attached to a ticket. Times are shown in the local time zone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from corral.fmt.table import render_table
from corral.observe.contain import ELLIPSIS, MAX_NAME, clean, recorded_model

Row = dict[str, Any]
Series = tuple[str, list[tuple[float, float | None]]]  # label, (bucket start, value or None = no data)

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563")
MAX_SERIES = 8  # models drawn in the shared charts; the rest are summed as "other"
MAX_MODEL_CHARTS = 12  # models that get their own latency and TTFT charts
MAX_INSTANCE_BARS = 40
SLOWEST = 20
MAX_FAILED = 100
NONE = "(none)"  # requests refused before a model or instance was known
MAX_SHOWN = 60  # characters of a name in a heading or chart title
MAX_CELL = 200  # characters of a table cell (the CSS wraps what is left)
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
          2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 300, 64, 20, 40, 78


def chart_count(models: int) -> int:
    """How many charts ``build_report`` draws for rows of ``models`` distinct models."""
    return 4 + 2 * min(models, MAX_MODEL_CHARTS)


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Stats:
    requests: int
    errors: int
    cancelled: int
    latency: tuple[float | None, float | None, float | None]  # p50, p90, p99 seconds
    ttft: tuple[float | None, float | None, float | None]
    prompt_tokens: int
    completion_tokens: int
    feedback_avg: float | None
    feedback_count: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _pcts(values: list[float]) -> tuple[float | None, float | None, float | None]:
    return percentile(values, 50), percentile(values, 90), percentile(values, 99)


def stats(rows: Sequence[Row]) -> Stats:
    ratings = [r["feedback_rating"] for r in rows if r.get("feedback_rating") is not None]
    return Stats(
        requests=len(rows),
        errors=sum(1 for r in rows if r.get("outcome") == "error"),
        cancelled=sum(1 for r in rows if r.get("outcome") == "cancelled"),
        latency=_pcts([r["latency_s"] for r in rows if r.get("latency_s") is not None]),
        ttft=_pcts([r["ttft_s"] for r in rows if r.get("ttft_s") is not None]),
        prompt_tokens=sum(r.get("prompt_tokens") or 0 for r in rows),
        completion_tokens=sum(r.get("completion_tokens") or 0 for r in rows),
        feedback_avg=sum(ratings) / len(ratings) if ratings else None,
        feedback_count=len(ratings),
    )


def _group(rows: Iterable[Row], key: Any) -> dict[Any, list[Row]]:
    groups: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))))


def _model(row: Row) -> str:
    """The model a row is grouped under: ``UNKNOWN_MODEL`` for a model that does not exist
    (also in rows recorded before the store used that label), the name capped."""
    model = row.get("model")
    return recorded_model(str(model) if model else None, row.get("outcome"), row.get("http_status"),
                          row.get("instance_id")) or NONE


def _key(row: Row) -> str:
    """The API key a row is grouped under: its id (never a secret), ``(none)`` without keys."""
    key = row.get("api_key_id")
    return clean(str(key), MAX_NAME) if key else NONE


def _instance(row: Row) -> tuple[str, str]:
    instance = row.get("instance_id")
    return (clean(str(instance), MAX_NAME) if instance else NONE), _model(row)


def _short(text: str, limit: int = MAX_SHOWN) -> str:
    """A name as shown in a heading or chart title: one line, at most ``limit`` characters."""
    text = "".join(" " if (c < " " or c == "\x7f") else c for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def bucket_size(span_s: float, buckets: int = 60) -> int:
    """The smallest round step (seconds) cutting ``span_s`` into at most ``buckets`` pieces."""
    return next((s for s in _STEPS if span_s / s <= buckets), _STEPS[-1])


def _buckets(since: float, until: float) -> tuple[int, list[float]]:
    step = bucket_size(until - since)
    first = math.floor(since / step) * step
    return step, [first + i * step for i in range(max(1, math.ceil((until - first) / step)))]


def _by_bucket(rows: Sequence[Row], starts: list[float], step: int) -> list[list[Row]]:
    out: list[list[Row]] = [[] for _ in starts]
    for row in rows:
        i = int((row["time"] - starts[0]) // step)
        if 0 <= i < len(out):
            out[i].append(row)
    return out


# ---------------------------------------------------------------------------- formatting


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def fmt_n(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:g}" if isinstance(value, float) and value != int(value) else f"{int(value)}"


def _fmt_feedback(s: Stats) -> str:
    return "-" if s.feedback_avg is None else f"{s.feedback_avg:.2f} ({s.feedback_count})"


def _fmt_time(t: float, with_date: bool = True) -> str:
    moment = datetime.fromtimestamp(t).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _tick_label(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t).astimezone()
    if span <= 600:
        return moment.strftime("%H:%M:%S")
    if span <= 86400 * 1.5:
        return moment.strftime("%H:%M")
    return moment.strftime("%m-%d %H:%M") if span <= 86400 * 4 else moment.strftime("%m-%d")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= value)


def _num(value: float) -> str:
    return f"{value:.4g}"


# ---------------------------------------------------------------------------- SVG charts


def _svg_open(title: str, height: int) -> list[str]:
    return [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" '
            f'height="{height}" role="img" aria-label="{escape(title)}" data-title="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<text class="title" x="{W / 2}" y="22" text-anchor="middle">{escape(title)}</text>']


def _legend(labels: Sequence[str], y: float) -> list[str]:
    out, x = [], LEFT
    for i, label in enumerate(labels):
        text = _short(label, 28)
        width = 22 + 7 * len(text)
        if x + width > W - RIGHT and x > LEFT:
            x, y = LEFT, y + 16
        out.append(f'<rect class="swatch" x="{x}" y="{y - 9}" width="12" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
                   f'<text x="{x + 16}" y="{y}">{escape(text)}</text>')
        x += width + 12
    return out


def line_chart(title: str, unit: str, series: Sequence[Series], since: float, until: float) -> str:
    """Lines over time; a ``None`` value leaves a gap; dots mark the points."""
    out = _svg_open(title, H)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    values = [v for _, points in series for _, v in points if v is not None]
    top = _nice_max(max(values, default=0.0))
    span = max(until - since, 1e-9)

    def sx(t: float) -> float:
        return x0 + (min(max(t, since), until) - since) / span * (x1 - x0)

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    for i in range(6):  # horizontal grid and y labels
        v = top * i / 5
        out.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{sy(v):.1f}" y2="{sy(v):.1f}"/>'
                   f'<text class="tick" x="{x0 - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{_num(v)}</text>')
    step = bucket_size(span, 6)
    t = math.ceil(since / step) * step
    while t <= until:
        out.append(f'<line class="axis" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{y0}" y2="{y0 + 4}"/>'
                   f'<text class="tick" x="{sx(t):.1f}" y="{y0 + 17}" text-anchor="middle">'
                   f"{escape(_tick_label(t, span))}</text>")
        t += step
    out.append(f'<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/>'
               f'<line class="axis" x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/>'
               f'<text class="unit" x="16" y="{(y0 + y1) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(y0 + y1) / 2})">{escape(unit)}</text>')
    if not values:
        out.append(f'<text class="empty" x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle">no data</text>')
    for i, (_, points) in enumerate(series):
        color, d, dots, pen = COLORS[i % len(COLORS)], [], [], False
        for t, v in points:
            if v is None:
                pen = False
                continue
            d.append(f"{'L' if pen else 'M'}{sx(t):.1f} {sy(v):.1f}")
            dots.append(f'<circle cx="{sx(t):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{color}"/>')
            pen = True
        if d:
            out.append(f'<path class="line" d="{" ".join(d)}" fill="none" stroke="{color}" stroke-width="2" '
                       'stroke-linejoin="round"/>')
            out += dots if len(dots) <= 120 else []
    out += _legend([label for label, _ in series], H - 22)
    out.append("</svg>")
    return "".join(out)


def bar_chart(title: str, bars: Sequence[tuple[str, int, int]]) -> str:
    """Horizontal bars: (label, ok count, error count), errors stacked in red."""
    height = TOP + 22 * max(len(bars), 1) + 46
    out = _svg_open(title, height)
    x0, x1, label_x = 260, W - 70, 252
    top = _nice_max(max((ok + bad for _, ok, bad in bars), default=0))
    for i, (label, ok, bad) in enumerate(bars):
        y = TOP + 22 * i
        text = _short(label, 38)
        w_ok, w_bad = ok / top * (x1 - x0), bad / top * (x1 - x0)
        out.append(f'<text class="tick" x="{label_x}" y="{y + 14}" text-anchor="end">{escape(text)}</text>'
                   f'<rect class="bar" x="{x0}" y="{y + 3}" width="{w_ok:.1f}" height="15" fill="{COLORS[0]}"/>'
                   f'<rect class="bar error" x="{x0 + w_ok:.1f}" y="{y + 3}" width="{w_bad:.1f}" height="15" '
                   f'fill="{COLORS[1]}"/><text class="tick" x="{x0 + w_ok + w_bad + 6:.1f}" y="{y + 14}">'
                   f"{ok + bad}</text>")
    y_axis = TOP + 22 * max(len(bars), 1)
    out.append(f'<line class="axis" x1="{x0}" x2="{x0}" y1="{TOP}" y2="{y_axis}"/>'
               f'<line class="axis" x1="{x0}" x2="{x1}" y1="{y_axis}" y2="{y_axis}"/>')
    for i in range(5):
        v = top * i / 4
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text class="tick" x="{x:.1f}" y="{y_axis + 15}" text-anchor="middle">{_num(v)}</text>')
    out += _legend(["ok or cancelled", "errors"], height - 10)
    out.append("</svg>")
    return "".join(out)


def _top_series(groups: dict[str, list[Row]]) -> dict[str, list[Row]]:
    if len(groups) <= MAX_SERIES:
        return groups
    names = list(groups)
    kept = {name: groups[name] for name in names[:MAX_SERIES - 1]}
    kept["other"] = [r for name in names[MAX_SERIES - 1:] for r in groups[name]]
    return kept


# ---------------------------------------------------------------------------- the report


def build_report(rows: Sequence[Row], since: float, until: float) -> tuple[str, str]:
    """``(html, text)`` for ``rows`` (each with at least ``time``) between ``since`` and ``until``."""
    rows = sorted(rows, key=lambda r: r["time"])
    until = max(until, since + 1)
    step, starts = _buckets(since, until)
    by_model = _group(rows, _model)
    by_instance = _group(rows, _instance)
    model_stats = {name: stats(group) for name, group in by_model.items()}
    instance_stats = {key: stats(group) for key, group in by_instance.items()}
    key_stats = {key: stats(group) for key, group in sorted(_group(rows, _key).items())}
    total = stats(rows)
    shared = _top_series(by_model)

    def minutes(t: float) -> float:  # of the bucket starting at t inside [since, until]: the ends are partial
        return max(min(t + step, until) - max(t, since), 1.0) / 60.0

    def over_time(groups: dict[str, list[Row]], value: Any) -> list[Series]:
        return [(name, [(t, value(t, b)) for t, b in zip(starts, _by_bucket(g, starts, step))])
                for name, g in groups.items()]

    def error_pct(_: float, bucket: list[Row]) -> float | None:
        return 100.0 * sum(r.get("outcome") == "error" for r in bucket) / len(bucket) if bucket else None

    def pct_series(group: list[Row], field: str) -> list[Series]:
        buckets = _by_bucket(group, starts, step)
        vals = [[r[field] for r in b if r.get(field) is not None] for b in buckets]
        return [(f"p{q}", [(t, percentile(v, q)) for t, v in zip(starts, vals)]) for q in (50, 90, 99)]

    step_text = next(f"{step // size} {unit}" for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))
                     if step % size == 0)
    charts = [
        line_chart(f"Requests per minute (per {step_text})", "requests/min",
                   over_time(shared, lambda t, b: len(b) / minutes(t)), since, until),
        line_chart(f"Error rate (per {step_text})", "errors %", over_time(shared, error_pct), since, until),
        line_chart(f"Completion tokens per minute (per {step_text})", "tokens/min",
                   over_time(shared, lambda t, b: sum(r.get("completion_tokens") or 0 for r in b) / minutes(t)),
                   since, until),
        bar_chart("Requests by instance", [
            (f"{inst} ({model})", s.requests - s.errors, s.errors)
            for (inst, model), s in list(instance_stats.items())[:MAX_INSTANCE_BARS]]),
    ]
    model_sections = []
    for name, group in list(by_model.items())[:MAX_MODEL_CHARTS]:
        model_sections.append(
            f"<h3>{escape(_short(name))}</h3><div class=\"charts\">"
            + line_chart(f"Latency of {_short(name)} (s)", "seconds", pct_series(group, "latency_s"), since, until)
            + line_chart(f"Time to first token of {_short(name)} (s)", "seconds", pct_series(group, "ttft_s"),
                         since, until)
            + "</div>")
    html = _page(rows, since, until, total, model_stats, instance_stats, charts, model_sections, key_stats)
    return html, _text(rows, since, until, total, model_stats, instance_stats, key_stats)


_STAT_HEADERS = ["requests", "errors", "error %", "cancelled", "p50", "p90", "p99", "TTFT p50", "TTFT p90",
                 "TTFT p99", "prompt tokens", "completion tokens", "feedback (n)"]


def _stat_cells(s: Stats) -> list[str]:
    return [str(s.requests), str(s.errors), f"{100 * s.error_rate:.1f}", str(s.cancelled),
            *(fmt_s(v) for v in s.latency), *(fmt_s(v) for v in s.ttft),
            fmt_n(s.prompt_tokens), fmt_n(s.completion_tokens), _fmt_feedback(s)]


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: range) -> str:
    """A table; the columns at the indices in ``numeric`` are right-aligned."""
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{escape(_short(str(c), MAX_CELL))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _request_cells(r: Row) -> list[Any]:
    return [_fmt_time(r["time"]), r.get("request_id"), _model(r), r.get("instance_id") or NONE, r.get("route") or "",
            "yes" if r.get("stream") else "no", fmt_s(r.get("latency_s")), fmt_s(r.get("ttft_s")),
            r.get("prompt_tokens") or 0, r.get("completion_tokens") or 0, r.get("outcome") or ""]


_CSS = """body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}h3{font-size:15px}
.meta{color:#4b5563}.scroll{overflow-x:auto}.charts{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{background:#fff;border:1px solid #e5e7eb;border-radius:6px;max-width:100%;height:auto}
svg.chart text{font:12px system-ui,sans-serif;fill:#374151}
svg.chart text.title{font-size:14px;font-weight:600;fill:#111827}
svg.chart .grid{stroke:#e5e7eb}svg.chart .axis{stroke:#6b7280}svg.chart text.empty{fill:#9ca3af;font-size:14px}
table{border-collapse:collapse;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left}
td{max-width:28em;overflow-wrap:anywhere}h3{overflow-wrap:anywhere}
th{background:#f9fafb}.num{text-align:right;font-variant-numeric:tabular-nums}"""


def _page(rows: Sequence[Row], since: float, until: float, total: Stats, model_stats: dict[str, Stats],
          instance_stats: dict[tuple[str, str], Stats], charts: list[str], model_sections: list[str],
          key_stats: dict[str, Stats]) -> str:
    zone = datetime.fromtimestamp(until).astimezone().strftime("UTC%z")
    slowest = sorted((r for r in rows if r.get("latency_s") is not None), key=lambda r: -r["latency_s"])[:SLOWEST]
    failed = [r for r in reversed(rows) if r.get("outcome") == "error"]
    more = f"<p class=meta>... and {len(failed) - MAX_FAILED} more.</p>" if len(failed) > MAX_FAILED else ""
    request_headers = ["time", "request id", "model", "instance", "route", "stream", "latency", "TTFT",
                       "prompt tokens", "completion tokens", "outcome"]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Corral request report {escape(_fmt_time(since))} - {escape(_fmt_time(until))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Corral request report</h1>",
        f"<p class=meta>{escape(_fmt_time(since))} to {escape(_fmt_time(until))} ({zone}): {total.requests} requests, "
        f"{total.errors} errors ({100 * total.error_rate:.1f}%), latency p50 {fmt_s(total.latency[0])}, "
        f"p99 {fmt_s(total.latency[2])}, feedback {escape(_fmt_feedback(total))}.</p>",
        "<h2>Models</h2>",
        _html_table(["model", *_STAT_HEADERS], ([name, *_stat_cells(s)] for name, s in model_stats.items()),
                    range(1, 14)),
        "<h2>Instances</h2>",
        _html_table(["instance", "model", *_STAT_HEADERS],
                    ([inst, model, *_stat_cells(s)] for (inst, model), s in instance_stats.items()), range(2, 15)),
        "<h2>API keys</h2>",
        _html_table(["key id", *_STAT_HEADERS], ([key, *_stat_cells(s)] for key, s in key_stats.items()), range(1, 14)),
        "<h2>Over time</h2><div class=charts>", *charts, "</div>",
        "<h2>Latency by model</h2>", *model_sections,
        f"<h2>Slowest requests ({len(slowest)})</h2>",
        _html_table(request_headers, (_request_cells(r) for r in slowest), range(6, 10)),
        f"<h2>Failed requests ({len(failed)})</h2>",
        _html_table(["time", "request id", "model", "instance", "route", "HTTP status", "error"],
                    ([_fmt_time(r["time"]), r.get("request_id"), _model(r), r.get("instance_id") or NONE,
                      r.get("route") or "", r.get("http_status") or "", r.get("error") or ""]
                     for r in failed[:MAX_FAILED]), range(5, 6)) if failed else "<p class=meta>None.</p>",
        more, "</body></html>\n",
    ]
    return "\n".join(parts)


def _text(rows: Sequence[Row], since: float, until: float, total: Stats, model_stats: dict[str, Stats],
          instance_stats: dict[tuple[str, str], Stats], key_stats: dict[str, Stats]) -> str:
    def cells(s: Stats) -> list[str]:
        return [str(s.requests), f"{100 * s.error_rate:.1f}%", *(fmt_s(v) for v in s.latency), fmt_s(s.ttft[0]),
                fmt_s(s.ttft[1]), f"{fmt_n(s.prompt_tokens)}/{fmt_n(s.completion_tokens)}", _fmt_feedback(s)]

    head = ["REQUESTS", "ERRORS", "P50", "P90", "P99", "TTFT P50", "TTFT P90", "TOKENS IN/OUT", "FEEDBACK"]
    models = render_table(["MODEL", *head], [[name, *cells(s)] for name, s in model_stats.items()],
                          align=["l", *"rrrrrrrrr"])
    instances = render_table(["INSTANCE", "MODEL", *head],
                             [[inst, model, *cells(s)] for (inst, model), s in instance_stats.items()],
                             align=["l", "l", *"rrrrrrrrr"])
    keys = render_table(["KEY ID", *head], [[key, *cells(s)] for key, s in key_stats.items()], align=["l", *"rrrrrrrrr"])
    lines = [f"{_fmt_time(since)} to {_fmt_time(until)}: {total.requests} requests, {total.errors} errors "
             f"({100 * total.error_rate:.1f}%), {total.cancelled} cancelled", "", models, "", instances, "", keys]
    slowest = max((r for r in rows if r.get("latency_s") is not None), key=lambda r: r["latency_s"], default=None)
    if slowest is not None:
        lines += ["", f"slowest: {fmt_s(slowest['latency_s'])} {slowest.get('request_id')} ({_model(slowest)}, "
                      f"{slowest.get('instance_id') or NONE}) at {_fmt_time(slowest['time'])}"]
    return "\n".join(lines)
