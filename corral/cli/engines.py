"""``corral engines``: every engine this installation knows, what it serves, and whether
its optional dependency is installed (with the command that installs it)."""

from __future__ import annotations

import argparse
import json

from corral.fmt.table import render_table
from corral.engines.catalog import all_entries


def run_engines(args: argparse.Namespace) -> int:
    entries = sorted(all_entries().values(), key=lambda e: e.name)
    rows = [
        {
            "engine": e.name,
            "kinds": sorted(k.value for k in e.kinds),
            "serves": list(e.serves),
            "installed": e.installed(),
            "install": None if e.installed() else e.install_hint(),
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps({"engines": rows}))
        return 0
    table = [
        [r["engine"], ", ".join(r["serves"]), "yes" if r["installed"] else "no", r["install"] or ""] for r in rows
    ]
    print(render_table(["ENGINE", "SERVES", "INSTALLED", "TO INSTALL"], table))
    return 0
