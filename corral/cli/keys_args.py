"""``corral key create|list|update|revoke``: argument parsing (the commands are in
``corral.cli.keys``)."""

from __future__ import annotations

import argparse
import time

from corral.cli.admin_args import _connection, _count
from corral.core.keys import Limits

_COUNTS = ("rpm", "tpm", "max_concurrency", "budget_tokens", "budget_requests")


def _expiry(text: str) -> float:
    """``UNIX_SECONDS``, or a duration from now: ``30d``, ``12h``, ``45m``, ``90s``."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if text and text[-1] in units:
            return time.time() + float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIX seconds nor a duration like 30d, 12h, 45m") from None


def parse_limits(text: str) -> Limits:
    """``--key-limits rpm=600,tpm=100000,budget_tokens=5000000,budget_period=month``: the
    limits of every virtual key that sets none of its own (``[server.key_limits]``)."""
    values: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if name == "budget_period" and value in ("day", "month"):
            values[name] = value
        elif name in _COUNTS and value.strip().isdigit():
            values[name] = int(value)
        else:
            raise argparse.ArgumentTypeError(
                f"{item!r}: give NAME=N with NAME one of {', '.join(_COUNTS)}, or budget_period=day|month"
            )
    return Limits(**values)  # type: ignore[arg-type]


def _key_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", help="who the key is for (a team, a person)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME_OR_PATTERN",
                   help="a model the key may use, e.g. chat or 'embed-*' (repeatable; default: every model)")
    p.add_argument("--rpm", type=_count, metavar="N", help="requests per minute (0: no limit)")
    p.add_argument("--tpm", type=_count, metavar="N", help="prompt + completion tokens per minute (0: no limit)")
    p.add_argument("--max-concurrency", type=_count, metavar="N", help="requests in flight at once (0: no limit)")
    p.add_argument("--budget-tokens", type=_count, metavar="N", help="tokens per budget period (0: no limit)")
    p.add_argument("--budget-requests", type=_count, metavar="N", help="requests per budget period (0: no limit)")
    p.add_argument("--budget-period", choices=["day", "month"], help="the budget's period (default day)")
    p.add_argument("--expires", type=_expiry, dest="expires_at", metavar="WHEN",
                   help="UNIX seconds, or from now: 30d, 12h, 45m")


def add_key_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("key", help="create, list, change and revoke virtual API keys (admin API)",
                       description="Manage the virtual API keys of a running Corral through its admin API.")
    ksub = k.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    p = ksub.add_parser("create", help="a new key: its secret is printed once, keep it")
    p.add_argument("name")
    _key_fields(p)
    _connection(p)
    p = ksub.add_parser("list", help="every key (never a secret)")
    _connection(p)
    p = ksub.add_parser("update", help="change a key's name, owner, models, limits or expiry")
    p.add_argument("id")
    p.add_argument("--name")
    _key_fields(p)
    _connection(p)
    p = ksub.add_parser("revoke", help="refuse a key from now on, on every gateway")
    p.add_argument("id")
    _connection(p)
