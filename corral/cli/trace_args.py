"""Arguments of ``corral trace`` (standard library only: ``corral --help`` stays fast)."""

from __future__ import annotations

import argparse


def add_trace_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("trace", help="request traces kept in the request records (list, show)")
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)
    for name, text in (("list", "recent traced requests"), ("show", "one trace as a tree with timings")):
        p = tsub.add_parser(name, help=text)
        p.add_argument("--records", metavar="URL", help="records store (default: sqlite in the Corral cache folder)")
        p.add_argument("--json", action="store_true", help="machine output")
        if name == "list":
            p.add_argument("--since", default="1h", help="how far back: 30m, 24h, 7d (default 1h)")
            p.add_argument("--limit", type=int, default=20, help="traces to show (default 20)")
        else:
            p.add_argument("id", metavar="ID", help="a trace id or a request id (x-request-id)")
