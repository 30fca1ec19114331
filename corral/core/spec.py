"""Model specs and server settings: the desired state a user declares.

Plain dataclasses: they cross module boundaries inside the process; the TOML loader
(``corral.config``) validates and builds them, and engines read only their own
``options`` mapping through their options schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from corral.core.keys import Limits
from corral.core.tls import TlsSettings


ROUTING_POLICIES = ("power_of_two", "round_robin", "weighted", "least_requests", "latency", "session", "prefix")


class ModelKind(str, Enum):
    LLM = "llm"
    EMBEDDING = "embedding"
    RERANK = "rerank"


@dataclass(frozen=True)
class SamplingDefaults:
    """What a model samples with when a request leaves a parameter out (``[models.sampling]``),
    as vLLM takes a model's ``generation_config``: a small instruct model answers sensibly
    at its recommended temperature, not at the API's default of 1."""

    temperature: float | None = None
    top_p: float | None = None

    def pairs(self) -> tuple[tuple[str, float], ...]:
        """The defaults that are set, as carried by an instance record."""
        return tuple((k, v) for k, v in (("temperature", self.temperature), ("top_p", self.top_p)) if v is not None)


@dataclass(frozen=True)
class AutoscalePolicy:
    """How the autoscaler moves a model's ``replicas`` (see docs/autoscaling.md)."""

    min_replicas: int = 0  # 0 allows scale-to-zero
    max_replicas: int = 4
    target_in_flight: float = 2.0  # requests running + queued per ready instance
    upscale_delay_s: float = 5.0  # demand above target this long before adding
    downscale_delay_s: float = 60.0  # demand below target this long before removing one
    downscale_to_zero_delay_s: float = 300.0  # idle this long before going from 1 to 0
    target_ttft_p90_s: float | None = None  # add capacity when TTFT p90 over the look-back exceeds it
    cold_start_timeout_s: float = 120.0  # how long a request waits for a model at zero to wake


@dataclass(frozen=True)
class Resources:
    """What one instance of a model needs from the node it runs on (``[models.resources]``).

    Read by launchers that place workers by resources (``--launcher ray``: each instance
    gets a worker that reserves exactly this); ignored where workers are started by hand
    or on the controller's machine. ``custom`` holds named resources of the cluster
    (e.g. ``{"nodeb": 1}``), sorted by name so equal requests compare equal.
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory_gb: float | None = None
    custom: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: unset keys left out, ``custom`` as an object."""
        out: dict[str, Any] = {k: v for k, v in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus),
                                                  ("memory_gb", self.memory_gb)) if v is not None}
        if self.custom:
            out["custom"] = dict(self.custom)
        return out

    def describe(self) -> str:
        """``num_cpus=1.5, custom.nodeb=1``: for logs and the model's ``operation``."""
        parts = [f"{k}={v:g}" for k, v in self.as_dict().items() if k != "custom"]
        return ", ".join(parts + [f"custom.{k}={v:g}" for k, v in self.custom]) or "nothing"


@dataclass(frozen=True)
class ModelSpec:
    """A named deployable: what to serve, with which engine, from where, how many copies."""

    name: str
    kind: ModelKind
    engine: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    routing: str = "power_of_two"  # balancing policy across this model's instances
    weight: float = 1.0  # this worker's instances' share under the weighted policy
    max_concurrency: int = 0  # requests in flight per instance before gateways queue; 0: no limit
    offline: bool = False  # instances stay loaded but take no traffic
    autoscale: AutoscalePolicy | None = None  # with a policy, replicas is what the autoscaler last chose
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)  # for parameters a request leaves out
    resources: Resources | None = None  # what each instance reserves on its node (launchers that place by resources)


PROTOCOLS = ("openai", "anthropic", "ollama")  # every front-end in corral.gateway.frontends


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    # the service protocols the gateway serves on its port (the OpenAI one includes the
    # Responses API); switch one off by leaving it out
    protocols: tuple[str, ...] = PROTOCOLS
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    records: str | None = None  # request records store: sqlite:///FILE or postgresql://...; default: the cache
    capture_text: bool = False  # keep prompt and completion text in request records
    redact: tuple[str, ...] = ()  # regular expressions removed from captured text
    retention_days: float = 30.0  # request records older than this are deleted
    records_max_mb: float = 1024.0  # size bound of a SQLite records store (oldest deleted first); 0: none
    records_max_rows: int = 0  # rows bound of the records store (any database); 0: none
    records_sample: float = 1.0  # fraction of successful requests recorded (errors always are)
    key_limits: Limits = field(default_factory=Limits)  # every virtual key's, where its own sets none
    tls: TlsSettings = field(default_factory=TlsSettings)  # [server] tls_cert, tls_key, tls_ca (corral.core.tls)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    models: tuple[ModelSpec, ...] = ()
