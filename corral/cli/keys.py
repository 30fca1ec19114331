"""``corral key ...``: a thin client of the admin API's ``/admin/v1/keys``. ``create``
prints the secret once (to stdout, alone on its line unless ``--json``); nothing else
ever shows one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from corral.cli.admin import AdminClient, _emit_json, _path, _table
from corral.cli.admin_args import UsageError
from corral.fmt.table import format_time

FIELDS = ("owner", "models", "rpm", "tpm", "max_concurrency", "budget_tokens", "budget_requests", "budget_period",
          "expires_at")


def _body(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _limits_cell(key: dict[str, Any]) -> str:
    parts = [f"{key[n]} {n}" for n in ("rpm", "tpm") if key.get(n)]
    if key.get("max_concurrency"):
        parts.append(f"{key['max_concurrency']} at once")
    for n, unit in (("budget_tokens", "tokens"), ("budget_requests", "requests")):
        if key.get(n):
            parts.append(f"{key[n]} {unit}/{key.get('budget_period') or 'day'}")
    return ", ".join(parts) or "-"


def cmd_create(args: argparse.Namespace, client: AdminClient) -> int:
    data = client.change("POST", "/keys", {"name": args.name, **_body(args, FIELDS)})
    if args.json:
        _emit_json(data)
        return 0
    print(data["key"])
    print(f"created {data['id']} ({data['name']}): the key above is shown only now; keep it", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, client: AdminClient) -> int:
    data = client.get("/keys")
    if args.json:
        _emit_json(data)
        return 0
    rows = [[k["id"], k["name"], k.get("owner") or "-", ",".join(k.get("models") or []) or "*", _limits_cell(k),
             format_time(k["expires_at"]) if k.get("expires_at") else "-",
             "revoked" if k.get("revoked_at") else "active", k.get("hint") or "-"] for k in data["keys"]]
    headers = ["ID", "NAME", "OWNER", "MODELS", "LIMITS", "EXPIRES", "STATE", "KEY"]
    print(_table(headers, rows, "llllllll", "LIMITS") if rows else "no keys")
    return 0


def cmd_update(args: argparse.Namespace, client: AdminClient) -> int:
    body = _body(args, ("name", *FIELDS))
    if not body:
        raise UsageError("nothing to change: give --name, --owner, --model, a limit or --expires")
    data = client.change("PATCH", _path("keys", args.id), body)
    if args.json:
        _emit_json(data)
    else:
        print(f"updated {args.id}: {_limits_cell(data['key'])}")
    return 0


def cmd_revoke(args: argparse.Namespace, client: AdminClient) -> int:
    data = client.change("DELETE", _path("keys", args.id))
    if args.json:
        _emit_json(data)
    else:
        print(f"revoked {args.id}")
    return 0


KEY_COMMANDS: dict[str, Callable[[argparse.Namespace, AdminClient], int]] = {
    "create": cmd_create, "list": cmd_list, "update": cmd_update, "revoke": cmd_revoke,
}
