"""Arguments of ``corral bench`` (implementation: ``corral.cli.bench``).

Standard library only, so that ``corral --help`` stays fast.
"""

from __future__ import annotations

import argparse

from corral.cli.report_args import parse_duration


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number")
    return value


def add_bench_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench`` to the top-level subparsers."""
    p = sub.add_parser(
        "bench", help="load-test any OpenAI-compatible endpoint (req/s, time to first token, inter-token latency)",
        description="Send a steady load to an OpenAI-compatible API (Corral or any other server) and print "
        "requests per second, latency, time to first token, inter-token latency, output tokens per second "
        "and errors by status. Closed loop with --concurrency (default), open loop with --rate.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000/v1", metavar="URL",
                   help="the API base, ending in /v1 (default http://127.0.0.1:8000/v1)")
    p.add_argument("--model", default="", metavar="NAME", help="model to request (default: the first of GET /models)")
    p.add_argument("--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY' (default: $CORRAL_API_KEY)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", "-c", type=_positive_int, default=None, metavar="N",
                      help="clients each sending a request as soon as the last one is answered (default 1)")
    load.add_argument("--rate", "-r", type=_positive_float, metavar="R",
                      help="requests started per second whatever the server does (open loop)")
    p.add_argument("--poisson", action="store_true", help="with --rate: random (exponential) gaps between requests")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", "-d", type=_duration, metavar="DURATION",
                      help="how long to send: 30s, 2m... (default 10s)")
    stop.add_argument("--requests", "-n", type=_positive_int, metavar="N", help="send this many requests, then stop")
    p.add_argument("--warmup", type=_duration, metavar="DURATION",
                   help="send load this long first, without measuring it (e.g. 2s)")
    p.add_argument("--endpoint", choices=["chat", "completions", "embeddings", "messages"], default="chat",
                   help="/chat/completions (default), /completions or /embeddings")
    p.add_argument("--stream", action="store_true", help="stream the answers (needed for time to first token)")
    p.add_argument("--prompt-tokens", type=_positive_int, default=32, metavar="P",
                   help="prompt length in words, about one token each (default 32)")
    p.add_argument("--max-tokens", type=_positive_int, default=16, metavar="T", help="max_tokens of each request (default 16)")
    p.add_argument("--inputs", type=_positive_int, default=1, metavar="N", help="embeddings: texts per request (default 1)")
    p.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="longest wait for one answer (default 300)")
    p.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="split the load over N generator processes (for more than about 20k req/s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
