"""Arguments of the cluster commands (kept apart from their implementation so that
``corral --help`` imports nothing heavy)."""

from __future__ import annotations

import argparse

from corral.cli import protocols
from corral.cli.keys_args import parse_limits
from corral.cli.tls_args import add_tls_arguments


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def common(p: argparse.ArgumentParser, port: int) -> None:
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
        p.add_argument("--cluster-token", help="shared secret of the cluster (also CORRAL_CLUSTER_TOKEN)")
        p.add_argument("--cluster-token-file", metavar="FILE", help="read the cluster token from FILE")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        add_tls_arguments(p, serving=True)

    def registry_choice(p: argparse.ArgumentParser) -> None:
        p.add_argument("--controller", metavar="URL", help="join through a controller (comma-separate several)")
        p.add_argument("--registry", metavar="URL", help="or use a registry directly: sqlite:///F, postgresql://..., etcd://H:P")

    c = sub.add_parser("controller", help="run the control plane (registry authority, admin API)")
    common(c, 8001)
    c.add_argument("--registry", metavar="URL", help="memory:// (default), sqlite:///F, postgresql://..., etcd://H:P[,H2:P2]")
    c.add_argument("--admin-token", help="required on /admin (also CORRAL_ADMIN_TOKEN)")
    c.add_argument("--admin-token-file", metavar="FILE")
    c.add_argument("--ui-gateway", metavar="URL",
                   help="a gateway the web console (/ui) sends playground requests and reads metrics through")
    c.add_argument("--ui-api-key", action="store_true",
                   help="tell the web console that the gateway wants an API key (it asks the operator for one)")
    c.add_argument("--launcher", metavar="local|ray|ray://HOST:PORT",
                   help="start workers when placement needs one: local = `corral worker` processes on this machine; "
                        "ray://HOST:PORT (or ray with RAY_ADDRESS) = on a Ray cluster, placed by each model's resources")
    c.add_argument("--ray-namespace", default="corral", metavar="NAME",
                   help="Ray namespace of this controller's worker actors (default corral); a restarted controller "
                        "adopts the workers alive in it")
    c.add_argument("--launcher-controller-url", metavar="URL",
                   help="address launched workers reach this controller at (default: from --host and --port)")
    c.add_argument("--launcher-max-instances", type=int, default=1, metavar="N",
                   help="instances each launched worker takes (default 1)")
    c.add_argument("--launcher-idle", type=float, default=30.0, metavar="SECONDS",
                   help="stop a launched worker left without instances this long (default 30)")

    w = sub.add_parser("worker", help="host model instances for a cluster")
    common(w, 8100)
    registry_choice(w)
    w.add_argument("--config", metavar="FILE", help="TOML with [[models]] to host")
    w.add_argument("--model", metavar="PATH_OR_HUB_ID", help="host one model without a file")
    w.add_argument("--name", help="model name for --model")
    w.add_argument("--kind", choices=["llm", "embedding", "rerank"])
    w.add_argument("--engine")
    w.add_argument("--advertise-address", metavar="URL", help="address gateways use to reach this worker")
    w.add_argument("--lease-ttl", type=float, default=5.0, help="seconds before a silent worker's instances vanish")
    w.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight work on shutdown")
    w.add_argument("--worker-id", metavar="ID", help="this worker's id (default: worker-<random>)")
    w.add_argument("--max-instances", type=int, default=0, metavar="N",
                   help="instances a controller may place here (default 0: no limit)")

    g = sub.add_parser("gateway", help="serve the OpenAI API for a cluster")
    common(g, 8000)
    registry_choice(g)
    g.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY", help="require this bearer key on /v1")
    g.add_argument("--protocols", metavar="LIST", help=protocols.HELP)
    g.add_argument("--queue-limit", type=int, default=256, help="requests waiting per model when instances are full")
    g.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request may wait for an instance")
    g.add_argument(
        "--worker-timeout", type=float, default=30.0, metavar="SECONDS",
        help="longest silence on a stream from a worker before the request fails over (workers ping every 5 s)",
    )
    g.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger request bodies get 413")
    g.add_argument("--records", metavar="URL", help="request records store (default: sqlite in the cache folder)")
    g.add_argument("--capture-text", action="store_true", help="keep prompt and completion text in the records")
    g.add_argument("--key-limits", type=parse_limits, metavar="LIMITS",
                   help="every virtual key's limits where it sets none, e.g. rpm=600,tpm=100000,budget_period=month")
    g.add_argument("--processes", type=_positive, default=1, metavar="N",
                   help="serve the port from N gateway processes (SO_REUSEPORT), kept by a supervisor: one per core "
                        "multiplies throughput; SIGHUP restarts them one at a time (default 1)")
    # set by the supervisor of --processes on each child, never by hand
    g.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    g.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    g.add_argument("--process-slot", help=argparse.SUPPRESS)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
