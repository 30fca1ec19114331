"""``corral report`` end to end: synthetic records in a SQLite file -> the CLI -> the HTML
opened in headless Chromium, which must lay out every SVG chart with drawn lines and bars
and paint a screenshot that is not blank.

Chromium is required (``scripts/install-system-deps.sh`` installs it): without it the
tests fail with that hint rather than skip.
"""

from __future__ import annotations

import html
import json
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.report import COLORS, chart_count
from tests.integration.browser import chromium
from tests.integration.servers import corral_env

MODELS = ("chat-a", "chat-b")

# ``corral report`` through its own parser and implementation (what ``corral.cli.main`` dispatches to)
REPORT_SCRIPT = (
    "import argparse, sys\n"
    "from corral.cli.report_args import add_report_command\n"
    "from corral.cli.report import run_report\n"
    "parser = argparse.ArgumentParser(prog='corral')\n"
    "add_report_command(parser.add_subparsers(dest='command'))\n"
    "sys.exit(run_report(parser.parse_args(sys.argv[1:])))\n"
)

# Appended to a copy of the report (the report itself has no scripts): what the browser laid out.
PROBE = """<script>
const charts = [...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {title: svg.dataset.title, width: box.width, height: box.height,
          paths: [...svg.querySelectorAll('path')].map(p => p.getTotalLength()),
          bars: [...svg.querySelectorAll('rect.bar')].map(r => r.getBBox().width)};
});
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify(charts);
document.body.appendChild(pre);
</script>"""


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def synthetic_events(now: float) -> list[RequestEvent]:
    """Six hours of traffic on two models and three instances, with errors, streams and feedback."""
    rng = random.Random(7)
    events = []
    for i in range(600):
        model = MODELS[i % 2]
        failed = rng.random() < 0.06
        stream = rng.random() < 0.5
        event = RequestEvent(request_id=f"syn-{i:04d}", route="chat", started_at=now - rng.uniform(0, 6 * 3600),
                             model=model, stream=stream, instance_id=f"{model}-{rng.randint(0, 1 if i % 2 else 0)}",
                             engine="transformers", params={"max_tokens": 64, "temperature": 0.7})
        event.latency_s = rng.lognormvariate(-1.2, 0.6) * (3 if model == "chat-b" else 1)
        event.ttft_s = event.latency_s * rng.uniform(0.05, 0.3) if stream else None
        event.prompt_tokens, event.completion_tokens = rng.randint(5, 400), 0 if failed else rng.randint(1, 64)
        if failed:
            event.outcome, event.http_status, event.error = "error", 503, "no ready instance <try later>"
        events.append(event)
    return events


async def write_records(db: Path, events: list[RequestEvent]) -> None:
    store = RecordStore(f"sqlite:///{db}")
    await store.open()
    for event in events:
        store.request_finished(event)
    await store.flush()
    for i in range(0, 120, 3):
        await store.feedback(f"syn-{i:04d}", [5, 4, 1, -1][i % 4], "synthetic")
    await store.close()


def corral_report(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", REPORT_SCRIPT, "report", *args], env=corral_env(home),
                          capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {depth=} {color=}"
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    prev, out = bytearray(stride), bytearray()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp] if i >= bpp else 0), prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3)
        prev = line
    return width, height, bytes(out)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    chromium()  # fail first, with the hint, when the browser is missing
    folder = tmp_path_factory.mktemp("report")
    db, out = folder / "records.db", folder / "report.html"
    import asyncio

    asyncio.run(write_records(db, synthetic_events(time.time())))
    result = corral_report(["--since", "24h", "--records", f"sqlite:///{db}", "--out", str(out)], folder)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_cli_prints_the_summary_and_writes_the_report(report: tuple[Path, str]) -> None:
    out, stdout = report
    assert "600 requests" in stdout and f"report written to {out}" in stdout
    for model in MODELS:
        assert any(line.startswith(model + " ") for line in stdout.splitlines())
    assert out.read_text().count('<svg class="chart"') == chart_count(len(MODELS))


def test_browser_dom_has_every_chart_with_drawn_paths(report: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = report
    dom = run_chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert "<title>Corral request report" in dom
    charts = re.findall(r'<svg class="chart".*?</svg>', dom, flags=re.S)
    assert len(charts) == chart_count(len(MODELS))
    line_charts = [c for c in charts if 'data-title="Requests by instance"' not in c]
    for chart in line_charts:
        assert re.search(r'<path class="line" d="M[\d.]+ [\d.]+ L', chart), chart[:200]
    assert "no ready instance &lt;try later&gt;" in dom and "<try later>" not in dom

    probe = out.with_name("probe.html")
    probe.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    dom = run_chromium(tmp_path, "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, dom[-2000:]
    laid_out = json.loads(html.unescape(found.group(1)))
    assert len(laid_out) == chart_count(len(MODELS))
    for chart in laid_out:
        assert chart["width"] > 300 and chart["height"] > 150, chart
        if chart["title"] == "Requests by instance":
            assert len(chart["bars"]) == 6 and max(chart["bars"]) > 100, chart  # 3 instances, ok + errors
        else:
            assert chart["paths"] and max(chart["paths"]) > 200, chart  # lines of real length


def test_screenshot_is_not_blank(report: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = report
    shot = out.with_name("report.png")
    run_chromium(tmp_path, "--hide-scrollbars", "--window-size=900,1400", f"--screenshot={shot}", out.as_uri())
    width, height, rgb = png_pixels(shot)
    assert (width, height) == (900, 1400)
    pixels = [rgb[i:i + 3] for i in range(0, len(rgb), 3)]
    non_white = sum(1 for p in pixels if p != b"\xff\xff\xff")
    assert non_white > 0.02 * len(pixels), f"only {non_white} non-white pixels: the page looks blank"
    assert len(set(pixels)) > 50
    blue = bytes(int(COLORS[0][i:i + 2], 16) for i in (1, 3, 5))  # the first series' colour
    near_blue = sum(1 for p in pixels if all(abs(a - b) <= 40 for a, b in zip(p, blue)))
    assert near_blue > 500, f"{near_blue} pixels of the chart colour {COLORS[0]}: no chart was painted"


def test_report_command_is_wired_into_corral(report: tuple[Path, str], tmp_path: Path) -> None:
    """``corral report`` through ``corral.cli.main`` (the same code as the script above)."""
    out, _ = report
    db = out.with_name("records.db")
    target = tmp_path / "wired.html"
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "report", "--since", "7d", "--records", f"sqlite:///{db}",
         "--model", MODELS[1], "--out", str(target)],
        env=corral_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "300 requests" in result.stdout and target.read_text().count('<svg class="chart"') == chart_count(1)
    missing = subprocess.run([sys.executable, "-m", "corral.cli.main", "report", "--out", str(target)],
                             env=corral_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no request records at" in missing.stderr and "Traceback" not in missing.stderr
