"""Load generation and measurement for OpenAI-compatible endpoints (``corral bench``).

- ``corral.bench.http``: a minimal HTTP/1.1 keep-alive client on asyncio protocols and
  httptools, cheap enough that one core drives well over 10k requests per second;
- ``corral.bench.loadgen``: closed-loop (concurrency) and open-loop (rate) load with
  per-request timings: latency, time to first token, inter-token gaps;
- ``corral.bench.stats``: percentiles and the summary of a run;
- ``corral.bench.fake_openai``: a fast fake OpenAI server, the upstream of the gateway
  benchmarks and of the tests.

Nothing is imported here, so that importing one module does not pull in the others.
"""
