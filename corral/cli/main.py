"""Entry point: argument parsing and dispatch to subcommands."""

from __future__ import annotations

import argparse
import sys

from corral import __version__
from corral.cli import protocols


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Deploy many models on many engines behind one OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = sub.add_parser(
        "start",
        help="run gateway, controller and worker in one process (standalone)",
        description="Serve models over the OpenAI API. With no --config or --model, serves 'smollm2' "
        "(SmolLM2-135M-Instruct, a small real chat model, on llama.cpp) and 'all-minilm-l6-v2' (an embedding model).",
    )
    start.add_argument("--config", metavar="FILE", help="TOML file declaring [server] and [[models]]")
    start.add_argument("--model", metavar="PATH_OR_HUB_ID", help="serve one model without a config file")
    start.add_argument("--name", help="name clients use for --model (default: its last path component)")
    start.add_argument("--kind", choices=["llm", "embedding", "rerank"], help="kind of --model (default: detected)")
    start.add_argument("--engine", help="engine of --model (default: transformers or sentence-transformers)")
    start.add_argument("--host", help="bind address (default 127.0.0.1)")
    start.add_argument("--port", type=int, help="port (default 8000)")
    start.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 (repeatable; also CORRAL_API_KEY)",
    )
    start.add_argument("--protocols", metavar="LIST", help=protocols.HELP)
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    start.add_argument("--admin-token", help="required on /admin (also CORRAL_ADMIN_TOKEN)")
    start.add_argument("--admin-token-file", metavar="FILE", help="read the admin token from FILE")
    from corral.cli.tls_args import add_tls_arguments

    add_tls_arguments(start, serving=True)

    from corral.cli.cluster_args import add_cluster_commands

    add_cluster_commands(sub)

    from corral.cli.admin_args import add_admin_commands

    add_admin_commands(sub)

    from corral.cli.keys_args import add_key_commands

    add_key_commands(sub)

    from corral.cli.trace_args import add_trace_command

    add_trace_command(sub)

    from corral.cli.report_args import add_report_command

    add_report_command(sub)

    from corral.cli.bench_args import add_bench_command

    add_bench_command(sub)

    engines = sub.add_parser("engines", help="engines this installation knows, and how to install missing ones")
    engines.add_argument("--json", action="store_true", help="machine output")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "start":
        from corral.cli.start import run_start

        return run_start(args)
    if args.command in ("controller", "worker", "gateway"):
        from corral.cli import cluster

        args.argv = list(argv if argv is not None else sys.argv[1:])  # a supervisor starts its children with it
        return int(getattr(cluster, f"run_{args.command}")(args))
    if args.command in ("model", "status", "audit", "key"):
        from corral.cli.admin import run_admin

        return run_admin(args)
    if args.command == "engines":
        from corral.cli.engines import run_engines

        return run_engines(args)
    if args.command == "report":
        from corral.cli.report import run_report

        return run_report(args)
    if args.command == "trace":
        from corral.cli.trace import run_trace

        return run_trace(args)
    if args.command == "bench":
        from corral.cli.bench import run_bench

        return run_bench(args)
    if args.command == "chat":
        from corral.cli.chat import run_chat

        return run_chat(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
