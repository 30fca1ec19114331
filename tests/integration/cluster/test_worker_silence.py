"""A gateway bounds the silence of a worker's stream: a frozen worker (SIGSTOP: its
socket stays open, nothing comes) fails the request instead of hanging it, while a
worker whose engine is merely slow keeps the stream alive with blank keep-alive lines.

The engine is openai-compatible attached to the loopback fake upstream of its unit
tests (``slow`` streams until its client leaves; ``hang-long`` answers after 8 s)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.integration.cluster.harness import Cluster, wait_for_instances
from tests.integration.servers import Server
from tests.unit.engines.openai_compatible.fake_upstream import FakeUpstream

pytestmark = pytest.mark.integration

TIMEOUT_S = 6.0  # the gateway's --worker-timeout; workers ping every 5 s


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def cluster(upstream: FakeUpstream, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    logs = tmp_path_factory.mktemp("worker-silence")
    config = logs / "models.toml"
    config.write_text("".join(
        f'[[models]]\nname = "{name}"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}"\n'
        f'[models.options]\nupstream_model = "{name}"\nverify_on_start = false\n\n'
        for name in ("slow", "hang-long")
    ))
    cluster = Cluster(corral_home, logs)
    try:
        join = ["--controller", cluster.controller().url]
        worker = cluster.worker(join, config)
        gateway = cluster.gateway(join, ["--worker-timeout", str(TIMEOUT_S)])
        wait_for_instances(gateway, "slow", 1)
        wait_for_instances(gateway, "hang-long", 1)
        yield gateway, worker
    finally:
        cluster.stop()


def test_a_slow_engine_is_kept_alive_by_pings(cluster: tuple[Server, Server]) -> None:
    gateway, _ = cluster
    with OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        started = time.monotonic()
        out = client.chat.completions.create(model="hang-long", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started > TIMEOUT_S  # silent longer than the timeout, yet answered
    assert out.choices[0].message.content == "Hello world"


def test_a_frozen_worker_fails_the_stream_within_the_timeout(cluster: tuple[Server, Server]) -> None:
    gateway, worker = cluster
    with OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = iter(stream)
        next(chunks)  # the stream has started
        os.kill(worker.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            with pytest.raises(Exception) as err:  # the SDK raises on the stream's error event
                for _ in chunks:
                    pass
            waited = time.monotonic() - frozen_at
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
    assert "lost the instance" in str(err.value)
    assert TIMEOUT_S - 1 <= waited <= TIMEOUT_S + 5
