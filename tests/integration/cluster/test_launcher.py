"""``corral controller --launcher local``: the controller starts `corral worker`
processes when placement needs room, replaces one that dies, stops one left empty, and
stops them all when it exits. Real processes on loopback, a real engine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from openai import OpenAI

from tests.integration.cluster.harness import Cluster, admin, wait_for_instances, wait_model


def pids_of(worker_id: str) -> list[int]:
    """Processes whose command line names this worker id (the launched worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-id" in argv and worker_id.encode() in argv:
            found.append(int(entry.name))
    return found


def until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_local_launcher_starts_replaces_and_stops_workers(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller(extra=["--launcher", "local", "--launcher-idle", "3"])
        gateway = cluster.gateway(["--controller", controller.url])
        api = admin(controller.url)
        assert api.get("/workers").json()["workers"] == []  # nobody started a worker
        spec = {"name": "chat", "engine": "transformers", "source": "demo:tiny-llama", "replicas": 2}
        assert api.post("/models", json=spec).status_code == 201
        model = wait_model(api, "chat", lambda m: m["ready"] == 2, 180)
        workers = api.get("/workers").json()["workers"]
        assert len(workers) == 2 and all(w["id"].startswith("launched-") and w["launched"] for w in workers), workers
        assert {i["worker_id"] for i in model["instances"]} == {w["id"] for w in workers}  # one per worker
        wait_for_instances(gateway, "chat", 2)
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=2, timeout=60)
        assert client.completions.create(model="chat", prompt="hi", max_tokens=2).choices

        # a launched worker killed: the launcher starts it again, the manager re-places its instance
        victim = workers[0]["id"]
        pids = pids_of(victim)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        until(lambda: pids_of(victim) and pids_of(victim) != pids, 60, "the killed worker to be started again")
        wait_model(api, "chat", lambda m: m["ready"] == 2, 180)

        # scaled down: the worker left empty is stopped after --launcher-idle
        assert api.post("/models/chat/scale", json={"replicas": 1}).status_code == 200
        until(lambda: len([w for w in api.get("/workers").json()["workers"] if w["alive"]]) == 1 and
              len([p for w in workers for p in pids_of(w["id"])]) == 1, 90, "the empty worker to stop")
        assert client.completions.create(model="chat", prompt="still", max_tokens=2).choices

        # the controller exits: its launched workers go with it
        left = [p for w in workers for p in pids_of(w["id"])]
        controller.stop()
        until(lambda: not any(Path(f"/proc/{p}").exists() and b"zombie" not in _status(p) for p in left), 60,
              "launched workers to stop with the controller")
    finally:
        cluster.stop()


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"
