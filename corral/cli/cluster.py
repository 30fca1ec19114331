"""``corral controller``, ``corral worker`` and ``corral gateway``: the cluster processes.
Each builds its service, then runs it with the shared ``Runner``.

TLS: each reads ``--tls-cert``/``--tls-key``/``--tls-ca`` once (``tls_from_args``),
serves HTTPS when given a certificate (and then advertises ``https://`` URLs for
itself), and hands one client ``SSLContext`` built from the CA to every client it
makes, so every hop to another Corral process verifies the same way."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.cli.serve import Runner, configure_logging, raise_fd_limit
from corral.cli.tls_args import tls_from_args
from corral.core.errors import ConfigError
from corral.cli.protocols import parse_protocols
from corral.core.spec import PROTOCOLS, ModelSpec, ServerSettings
from corral.core.keys import Limits
from corral.core.usage import StoreExchange
from corral.web.hosts import is_loopback

if TYPE_CHECKING:
    import asyncio
    import ssl

    from corral.controller.capacity import Capacity
    from corral.core.launcher import Launcher
    from corral.core.tls import TlsSettings
    from corral.gateway.service import GatewayService
    from corral.observe.metrics_shared import ProcessSlot

log = logging.getLogger("corral")


def secret(flag: str | None, file: str | None, env: str) -> str | None:
    """A token from its flag, else its file, else the environment. Never logged."""
    if flag:
        return flag
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"token file {file} is empty")
        return value
    return os.environ.get(env) or None


def _cluster_token(args: argparse.Namespace) -> str | None:
    return secret(args.cluster_token, args.cluster_token_file, "CORRAL_CLUSTER_TOKEN")


def _registry_url(args: argparse.Namespace) -> str:
    if bool(args.controller) == bool(args.registry):
        raise ConfigError("give exactly one of --controller URL or --registry URL")
    return str(args.controller or args.registry)


def run_controller(args: argparse.Namespace) -> int:
    from corral.controller.service import ControllerService
    from corral.core.tls import client_context
    from corral.fmt.urls import redact
    from corral.registry.factory import registry_from_url
    from corral.state.factory import state_from_url

    try:
        admin_token = secret(args.admin_token, args.admin_token_file, "CORRAL_ADMIN_TOKEN")
        if not admin_token and not is_loopback(args.host):
            raise ConfigError(
                f"refusing to serve the admin API on {args.host} without an admin token: "
                "pass --admin-token (or CORRAL_ADMIN_TOKEN), or bind to 127.0.0.1"
            )
        _require_cluster_token(_cluster_token(args), args.host, "cluster API")
        tls = tls_from_args(args)
        trust = client_context(tls.ca)
        store = state_from_url(args.registry)
        capacity = _capacity(args, tls) if args.launcher else None
        service = ControllerService(registry_from_url(args.registry), store, _cluster_token(args), admin_token, capacity,
                                    ui_routes=_console_routes(args, admin_token, trust), ssl_context=trust)
    except ConfigError as exc:
        return _fail(exc.message)
    configure_logging(args.log_level)
    log.info("controller on %s://%s:%d, registry %s", tls.scheme, args.host, args.port,
             redact(args.registry or "memory://"))
    return Runner().run(service.app, args.host, args.port, args.log_level, before_exit=service.shutdown, tls=tls)


def _console_routes(args: argparse.Namespace, admin_token: str | None, trust: ssl.SSLContext) -> list[Any]:
    """The web console at /ui; with --ui-gateway, its playground and charts reach that gateway."""
    from corral.console.proxy import gateway_proxy
    from corral.console.routes import ConsoleSettings, console_routes

    gateway = args.ui_gateway
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise ConfigError(f"--ui-gateway {gateway!r}: give an http:// or https:// URL")
    settings = ConsoleSettings(mode="cluster", host=args.host, admin_token=bool(admin_token),
                               api_key=bool(args.ui_api_key), gateway="/ui/gateway" if gateway else None,
                               records=False)
    return console_routes(settings, [gateway_proxy(gateway, admin_token, ssl_context=trust)] if gateway else None)


def _capacity(args: argparse.Namespace, tls: TlsSettings) -> Capacity:
    from corral.controller.capacity import Capacity

    if args.launcher_max_instances < 1:
        raise ConfigError("--launcher-max-instances must be at least 1")
    if args.launcher == "local":
        from corral.controller.local_launcher import LocalLauncher
        from corral.engines.sources import cache_dir

        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else _reachable_host(args.host)
        local = LocalLauncher(f"{tls.scheme}://{host}:{args.port}", cache_dir(), _cluster_token(args),
                              args.launcher_max_instances, tls=tls)
        return Capacity(local, args.launcher_idle)
    return Capacity(_ray_launcher(args, tls), args.launcher_idle)


def _ray_launcher(args: argparse.Namespace, tls: TlsSettings) -> Launcher:
    """``ray://HOST:PORT`` (the cluster's GCS address, as ``ray start --address`` takes
    it), or ``ray`` with the address in ``RAY_ADDRESS``. Ray itself is imported when the
    controller starts (``RayLauncher.open``), not here."""
    from corral.controller.ray_launcher import RayLauncher

    spec = str(args.launcher)
    if spec == "ray":
        address = os.environ.get("RAY_ADDRESS", "").strip()
        if not address:
            raise ConfigError("--launcher ray needs the cluster's address: set RAY_ADDRESS, or give --launcher ray://HOST:PORT")
    elif spec.startswith("ray://") and len(spec) > len("ray://"):
        address = spec[len("ray://"):]
    else:
        raise ConfigError(f"unknown --launcher {spec!r}: use local, ray (with RAY_ADDRESS) or ray://HOST:PORT")
    if args.launcher_max_instances != 1:
        raise ConfigError("with --launcher ray every instance has its own worker (its own Ray resources): "
                          "--launcher-max-instances must be 1")
    # launched workers run on other machines: they need an address of this controller they can reach
    host = socket.gethostname() if args.host in ("0.0.0.0", "::") else _reachable_host(args.host)
    url = (args.launcher_controller_url or f"{tls.scheme}://{host}:{args.port}").rstrip("/")
    return RayLauncher(address, args.ray_namespace, url, _cluster_token(args))


def _worker_models(args: argparse.Namespace) -> tuple[ModelSpec, ...]:
    if args.config:
        from corral.config.loader import load_settings

        models = load_settings(Path(args.config)).models
    elif args.model:
        from corral.cli.start import single_model

        models = (single_model(args.model, args.name, args.kind, args.engine),)
    elif args.controller:
        models = ()  # a managed worker: the controller tells it what to host
    else:
        raise ConfigError(
            "a worker joining a registry directly needs models: give --config worker.toml or --model PATH_OR_HUB_ID "
            "(or join through --controller to be managed)"
        )
    return models


def run_worker(args: argparse.Namespace) -> int:
    from corral.core.tls import client_context
    from corral.registry.factory import registry_from_url
    from corral.worker.service import WorkerService

    runner = Runner()
    try:
        token = _cluster_token(args)
        _require_cluster_token(token, args.host, "worker API")
        models = _worker_models(args)
        tls = tls_from_args(args)
        advertise = _advertise(args, tls)
        service = WorkerService(
            registry_from_url(_registry_url(args), token, client_context(tls.ca)),
            models,
            advertise,
            token,
            runner.fatal,
            lease_ttl=args.lease_ttl,
            drain_timeout=args.drain_timeout,
            worker_id=args.worker_id,
            max_instances=max(0, args.max_instances),
        )
    except ConfigError as exc:
        return _fail(exc.message)
    configure_logging(args.log_level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.info("worker %s on %s:%d, advertised as %s", service.worker.worker_id, args.host, args.port, advertise)
    return runner.run(service.app, args.host, args.port, args.log_level, before_exit=service.drain, tls=tls)


def _advertise(args: argparse.Namespace, tls: TlsSettings) -> str:
    """The URL gateways and the controller reach this worker at: ``--advertise-address``
    (``http://`` or, when serving TLS, ``https://`` added to a bare ``host:port``), else
    this worker's own bind address."""
    advertise = (args.advertise_address or f"{_reachable_host(args.host)}:{args.port}").rstrip("/")
    if not advertise.startswith(("http://", "https://")):
        advertise = f"{tls.scheme}://{advertise}"
    if tls.serving and advertise.startswith("http://"):
        # a plain http:// peer of a TLS port gets a failed handshake, never an answer
        raise ConfigError(f"--advertise-address {advertise}: this worker serves HTTPS (--tls-cert): "
                          "advertise an https:// URL")
    return advertise


def _reachable_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host  # an IPv6 literal in a URL needs brackets


def _require_cluster_token(token: str | None, host: str, what: str) -> None:
    if not token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the {what} on {host} without a cluster token: pass --cluster-token "
            "(or --cluster-token-file, or CORRAL_CLUSTER_TOKEN), or bind to 127.0.0.1"
        )


