"""Running an ASGI app with uvicorn (uvloop + httptools), shared by every server command.

Corral handles SIGINT/SIGTERM itself: the first asks for a graceful shutdown (in-flight
streams finish, bounded by the graceful timeout), a second forces it. The process then
exits 0, which is what service managers expect from a requested stop.

With ``TlsSettings`` that serve (``--tls-cert``/``--tls-key``, checked by
``corral.core.tls.check_tls`` first), uvicorn speaks HTTPS only on the port: a plain
HTTP request there fails its handshake rather than being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from corral.core.tls import TlsSettings


class Server(uvicorn.Server):
    """uvicorn's server with Corral's signal handling and an optional ``before_exit``
    coroutine (a worker's drain) run on the first signal, before connections close."""

    before_exit: Callable[[], Awaitable[None]] | None = None
    _draining: asyncio.Task[None] | None = None

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

    def run(
        self,
        app: Any,
        host: str,
        port: int,
        log_level: str,
        before_exit: Callable[[], Awaitable[None]] | None = None,
        tls: TlsSettings | None = None,
    ) -> int:
        self._server = make_server(app, host, port, log_level, before_exit=before_exit, tls=tls)
        self._server.run()
        if not self._server.started and self.exit_code == 0:
            self.exit_code = 1  # uvicorn already said why (e.g. the port is taken)
        return self.exit_code


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # one line per HTTP call to the registry or a worker would drown the useful ones
    logging.getLogger("httpx").setLevel(logging.WARNING)
