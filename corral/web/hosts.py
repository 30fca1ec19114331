"""Where a server is bound: whether an address is loopback, the rule behind "no admin
token is needed only on loopback" (the CLI's start-up check and the console's
read-only mode share it)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
