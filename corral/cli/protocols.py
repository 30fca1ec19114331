"""``--protocols``: which service protocols a gateway serves, shared by ``corral start``
and ``corral gateway``."""

from __future__ import annotations

from corral.core.errors import ConfigError
from corral.core.spec import PROTOCOLS

HELP = f"comma-separated service protocols to serve (default: all of {','.join(PROTOCOLS)})"


def parse_protocols(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        what = f"unknown protocol {unknown[0]!r}" if unknown else "names no protocol"
        raise ConfigError(f"--protocols {text!r}: {what}; choose from {', '.join(PROTOCOLS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--protocols {text!r}: names a protocol twice")
    return names
