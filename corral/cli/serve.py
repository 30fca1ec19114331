"""Running an ASGI app with uvicorn (uvloop + httptools), shared by every server command.

Corral handles SIGINT/SIGTERM itself: the first asks for a graceful shutdown (in-flight
streams finish, bounded by the graceful timeout), a second forces it. The process then
exits 0, which is what service managers expect from a requested stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn


class Server(uvicorn.Server):
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
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def make_server(app: Any, host: str, port: int, log_level: str, graceful_timeout: float = 10) -> Server:
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
    )
    return Server(config)
