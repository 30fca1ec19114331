"""``corral gateway --processes N``: N gateway processes serving one port, and the
supervisor that keeps them.

The supervisor (this process) binds one listening socket per slot, all on the same
address with ``SO_REUSEPORT``, so the kernel spreads new connections over the slots (one
shared socket would let whichever process wakes first take a burst of connections). It
keeps every socket open itself and starts each child (``corral gateway`` again, with the
same arguments) on its slot's socket: a child that dies takes nothing with it but its own
connections, the connections the kernel queues on its slot meanwhile wait there for its
successor. Each child is a whole gateway: it follows the registry or controller itself
and has its own router view, request records writer and metrics, merged at scrape time
(``corral/observe/metrics_shared.py``, in a folder the supervisor makes and removes).

- A child that exits by itself is started again at once, then after 0.5 s doubling to
  10 s while its successors keep dying within 10 s; one that exits 2 (a configuration
  error) before it ever served stops the whole gateway with that code.
- SIGTERM or SIGINT: forwarded once to every child, which drains (in-flight requests
  finish) and exits; then the supervisor exits 0. The children run in their own process
  group, so a terminal's Ctrl-C reaches them only through the supervisor, once.
- SIGHUP: a rolling restart, one slot at a time: the new child starts on the slot's
  socket, and once it serves the old one drains. Both accept from the socket meanwhile,
  so no connection waits and none is refused.
- A child whose supervisor is gone (killed) drains and exits by itself (``watch_parent``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from corral.cli.serve import BACKLOG
from corral.observe.metrics_shared import ProcessSlot, fold_exited

log = logging.getLogger("corral.processes")

FATAL_EXIT = 2  # a child's configuration error: starting it again would fail again
QUICK_DEATH_S = 10.0  # a child that dies sooner is restarted after a growing delay
MAX_DELAY_S = 10.0
READY_TIMEOUT_S = 60.0  # a rolling restart's new child must serve within this
STOP_TIMEOUT_S = 30.0  # a child's drain (10 s for its streams) and shutdown, then SIGKILL
Command = Callable[[ProcessSlot, int, int], list[str]]  # (slot, listen fd, ready fd) -> argv


def listening_sockets(host: str, port: int, count: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` (``SO_REUSEPORT``; without it, one
    socket shared by every slot). Port 0 picks one free port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    sockets: list[socket.socket] = []
    for _ in range(count if reuse_port else 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]  # the port 0 chose, for the others
        sock.listen(backlog)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets * count if not reuse_port else sockets


@dataclass(eq=False)
class Child:
    slot: ProcessSlot
    popen: subprocess.Popen[bytes]
    ready_read: int | None  # the child writes one byte here once it serves; None once closed
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False

    def exited(self) -> int | None:
        return self.popen.poll()


class Supervisor:
    """Runs ``count`` children of ``command`` on ``sockets`` until SIGTERM/SIGINT; the exit code."""

    def __init__(self, command: Command, sockets: list[socket.socket], folder: Path) -> None:
        self._command = command
        self._sockets = sockets
        self._folder = folder
        self._generation = 0
        self._slots: list[Child | None] = [None] * len(sockets)
        self._retiring: list[Child] = []  # drained by a rolling restart: not started again
        self._due: dict[int, float] = {}  # slot -> when to start it again
        self._delay: dict[int, float] = {}
        self._selector = selectors.DefaultSelector()
        self._wakeup_read, self._wakeup_write = os.pipe()
        self._stop = False
        self._roll = False
        self._exit_code = 0

    def run(self) -> int:
        os.set_blocking(self._wakeup_write, False)
        os.set_blocking(self._wakeup_read, False)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wakeup_write)  # a signal ends the selector's wait at once
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            for slot in range(len(self._slots)):
                self._slots[slot] = self._spawn(slot)
            while not self._stop:
                self._tick()
                if self._roll and not self._stop:
                    self._roll = False
                    self._rolling_restart()
            self._stop_all()
        finally:
            signal.set_wakeup_fd(-1)
            self._selector.close()
            for fd in (self._wakeup_read, self._wakeup_write):
                os.close(fd)
        return self._exit_code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._roll = True
        elif self._stop:  # a second stop: the children stop waiting for their streams
            for child in self._children():
                child.popen.send_signal(signal.SIGTERM)
        else:
            self._stop = True

    def _children(self) -> list[Child]:
        return [c for c in self._slots if c is not None] + self._retiring

    def _spawn(self, slot: int) -> Child:
        self._generation += 1
        identity = ProcessSlot(self._folder, slot, self._generation)
        ready_read, ready_write = os.pipe()
        listen_fd = self._sockets[slot].fileno()
        popen = subprocess.Popen(
            self._command(identity, listen_fd, ready_write), pass_fds=(listen_fd, ready_write), process_group=0,
        )
        os.close(ready_write)  # the child holds it: end of file means the child is gone
        os.set_blocking(ready_read, False)
        child = Child(identity, popen, ready_read)
        self._selector.register(ready_read, selectors.EVENT_READ, child)
        log.info("process %d (pid %d) starting", slot, popen.pid)
        return child

    def _tick(self, timeout: float = 0.5) -> None:
        """Wait for a signal, a child's readiness or ``timeout``; then reap and restart."""
        for key, _ in self._selector.select(timeout):
            child = key.data
            try:
                data = os.read(key.fd, 64)
            except BlockingIOError:
                continue
            if child is None:
                continue  # the signal wake-up pipe: its byte has done its job
            if data and not child.ready:
                child.ready = True
                log.info("process %d (pid %d) serving", child.slot.slot, child.popen.pid)
            if not data:
                self._close_ready(child)
        self._reap()
        now = time.monotonic()
        for slot, when in list(self._due.items()):
            if when <= now and not self._stop:
                del self._due[slot]
                self._slots[slot] = self._spawn(slot)

    def _reap(self) -> None:
        for child in list(self._retiring):
            if child.exited() is not None:
                self._retiring.remove(child)
                self._forget(child)
        for slot, child in enumerate(self._slots):
            if child is None or (code := child.exited()) is None:
                continue
            self._slots[slot] = None
            self._forget(child)
            if self._stop:
                continue
            lived = time.monotonic() - child.started_at
            if code == FATAL_EXIT and not child.ready:
                log.error("process %d exited with %d before serving: stopping the gateway", slot, code)
                self._stop, self._exit_code = True, FATAL_EXIT
                continue
            delay = 0.0 if lived >= QUICK_DEATH_S else min(MAX_DELAY_S, max(0.5, 2 * self._delay.get(slot, 0.25)))
            self._delay[slot] = delay
            self._due[slot] = time.monotonic() + delay
            log.warning("process %d (pid %d) %s after %.1f s; starting it again in %.1f s", slot, child.popen.pid,
                        _how(code), lived, delay)

    def _close_ready(self, child: Child) -> None:
        if child.ready_read is not None:  # (its number may be another child's pipe once closed)
            self._selector.unregister(child.ready_read)
            os.close(child.ready_read)
            child.ready_read = None

    def _forget(self, child: Child) -> None:
        self._close_ready(child)
        try:
            fold_exited(child.slot)  # its counters live on in the slot's series
        except OSError as exc:
            log.warning("metrics of process %d not kept: %s", child.slot.slot, exc)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and not self._stop and time.monotonic() < deadline:
            self._tick(0.1)
        return done()

    def _rolling_restart(self) -> None:
        log.info("rolling restart of %d processes", len(self._slots))
        for slot in range(len(self._slots)):
            old = self._slots[slot]
            if old is None or self._stop:
                continue  # one being started again is new already
            new = self._spawn(slot)
            self._slots[slot] = new
            self._retiring.append(old)  # from now on its exit is expected
            self._wait(lambda: new.ready or new.exited() is not None, READY_TIMEOUT_S)
            if self._stop:
                return
            if not new.ready or new.exited() is not None:
                log.error("rolling restart stopped: the new process %d did not serve; the old one stays", slot)
                self._due.pop(slot, None)
                if new.exited() is None:
                    new.popen.send_signal(signal.SIGTERM)
                    self._retiring.append(new)
                if old in self._retiring:  # still alive
                    self._retiring.remove(old)
                    self._slots[slot] = old
                else:
                    self._slots[slot], self._due[slot] = None, time.monotonic()
                return
            old.popen.send_signal(signal.SIGTERM)  # it drains while the new one takes the connections
            self._wait(lambda: old.exited() is not None, STOP_TIMEOUT_S)
        log.info("rolling restart done")

    def _stop_all(self) -> None:
        children = [c for c in self._children() if c.exited() is None]
        log.info("stopping %d processes", len(children))
        for child in children:
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(c.exited() is None for c in children) and time.monotonic() < deadline:
            self._tick(0.1)  # reaps (nothing is started again) and reads signals: a second one forces
        for child in children:
            if child.exited() is None:
                log.warning("process %d (pid %d) did not stop in %.0f s: killed", child.slot.slot, child.popen.pid,
                            STOP_TIMEOUT_S)
                child.popen.kill()
                child.popen.wait()
        self._reap()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def supervise(command: Command, host: str, port: int, count: int) -> int:
    """Bind, run ``count`` children until stopped, clean up; the exit code."""
    try:
        sockets = listening_sockets(host, port, count)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return 1
    with tempfile.TemporaryDirectory(prefix="corral-gateway-metrics-") as folder:
        log.info("gateway: %d processes on http://%s:%d", count, host, sockets[0].getsockname()[1])
        try:
            return Supervisor(command, sockets, Path(folder)).run()
        finally:
            for sock in set(sockets):
                sock.close()


def tell_ready(ready_fd: int, synced: asyncio.Event, timeout: float = 10.0) -> asyncio.Task[None]:
    """Once the router has the registry's first view (or ``timeout`` went by: requests
    wait for it anyway), write the supervisor its byte. Call on the event loop; keep the task."""

    async def wait_then_tell() -> None:
        try:
            await asyncio.wait_for(synced.wait(), timeout)
        except TimeoutError:
            pass
        try:
            os.write(ready_fd, b"1")
        except OSError:
            pass  # the supervisor is gone; watch_parent ends this process

    return asyncio.get_running_loop().create_task(wait_then_tell(), name="tell-ready")


def watch_parent(on_orphan: Callable[[], None], every_s: float = 1.0) -> asyncio.Task[None]:
    """Call ``on_orphan`` once when the supervisor dies (this process is re-parented); keep the task."""
    parent = os.getppid()

    async def watch() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(every_s)
        log.warning("the supervisor (pid %d) is gone: stopping", parent)
        on_orphan()

    return asyncio.get_running_loop().create_task(watch(), name="watch-supervisor")
