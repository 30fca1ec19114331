"""Model specs and server settings: the desired state a user declares.

Plain dataclasses: they cross module boundaries inside the process; the TOML loader
(``corral.config``) validates and builds them, and engines read only their own
``options`` mapping through their options schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


ROUTING_POLICIES = ("power_of_two", "round_robin", "weighted", "least_requests", "latency", "session", "prefix")


class ModelKind(str, Enum):
    LLM = "llm"
    EMBEDDING = "embedding"
    RERANK = "rerank"


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


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    records: str | None = None  # request records store: sqlite:///FILE or postgresql://...; default: the cache
    capture_text: bool = False  # keep prompt and completion text in request records
    redact: tuple[str, ...] = ()  # regular expressions removed from captured text
    retention_days: float = 30.0  # request records older than this are deleted


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    models: tuple[ModelSpec, ...] = ()
