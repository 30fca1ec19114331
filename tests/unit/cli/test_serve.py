"""Process set-up of every server: the open-files limit, the collector's tuning, the
listening sockets of ``--processes``."""

from __future__ import annotations

import gc
import resource
import socket

import pytest

from corral.cli import serve
from corral.cli.cluster import _parse_slot as parse_slot
from corral.cli.processes import listening_sockets


@pytest.fixture
def nofile():  # type: ignore[no-untyped-def]
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_limit_is_raised_to_the_hard_one_when_too_low(nofile: tuple[int, int]) -> None:
    soft, hard = nofile
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("needs a finite hard limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert serve.raise_fd_limit(wanted=hard) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_a_soft_limit_already_enough_is_left_alone(nofile: tuple[int, int]) -> None:
    soft, hard = nofile
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("needs a finite hard limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    assert serve.raise_fd_limit(wanted=300) == 512
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 512


def test_tune_gc_freezes_and_spaces_full_collections() -> None:
    before = gc.get_threshold()
    try:
        serve.tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0], before[1], serve.FULL_COLLECTION_AFTER)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_one_listening_socket_per_process_on_one_port() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and len({s.fileno() for s in sockets}) == 3
        assert all(s.get_inheritable() for s in sockets)
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=2):
            pass  # the kernel queues it on one of them
    finally:
        for s in sockets:
            s.close()


def test_a_slot_reads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    slot = parse_slot(f"1:7:{tmp_path}")
    assert (slot.slot, slot.generation, slot.folder) == (1, 7, tmp_path)
    assert slot.snapshot == tmp_path / "1-7.json"
