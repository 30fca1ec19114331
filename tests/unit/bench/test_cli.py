"""``corral bench`` arguments and its summary rendering (no server needed)."""

from __future__ import annotations

import pytest

from corral.bench.stats import Samples, summarize
from corral.cli.bench import _config, render_summary
from corral.cli.main import _parser


def test_defaults_and_durations() -> None:
    args = _parser().parse_args(["bench", "--model", "m"])
    config = _config(args)
    assert config.url == "http://127.0.0.1:8000/v1" and config.concurrency == 1 and config.duration_s == 10.0
    args = _parser().parse_args(["bench", "-n", "50", "-c", "8", "--stream", "--max-tokens", "64"])
    config = _config(args)
    assert config.requests == 50 and config.duration_s is None and config.concurrency == 8 and config.stream
    assert _config(_parser().parse_args(["bench", "-d", "2m"])).duration_s == 120.0


@pytest.mark.parametrize("argv", [
    ["bench", "--rate", "5", "--concurrency", "2"],
    ["bench", "--duration", "5s", "--requests", "3"],
    ["bench", "--concurrency", "0"],
    ["bench", "--rate", "-1"],
    ["bench", "--endpoint", "images"],
])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API_KEY", "from-env")
    assert _config(_parser().parse_args(["bench"])).api_key == "from-env"
    assert _config(_parser().parse_args(["bench", "--api-key", "given"])).api_key == "given"


def test_summary_table_shows_distributions_throughput_and_errors() -> None:
    s = Samples()
    s.latency.extend([0.0123, 0.0456])
    s.ttft.extend([0.0011, 0.0022])
    s.itl.extend([0.0004, 0.0005])
    s.ok, s.output_tokens, s.elapsed_s = 2, 64, 1.0
    s.errors["503"] = 1
    config = {"url": "http://h/v1/chat/completions", "endpoint": "chat", "model": "m", "concurrency": 4,
              "rate": None, "stream": True}
    text = render_summary(summarize(s, config))
    assert "3 requests to http://h/v1/chat/completions (chat, model m, concurrency 4, streamed)" in text
    assert "time to first token (ms)" in text and "inter-token latency (ms)" in text
    assert "2.0 req/s, 64.0 output tokens/s" in text
    assert "errors        503: 1" in text
