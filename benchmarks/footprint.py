"""Section 3: footprint and start-up.

- idle memory of ``corral controller``, ``corral worker`` (no model) and ``corral gateway``
  (API key and request records on), and of ``corral start`` serving one
  openai-compatible model (no torch), each read a few seconds after it is ready;
- ``corral --help`` wall time (the console script, as a user runs it);
- ``corral start`` cold start: from launching the process to ``/health/ready`` = 200,
  with one openai-compatible model (so no engine imports torch).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.procs import Processes, corral_argv, free_port, wait_ready
from benchmarks.report import Check, Section, Table

SETTLE_S = 2.0  # after ready: background start-up work (first heartbeats, records store) is done


def _help_times(procs: Processes, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([*corral_argv(), "--help"], env=procs.env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return times


def run(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    del duration_s  # a footprint does not depend on the load duration
    t0 = time.perf_counter()
    say("footprint: corral --help, corral start cold starts, idle cluster processes...")
    help_times = _help_times(procs, max(5, repeats))
    say(f"  corral --help: {', '.join(f'{t * 1000:.0f}' for t in help_times)} ms")

    upstream = procs.fake_upstream()
    config = work / "footprint.toml"
    config.write_text('[server]\napi_keys = ["k"]\nlog_level = "warning"\n'
                      f'records = "sqlite:///{work / "records-footprint.db"}"\n\n'
                      '[[models]]\nname = "fake"\nkind = "llm"\nengine = "openai-compatible"\n'
                      f'source = "{upstream.url}/v1"\n')
    starts, start_rss = [], []
    for i in range(max(3, repeats)):
        port = free_port()
        proc = procs.corral("corral-start-cold", ["start", "--config", str(config), "--port", str(port)], port)
        starts.append(wait_ready(proc, "/health/ready", 60, poll_s=0.005))
        if i == 0:
            time.sleep(SETTLE_S)
            start_rss.append(proc.rss_mib())
        proc.stop()
        procs.started.remove(proc)
    say(f"  corral start to ready: {', '.join(f'{t:.2f}' for t in starts)} s")

    token = "footprint-token"
    cport, wport, gport = free_port(), free_port(), free_port()
    controller = procs.corral("controller-idle", ["controller", "--port", str(cport), "--cluster-token", token], cport)
    wait_ready(controller, "/health", 60)
    worker = procs.corral("worker-idle", ["worker", "--controller", controller.url, "--port", str(wport),
                                          "--cluster-token", token], wport)
    gateway = procs.corral("gateway-idle", ["gateway", "--controller", controller.url, "--port", str(gport),
                                            "--cluster-token", token, "--api-key", "k",
                                            "--records", f"sqlite:///{work / 'records-idle.db'}"], gport)
    wait_ready(worker, "/health", 60)
    wait_ready(gateway, "/health", 60)
    time.sleep(SETTLE_S)
    rss = {"gateway": gateway.rss_mib(), "controller": controller.rss_mib(), "worker": worker.rss_mib(),
           "corral start (openai-compatible model)": start_rss[0]}
    uss = {"gateway": gateway.uss_mib(), "controller": controller.uss_mib(), "worker": worker.uss_mib()}

    help_med, start_med = statistics.median(help_times), statistics.median(starts)
    tables = [
        Table("idle memory (MiB; RSS includes shared library pages, USS only this process's)",
              ["process", "RSS MiB", "USS MiB"], [[name, value, uss.get(name)] for name, value in rss.items()]),
        Table("start-up (median)", ["what", "seconds", "runs"],
              [["corral --help", help_med, len(help_times)],
               ["corral start, launch to /health/ready (one openai-compatible model)", start_med, len(starts)]]),
    ]
    checks = [
        Check("idle gateway RSS", rss["gateway"], "<=", 80, "MiB"),
        Check("corral start cold start", start_med, "<=", 1.0, "s"),
        Check("corral --help", help_med, "<=", 0.3, "s", "wanted < 0.3 s"),
    ]
    raw = {"help_s": help_times, "start_s": starts, "rss_mib": rss, "uss_mib": uss}
    return Section("3. footprint", tables, checks, [], raw, time.perf_counter() - t0)
