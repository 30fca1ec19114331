"""A traced request through a real cluster has gateway, worker and engine spans under one
trace id, readable with `corral trace show`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_config
from tests.integration.servers import corral_env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_trace_spans_gateway_worker_and_engine(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    records = f"sqlite:///{tmp_path / 'records.db'}"
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        cluster.worker(join, worker_config(tmp_path, "w", [{"name": "chat"}]))
        gateway = cluster.gateway(join, ["--records", records])
        wait_for_instances(gateway, "chat", 1)
        resp = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True},
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
            timeout=60,
        )
        assert resp.status_code == 200 and "[DONE]" in resp.text
        env = corral_env(corral_home)
        show = None
        for _ in range(50):  # records are written asynchronously
            show = subprocess.run(
                [sys.executable, "-m", "corral.cli.main", "trace", "show", TRACE, "--records", records, "--json"],
                env=env, capture_output=True, text=True, timeout=60,
            )
            if show.returncode == 0:
                break
            time.sleep(0.2)
        assert show is not None and show.returncode == 0, show.stderr if show else ""
        spans = {s["name"]: s for s in json.loads(show.stdout)}
        assert set(spans) == {"corral.chat", "corral.worker", "corral.engine.generate"}
        assert {s["trace_id"] for s in spans.values()} == {TRACE}
        assert spans["corral.chat"]["parent_span_id"] == PARENT
        assert spans["corral.worker"]["parent_span_id"] == spans["corral.chat"]["span_id"]
        assert spans["corral.engine.generate"]["parent_span_id"] == spans["corral.worker"]["span_id"]
        engine = spans["corral.engine.generate"]["attributes"]
        assert engine["corral.model"] == "chat" and engine["gen_ai.usage.output_tokens"] <= 4
        assert spans["corral.chat"]["attributes"]["gen_ai.request.max_tokens"] == 4
        tree = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "trace", "show", TRACE, "--records", records],
            env=env, capture_output=True, text=True, timeout=60,
        )
        lines = tree.stdout.splitlines()
        assert lines[0] == f"trace {TRACE}"
        assert [line.split()[0] for line in lines[1:]] == ["corral.chat", "corral.worker", "corral.engine.generate"]
    finally:
        cluster.stop()