def run_gateway(args: argparse.Namespace) -> int:
    if args.processes > 1:
        return _supervise_gateway(args)
    from corral.gateway.router import RouterSettings
    from corral.core.tls import client_context
    from corral.gateway.service import GatewayService
    from corral.registry.factory import registry_from_url
    from corral.state.factory import state_from_url

    child = args.listen_fd is not None  # one of the processes of --processes N
    try:
        token = _cluster_token(args)
        keys = tuple(args.api_keys or ()) + ((os.environ["CORRAL_API_KEY"],) if os.environ.get("CORRAL_API_KEY") else ())
        tls = tls_from_args(args)
        trust = client_context(tls.ca)
        server = ServerSettings(
            host=args.host, port=args.port, api_keys=keys, log_level=args.log_level, max_body_bytes=args.max_body_bytes,
            records=args.records, capture_text=args.capture_text,
            protocols=PROTOCOLS if args.protocols is None else parse_protocols(args.protocols), tls=tls,
            key_limits=args.key_limits or Limits(),
        )
        routing = RouterSettings(queue_limit=args.queue_limit, queue_timeout=args.queue_timeout)
        if args.worker_timeout <= 5.0:
            raise ConfigError("--worker-timeout must be more than the workers' 5 s keep-alive interval")
        registry = registry_from_url(_registry_url(args), token, trust)
        # virtual keys and their shared counters: a controller serves and relays them; a
        # shared registry has the state store beside it (each process of --processes N
        # is a gateway of its own: the limits hold across them the same way)
        if args.controller:
            key_source, usage = registry, registry
        else:
            store = state_from_url(args.registry)
            key_source, usage = store, StoreExchange(store)
        process = None
        if child:
            process = _parse_slot(args.process_slot)
        service = GatewayService(
            registry, server, token, routing, worker_timeout_s=args.worker_timeout, key_source=key_source,  # type: ignore[arg-type]
            usage=usage, ssl_context=trust, process=process,  # type: ignore[arg-type]
        )
    except ConfigError as exc:
        return _fail(exc.message)
    if not child:
        configure_logging(args.log_level)
        raise_fd_limit()
        log.info("gateway on %s://%s:%d (protocols: %s)", tls.scheme, args.host, args.port, ", ".join(server.protocols))
        return Runner().run(service.app, args.host, args.port, args.log_level, tls=tls)
    assert process is not None
    return _serve_child(args, service, process, tls)


