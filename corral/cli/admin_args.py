"""Arguments of the management commands (``model``, ``status``, ``audit``, ``chat``).

Kept apart from their implementation (``corral.cli.admin``, ``corral.cli.chat``) so that
``corral --help`` imports nothing heavy: only the standard library is used here. Also holds
the small pure helpers the implementations share and the unit tests exercise: option value
parsing (``key=value``, JSON when it parses) and address/token resolution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any

from corral.cli.tls_args import add_tls_arguments

DEFAULT_ADDRESS = "http://127.0.0.1:8000"
ROUTING_POLICIES = ("power_of_two", "round_robin", "weighted", "least_requests", "latency", "session", "prefix")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class UsageError(Exception):
    """Arguments that parse but do not make sense together: exit code 2."""


# ---------------------------------------------------------------------------- helpers


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses (``16``, ``true``, ``[1, 2]``, ``"x"``), else the string.

    ``NaN`` and ``Infinity`` stay strings: they are not JSON and no option wants them.
    """

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constant)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, parse_value(value))``; raise ``ValueError`` when malformed."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"{text!r}: expected key=value")
    if not _KEY.match(key):
        raise ValueError(f"{text!r}: {key!r} is not a valid option name")
    return key, parse_value(value)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Several ``key=value`` items as a dict (a repeated key keeps its last value)."""
    return dict(parse_option(item) for item in items or [])


def _option_arg(text: str) -> str:
    try:
        parse_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive {what}")
    return value


def _seconds(text: str) -> float:
    return _positive_number(text, "number of seconds")


def _delay(text: str) -> float:
    """Seconds, where 0 means "at once"."""
    return 0.0 if text.strip() in ("0", "0.0") else _seconds(text)


def _amount(text: str) -> float:
    return _positive_number(text, "number")


def _share(text: str) -> float:
    """A resource amount where 0 (reserve none) is allowed."""
    return 0.0 if text.strip() in ("0", "0.0") else _positive_number(text, "number")


def _custom_resource(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=AMOUNT, e.g. nodeb=1")
    return name.strip(), _positive_number(amount, "number")


def normalize_address(address: str) -> str:
    """``host:port`` -> ``http://host:port``; no trailing slash; raise ``UsageError`` if empty."""
    address = address.strip().rstrip("/")
    if not address:
        raise UsageError("the address is empty (set --address or CORRAL_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise UsageError(f"address {address!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UsageError(f"address {address!r}: only http:// and https:// are supported")
    if not parts.hostname or any(c.isspace() for c in parts.netloc):
        raise UsageError(f"address {address!r}: no valid host name")
    return address


def resolve_address(value: str | None) -> str:
    """``--address``, else ``CORRAL_ADDRESS``, else the standalone default, normalized."""
    return normalize_address(value or os.environ.get("CORRAL_ADDRESS") or DEFAULT_ADDRESS)


def resolve_token(value: str | None, env: str = "CORRAL_ADMIN_TOKEN") -> str | None:
    """``--token``, else the environment variable ``env``, else ``None``."""
    return value or os.environ.get(env) or None


def check_deploy(args: argparse.Namespace) -> None:
    """Raise ``UsageError`` unless the deploy arguments name a spec one way or the other."""
    if args.file:
        flags = (("--engine", args.engine), ("--source", args.source), ("--kind", args.kind), ("--option", args.options))
        clashing = [flag for flag, value in flags if value]
        if clashing:
            raise UsageError(f"--file declares the model; do not combine it with {', '.join(clashing)}")
        return
    needed = (("NAME", args.name), ("--engine", args.engine), ("--source", args.source))
    missing = [what for what, value in needed if not value]
    if missing:
        raise UsageError(f"model deploy needs {', '.join(missing)} (or --file spec.toml)")


def default_kind(engine: str) -> str:
    """The engine's kind when it serves one; of several, ``llm`` if among them, else
    ``embedding`` (a reranker must be asked for with --kind rerank)."""
    try:
        from corral.engines.catalog import get_entry

        kinds = get_entry(engine).kinds
        values = {k.value for k in kinds}
        if len(values) == 1:
            return values.pop()
        return "llm" if "llm" in values else ("embedding" if "embedding" in values else sorted(values)[0])
    except Exception:  # an engine only the server knows: let the server decide
        return "llm"


def spec_from_file(file: str, name: str | None) -> dict[str, Any]:
    """The ``[[models]]`` table of ``file`` (the one named ``name`` when there are several),
    checked with the config loader unless the engine is unknown here (the server may know it)."""
    import tomllib
    from pathlib import Path

    from corral.config.loader import load_settings
    from corral.core.errors import ConfigError

    try:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{file}: invalid TOML: {exc}") from None
    raw = data.get("models")
    tables = [t for t in raw if isinstance(t, dict)] if isinstance(raw, list) else []
    if not tables:
        raise UsageError(f"{file}: declares no [[models]] table")
    names = [str(t.get("name")) for t in tables]
    if name is not None:
        if name not in names:
            raise UsageError(f"{file}: no [[models]] table named {name!r} (it has: {', '.join(names)})")
        table = tables[names.index(name)]
    elif len(tables) > 1:
        raise UsageError(f"{file}: declares {len(tables)} models ({', '.join(names)}); "
                         f"pick one: corral model deploy NAME --file {file}")
    else:
        table = tables[0]
    try:
        load_settings(Path(file))
    except ConfigError as exc:
        if not (exc.param or "").endswith(".engine"):  # an engine unknown here may be known to the server
            raise UsageError(exc.message) from None
    return dict(table)


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /admin/v1/models`` from ``model deploy`` arguments (flags override the file)."""
    check_deploy(args)
    if args.file:
        spec = spec_from_file(args.file, args.name)
    else:
        spec = {"name": args.name, "kind": args.kind or default_kind(args.engine), "engine": args.engine,
                "source": args.source}
        options = parse_options(args.options)
        if options:
            spec["options"] = options
    resources = {k: v for k, v in (("num_cpus", args.num_cpus), ("num_gpus", args.num_gpus),
                                   ("memory_gb", args.memory_gb)) if v is not None}
    if args.resources:
        resources["custom"] = dict(args.resources)
    if resources:  # over the file's table, key by key (the server checks the values)
        spec["resources"] = {**(spec.get("resources") or {}), **resources}
    if args.replicas is not None:
        spec["replicas"] = args.replicas
    if args.routing is not None:
        spec["routing"] = args.routing
    return spec


# ---------------------------------------------------------------------------- parsers


def _connection(p: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    p.add_argument("--address", metavar="URL",
                   help=f"the controller or standalone server (default: CORRAL_ADDRESS, else {DEFAULT_ADDRESS}; "
                   "a controller usually listens on :8001)")
    p.add_argument("--token", help="admin token (default: CORRAL_ADMIN_TOKEN)")
    if json_output:
        p.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="seconds to wait for each answer (default 10)")
    add_tls_arguments(p, serving=False)


def _waiting(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--no-wait", action="store_true", help=f"return once the change is accepted, not when {what}")
    p.add_argument("--wait-timeout", type=_seconds, metavar="SECONDS",
                   help="give up waiting after SECONDS (the change goes on; default: no limit)")


def _instance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instance", metavar="ID", help="only this instance (its id or a unique prefix)")


def add_admin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``model``, ``status``, ``audit`` and ``chat`` to the top-level subparsers."""
    m = sub.add_parser("model", help="list, deploy, scale, restart and stop models (admin API)",
                       description="Manage the models of a running Corral through its admin API.")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    p = msub.add_parser("list", help="models and their instances")
    _connection(p)
    p.add_argument("--instances", action="store_true", help="also list every instance")

    p = msub.add_parser("deploy", help="start serving a new model",
                        description="Deploy a model from flags or from a TOML file with one [[models]] table; "
                        "by default wait until its replicas are ready.")
    p.add_argument("name", nargs="?", metavar="NAME", help="what clients put in 'model'")
    p.add_argument("--file", metavar="FILE", help="a TOML file with a [[models]] table (NAME picks one of several)")
    p.add_argument("--engine", help="e.g. transformers, sentence-transformers")
    p.add_argument("--source", help="local path, hub id, demo:tiny-llama or package:MODULE (a path on the worker)")
    p.add_argument("--kind", choices=["llm", "embedding", "rerank"], help="default: what the engine serves, else llm")
    p.add_argument("--replicas", type=_positive, metavar="N", help="instances to run (default 1)")
    p.add_argument("--routing", choices=ROUTING_POLICIES, metavar="POLICY",
                   help=f"balancing policy: {', '.join(ROUTING_POLICIES)} (default power_of_two)")
    p.add_argument("--option", "-o", action="append", dest="options", type=_option_arg, metavar="KEY=VALUE",
                   help="engine option, repeatable; VALUE is JSON when it parses (16, true, [1,2]), else text")
    p.add_argument("--num-cpus", type=_share, metavar="N", help="CPUs each instance reserves (--launcher ray)")
    p.add_argument("--num-gpus", type=_share, metavar="N", help="GPUs each instance reserves (--launcher ray)")
    p.add_argument("--memory-gb", type=_amount, metavar="GB", help="memory each instance reserves (--launcher ray)")
    p.add_argument("--resource", action="append", dest="resources", type=_custom_resource, metavar="NAME=N",
                   help="a custom Ray resource each instance reserves, repeatable (e.g. nodeb=1)")
    _waiting(p, "the replicas are ready")
    _connection(p)

    p = msub.add_parser("stop", help="remove a model: its instances drain and stop")
    p.add_argument("name", metavar="NAME")
    _connection(p)

    p = msub.add_parser("scale", help="change the number of replicas and wait for them")
    p.add_argument("name", metavar="NAME")
    p.add_argument("replicas", type=_count, metavar="N", help="desired replicas (0 keeps the model, serving nothing)")
    _waiting(p, "N replicas are ready")
    _connection(p)

    p = msub.add_parser("autoscale", help="scale a model on its load (and to zero), or stop doing so",
                        description="Set the autoscaling policy of NAME (unset flags keep their defaults: "
                        "min 0, max 4, target-in-flight 2, delays 5 s up, 60 s down, 300 s to zero), or --off.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--off", action="store_true", help="turn autoscaling off (the current replicas stay)")
    p.add_argument("--min", type=_count, dest="min_replicas", metavar="N", help="fewest replicas (0: scale to zero)")
    p.add_argument("--max", type=_positive, dest="max_replicas", metavar="N", help="most replicas")
    p.add_argument("--target-in-flight", type=_amount, metavar="N",
                   help="requests running + queued per ready instance to aim for")
    p.add_argument("--upscale-delay", type=_delay, dest="upscale_delay_s", metavar="SECONDS",
                   help="demand above target this long before adding")
    p.add_argument("--downscale-delay", type=_delay, dest="downscale_delay_s", metavar="SECONDS",
                   help="demand below target this long before removing one")
    p.add_argument("--to-zero-delay", type=_delay, dest="downscale_to_zero_delay_s", metavar="SECONDS",
                   help="idle this long before going from 1 to 0")
    p.add_argument("--target-ttft-p90", type=_seconds, dest="target_ttft_p90_s", metavar="SECONDS",
                   help="also add capacity when time to first token p90 exceeds this")
    p.add_argument("--cold-start-timeout", type=_seconds, dest="cold_start_timeout_s", metavar="SECONDS",
                   help="how long a request waits for a model at zero to wake")
    _connection(p)

    p = msub.add_parser("restart", help="rolling restart, one instance at a time")
    p.add_argument("name", metavar="NAME")
    _waiting(p, "the restart is done")
    _connection(p)

    p = msub.add_parser("offline", help="keep instances loaded but send them no traffic")
    p.add_argument("name", metavar="NAME")
    _instance(p)
    _connection(p)

    p = msub.add_parser("online", help="send traffic to offline instances again")
    p.add_argument("name", metavar="NAME")
    _instance(p)
    _connection(p)

    p = msub.add_parser("routing", help="change a model's balancing policy")
    p.add_argument("name", metavar="NAME")
    p.add_argument("policy", choices=ROUTING_POLICIES, metavar="POLICY", help=", ".join(ROUTING_POLICIES))
    _connection(p)

    p = sub.add_parser("status", help="workers, models and health of a running Corral (admin API)")
    _connection(p)

    p = sub.add_parser("audit", help="recent changes: who did what (admin API)")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="events to show (default 20)")
    _connection(p)

    p = sub.add_parser("chat", help="interactive streaming chat with a model over the OpenAI API",
                       description="Chat with MODEL at ADDRESS/v1. Commands: /reset, /params [key=value ...], "
                       "/quit. Reads lines from stdin when it is not a terminal.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--address", metavar="URL",
                   help=f"the gateway or standalone server (default: CORRAL_ADDRESS, else {DEFAULT_ADDRESS})")
    p.add_argument("--api-key", metavar="KEY", help="bearer key for /v1 (default: CORRAL_API_KEY)")
    p.add_argument("--system", metavar="TEXT", help="system prompt (kept by /reset)")
    p.add_argument("--param", "-p", action="append", dest="params", type=_option_arg, metavar="KEY=VALUE",
                   help="initial sampling parameter, e.g. temperature=0.2 (repeatable)")
    p.add_argument("--timeout", type=_seconds, default=120.0, metavar="SECONDS",
                   help="seconds to wait for the next token (default 120)")
    add_tls_arguments(p, serving=False)
