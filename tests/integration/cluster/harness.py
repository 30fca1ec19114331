"""Real cluster processes on loopback: controllers, workers and gateways as subprocesses.

A ``Cluster`` made with ``tls`` (``tests/services/tls.py``) gives every process the
certificate, key and CA: all of them serve HTTPS and verify each other."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.integration.servers import Server, free_port, launch, start_corral, wait_until
from tests.services.tls import TlsFiles

CLUSTER_TOKEN = "cluster-secret-9f2c"
ADMIN_TOKEN = "admin-secret-41aa"


def worker_config(folder: Path, name: str, models: list[dict[str, Any]]) -> Path:
    """A worker TOML hosting the demo LLM under the given names and routing policies."""
    lines = []
    for m in models:
        lines += [
            "[[models]]",
            f'name = "{m["name"]}"',
            f'kind = "{m.get("kind", "llm")}"',
            f'engine = "{m.get("engine", "transformers")}"',
            f'source = "{m.get("source", "demo:tiny-llama")}"',
            f'routing = "{m.get("routing", "power_of_two")}"',
            f'max_concurrency = {m.get("max_concurrency", 0)}',
            "",
        ]
        if "sampling" in m:
            lines += ["[models.sampling]", *(f"{k} = {v}" for k, v in m["sampling"].items()), ""]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


class Cluster:
    def __init__(self, home: Path, logs: Path, tls: TlsFiles | None = None) -> None:
        self.home = home
        self.logs = logs
        self.processes: list[Server] = []
        self._tls_flags = tls.server_flags() if tls is not None else []
        self._tls = tls.context() if tls is not None else None

    def _launch(self, args: list[str], port: int, env: dict[str, str] | None = None) -> Server:
        server = launch([*args, *self._tls_flags], self.home, self.logs, port, env, tls=self._tls)
        self.processes.append(server)
        return server

    def controller(
        self, registry: str | None = None, admin_token: str | None = ADMIN_TOKEN, port: int | None = None,
        extra: list[str] | None = None,
    ) -> Server:
        port = port or free_port()
        args = ["controller", "--port", str(port), "--cluster-token", CLUSTER_TOKEN]
        args += ["--registry", registry] if registry else []
        args += ["--admin-token", admin_token] if admin_token else []
        args += extra or []
        server = self._launch(args, port)
        return wait_until(server, lambda: server.get("/health", timeout=2).status_code == 200)

    def worker(
        self,
        join: list[str],
        config: Path | None,
        token: str = CLUSTER_TOKEN,
        port: int | None = None,
        wait: bool = True,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Server:
        """``join`` is ["--controller", URL] or ["--registry", URL]."""
        port = port or free_port()
        args = ["worker", *join, "--port", str(port), "--cluster-token", token]
        args += ["--config", str(config)] if config is not None else []
        args += ["--lease-ttl", "3", *(extra or [])]
        server = self._launch(args, port, env)
        if wait:
            wait_until(server, lambda: _worker_ready(server, token))
        return server

    def gateway(self, join: list[str], extra: list[str] | None = None, env: dict[str, str] | None = None) -> Server:
        port = free_port()
        args = ["gateway", *join, "--port", str(port), "--cluster-token", CLUSTER_TOKEN, *(extra or [])]
        server = self._launch(args, port, env)
        return wait_until(server, lambda: server.get("/health", timeout=2).status_code == 200)

    def stop(self) -> None:
        for server in reversed(self.processes):
            server.stop()


def _worker_ready(server: Server, token: str) -> bool:
    resp = server.get("/internal/v1/status", headers={"authorization": f"Bearer {token}"}, timeout=2)
    instances = resp.json()["instances"] if resp.status_code == 200 else []
    return bool(instances) and all(i["state"] == "ready" for i in instances)


def ready_instances(gateway: Server, model: str) -> list[dict[str, Any]]:
    resp = gateway.get("/health/ready", timeout=5)
    model_info = resp.json().get("models", {}).get(model, {"instances": []})
    return [i for i in model_info["instances"] if i["state"] == "ready"]


def wait_for_instances(gateway: Server, model: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready_instances(gateway, model)
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{model}: wanted {count} ready instances, have {ready_instances(gateway, model)}")


def worker_status(worker: Server) -> dict[str, Any]:
    resp = worker.get("/internal/v1/status", headers={"authorization": f"Bearer {CLUSTER_TOKEN}"}, timeout=5)
    return resp.json()  # type: ignore[no-any-return]


class Load:
    """Steady non-streaming chat traffic from background threads; ``stop`` returns the
    status codes seen."""

    def __init__(
        self, url: str, model: str, threads: int = 2, headers: dict[str, str] | None = None, max_tokens: int = 3
    ) -> None:
        import threading

        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._url, self._model, self._headers, self._max_tokens = url, model, headers or {}, max_tokens
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        import time

        with httpx.Client(timeout=60, headers=self._headers) as client:
            while not self._stop.is_set():
                body = {"model": self._model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": self._max_tokens}
                resp = client.post(f"{self._url}/v1/chat/completions", json=body)
                self.statuses.append(resp.status_code)
                if resp.status_code != 200:
                    self.errors.append(resp.text[:300])
                time.sleep(0.005)

    def stop(self) -> list[int]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.statuses


def admin(url: str, token: str | None = ADMIN_TOKEN, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    headers = {"x-corral-actor": "tester"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=f"{url}/admin/v1", headers=headers, timeout=30, verify=verify)


def wait_model(client: httpx.Client, name: str, check: Any, timeout: float = 120) -> dict[str, Any]:
    """Poll GET /models/NAME until ``check(model)`` holds."""
    import time

    deadline = time.monotonic() + timeout
    model: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = client.get(f"/models/{name}")
        if resp.status_code == 200:
            model = resp.json()["model"]
            if check(model):
                return model
        time.sleep(0.1)
    raise AssertionError(f"{name} never satisfied the check; last: {model}")


@contextmanager
def standalone_and_cluster(
    corral_home: Path, logs: Path, standalone_config: Path, worker_config: Path, models: list[str], timeout: float = 30,
) -> Iterator[tuple[Server, Server, Cluster]]:
    """``corral start`` on one config and a cluster (controller, one worker on the
    other config, a gateway) with ``models`` ready on the gateway: the same requests
    can then be sent to both. Yields (standalone, cluster gateway, cluster); stops everything."""
    standalone = start_corral(["--config", str(standalone_config)], corral_home, logs)
    cluster = Cluster(corral_home, logs)
    try:
        join = ["--controller", cluster.controller().url]
        cluster.worker(join, worker_config)
        gateway = cluster.gateway(join)
        for model in models:
            wait_for_instances(gateway, model, 1, timeout=timeout)
        yield standalone, gateway, cluster
    finally:
        cluster.stop()
        standalone.stop()