def _serve_child(args: argparse.Namespace, service: GatewayService, process: ProcessSlot, tls: TlsSettings) -> int:
    """One process of ``--processes N``, on the socket its supervisor holds."""
    from corral.cli.processes import tell_ready, watch_parent

    configure_logging(args.log_level, tag=f"[{process.slot}] ")
    sock = socket.socket(fileno=args.listen_fd)
    runner = Runner()
    tasks: list[asyncio.Task[None]] = []  # referenced here for as long as they run

    def started() -> None:
        tasks.extend((tell_ready(args.ready_fd, service.router.synced), watch_parent(runner.stop)))

    log.info("gateway process %d (pid %d) on %s://%s:%d", process.slot, os.getpid(), tls.scheme, args.host,
             sock.getsockname()[1])
    return runner.run(service.app, args.host, args.port, args.log_level, sock=sock, on_started=started, tls=tls)

def _child_argv(argv: list[str], slot: ProcessSlot, listen_fd: int, ready_fd: int) -> list[str]:
    """A supervised process's command line: the supervisor's own, as one process on a given socket."""
    return [sys.executable, "-m", "corral.cli.main", *argv, "--processes", "1", "--listen-fd", str(listen_fd),
            "--ready-fd", str(ready_fd), "--process-slot", f"{slot.slot}:{slot.generation}:{slot.folder}"]


def _parse_slot(text: str) -> ProcessSlot:
    from corral.observe.metrics_shared import ProcessSlot

    slot, generation, folder = text.split(":", 2)
    return ProcessSlot(Path(folder), int(slot), int(generation))


def _supervise_gateway(args: argparse.Namespace) -> int:
    from corral.cli.processes import supervise

    if args.listen_fd is not None:
        return _fail("--processes cannot be given to a supervised process")
    try:  # what fails the same way in every child is said once, here
        _cluster_token(args)
        _registry_url(args)
        if args.worker_timeout <= 5.0:
            raise ConfigError("--worker-timeout must be more than the workers' 5 s keep-alive interval")
    except ConfigError as exc:
        return _fail(exc.message)
    configure_logging(args.log_level, tag="[supervisor] ")
    raise_fd_limit()  # the children inherit it
    argv = list(args.argv)
    return supervise(lambda slot, listen_fd, ready_fd: _child_argv(argv, slot, listen_fd, ready_fd),
                     args.host, args.port, args.processes)


def _fail(message: str) -> int:
    print(f"corral: error: {message}", file=sys.stderr)
    return 2
