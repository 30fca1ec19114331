"""Running an ASGI app with uvicorn (uvloop + httptools), shared by every server command.

Corral handles SIGINT/SIGTERM itself: the first asks for a graceful shutdown (in-flight
streams finish, bounded by the graceful timeout), a second forces it. The process then
exits 0, which is what service managers expect from a requested stop.

With ``TlsSettings`` that serve (``--tls-cert``/``--tls-key``, checked by
``corral.core.tls.check_tls`` first), uvicorn speaks HTTPS only on the port: a plain
HTTP request there fails its handshake rather than being answered.

A server is given its listening socket already bound when a supervisor holds it
(``corral gateway --processes N``, ``corral/cli/processes.py``); ``on_started`` runs once
it accepts connections. ``raise_fd_limit`` lifts the open-files soft limit of a gateway
process, which holds two descriptors per open stream (the client's, the upstream's).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from corral.core.tls import TlsSettings


# connections the kernel holds for the server before it accepts them (capped by
# net.core.somaxconn, 4,096 on current kernels): a burst of new streams beyond it is
# dropped and retried by clients a second later
BACKLOG = 8192


class Server(uvicorn.Server):
    """uvicorn's server with Corral's signal handling and an optional ``before_exit``
    coroutine (a worker's drain) run on the first signal, before connections close."""

    before_exit: Callable[[], Awaitable[None]] | None = None
    on_started: Callable[[], None] | None = None
    _draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        tune_gc()
        if self.started and self.on_started is not None:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        if self.should_exit or self._draining is not None:
            self.force_exit = self.should_exit = True
            return
        if self.before_exit is None:
            self.should_exit = True
            return
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit(self.before_exit))

    async def _drain_then_exit(self, before_exit: Callable[[], Awaitable[None]]) -> None:
        try:
            await before_exit()
        finally:
            self.should_exit = True


def make_server(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    graceful_timeout: float = 10,
    before_exit: Callable[[], Awaitable[None]] | None = None,
    tls: TlsSettings | None = None,
) -> Server:
    tls = tls if tls is not None and tls.serving else TlsSettings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        ssl_certfile=tls.cert,  # None: plain HTTP
        ssl_keyfile=tls.key,
        backlog=BACKLOG,
    )
    server = Server(config)
    server.before_exit = before_exit
    return server


class Runner:
    """Runs one server process to its end and turns failures into an exit code. Pass
    ``fatal`` to the service: calling it logs why and stops the process with exit 1."""

    def __init__(self) -> None:
        self.exit_code = 0
        self._server: Server | None = None

    def fatal(self, message: str) -> None:
        logging.getLogger("corral").error("cannot serve: %s", message)
        self.exit_code = 1
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """A graceful stop, as on the first SIGTERM."""
        if self._server is not None:
            self._server.should_exit = True

    def run(
        self,
        app: Any,
        host: str,
        port: int,
        log_level: str,
        before_exit: Callable[[], Awaitable[None]] | None = None,
        tls: TlsSettings | None = None,
        sock: socket.socket | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> int:
        """``sock``: serve on this bound, listening socket instead of binding ``host:port``."""
        self._server = make_server(app, host, port, log_level, before_exit=before_exit, tls=tls)
        self._server.on_started = on_started
        self._server.run(sockets=[sock] if sock is not None else None)
        if not self._server.started and self.exit_code == 0:
            self.exit_code = 1  # uvicorn already said why (e.g. the port is taken)
        return self.exit_code


# young collections between two full ones (Python's default: 10)
FULL_COLLECTION_AFTER = 100


def tune_gc() -> None:
    """Once the server has started. A full collection of the cyclic garbage collector
    walks every live object while the event loop waits: on a gateway holding 1,000 open
    streams (about 250 tracked objects each), 100-250 ms on 2 cores, every second or two
    while streams open, which was most of its p99 time to first token (210 ms; 37 ms
    with this). What is alive at start (modules, the app, its engines) lives as long as
    the process: ``gc.freeze`` takes it out of every collection. And full collections
    come ten times less often. Young collections still run as usual, and most of what a
    request allocates is freed by reference counting; cyclic garbage that reached the
    old generation waits longer for its collection."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)


# descriptors a gateway process wants: two per open stream (client, upstream) for about 8,000
# streams, and some for its files, registry and pools
WANTED_FDS = 16_384


def raise_fd_limit(wanted: int = WANTED_FDS) -> int:
    """Lift the soft limit on open files to the hard limit when it is below ``wanted``
    (a common default soft limit, 1,024, is about 500 open streams); logged. The limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as exc:
                logging.getLogger("corral").warning("cannot raise the open-files limit from %d: %s", soft, exc)
                return soft
            logging.getLogger("corral").info("open-files limit raised from %d to %d (the hard limit)", soft, target)
            soft = target
        if soft < wanted:
            logging.getLogger("corral").warning(
                "open-files limit %d (hard limit %s): about %d streams at once; raise the hard limit (ulimit -Hn, "
                "LimitNOFILE=) for more", soft, hard, max(soft - 1024, 0) // 2)
    return soft


def configure_logging(level: str, tag: str = "") -> None:
    """``tag``: a prefix naming the process, when several log to one stream."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # one line per HTTP call to the registry or a worker would drown the useful ones
    logging.getLogger("httpx").setLevel(logging.WARNING)
