"""Arguments of ``corral report`` (implementation: ``corral.cli.report``).

Standard library only, so that ``corral --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """``"30m"``, ``"24h"``, ``"7d"``, ``"1.5h"``, ``"2w"``, ``"90s"`` or plain seconds -> seconds (> 0).

    Raise ``ValueError`` for anything else.
    """
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 30m, 24h or 7d")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_report_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``report`` to the top-level subparsers."""
    p = sub.add_parser(
        "report", help="an HTML report and a terminal summary of recent requests (from the request records)",
        description="Read the request records ([server] records) and write a self-contained HTML report "
        "(latency, time to first token, errors, tokens, feedback per model and instance, charts over time); "
        "print a summary table.",
    )
    p.add_argument("--since", type=_duration, default=parse_duration("24h"), metavar="DURATION",
                   help="how far back: 30m, 24h, 7d... (default 24h)")
    p.add_argument("--out", default="report.html", metavar="FILE", help="the HTML file to write (default report.html)")
    p.add_argument("--records", metavar="URL",
                   help="sqlite:///FILE or postgresql://... (default: sqlite:///$CORRAL_HOME/records.db, "
                   "CORRAL_HOME defaulting to ~/.cache/corral)")
    p.add_argument("--model", metavar="NAME", help="only the requests for this model")
