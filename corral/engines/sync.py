"""The one place where synchronous engine libraries meet asyncio.

Engines built on sync libraries (torch, sentence-transformers, llama.cpp) never call
``run_in_executor`` or ``call_soon_threadsafe`` themselves; they use:

- ``Blocking``: runs a blocking callable on the engine's own small thread pool, so a
  slow model load or encode never blocks the event loop nor starves other engines;
- ``Channel``: a stream of items pushed from a worker thread and awaited on the loop;
- ``WorkerThread``: a dedicated thread running a step loop (a batcher), woken when
  work arrives, restarted in place after a crash when its engine says so, and stopped
  cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Blocking:
    def __init__(self, name: str, threads: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"corral-{name}")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Channel(Generic[T]):
    """Single-consumer stream from a thread to a coroutine."""

    __slots__ = ("_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def put(self, item: T) -> None:
        """Thread-safe. Items sent after the loop closed are dropped: nobody can read them."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            pass

    async def get(self) -> T:
        return await self._queue.get()


class WorkerThread:
    """Runs ``step()`` in a loop on its own thread. ``step`` returns True while it has work;
    when it returns False the thread sleeps until ``wake()``.

    When ``step`` raises, ``on_crash(exc)`` runs on the thread: it fails the work that was
    in progress (or requests would hang) and returns how many seconds to wait before the
    loop runs again (a restart in place, announced by ``on_restart``, on the thread too),
    or None to end the thread. ``stop()`` interrupts that wait.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], bool],
        on_crash: Callable[[BaseException], float | None],
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._step = step
        self._on_crash = on_crash
        self._on_restart = on_restart
        self._wake = threading.Event()
        self._stopped = threading.Event()  # separate from _wake: new work must not cut a backoff short
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"corral-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._loop()
                return
            except BaseException as exc:  # the engine must learn its loop died, or requests would hang
                delay = self._crashed(exc)
            if delay is None or self._stopped.wait(delay) or not self._restarted():
                return

    def _loop(self) -> None:
        while not self._stopping:
            if not self._step():
                self._wake.wait(timeout=1.0)
                self._wake.clear()

    def _crashed(self, exc: BaseException) -> float | None:
        try:
            return self._on_crash(exc)
        except BaseException:  # a broken handler must not hide the crash: the loop stays down
            log.exception("the crash handler of %s failed; the loop stays down", self._thread.name)
            return None

    def _restarted(self) -> bool:
        try:
            if self._on_restart is not None:
                self._on_restart()
        except BaseException:
            log.exception("the restart handler of %s failed; the loop stays down", self._thread.name)
            return False
        return True


# Lazy-loading libraries (transformers, sentence-transformers) are not safe to import
# from two threads at once: two engines loading in parallel could see half-initialised
# modules. Engines take this lock around their heavy imports; loading itself stays parallel.
_IMPORT_LOCK = threading.Lock()


def heavy_imports() -> threading.Lock:
    """``with heavy_imports(): from transformers import ...``"""
    return _IMPORT_LOCK
