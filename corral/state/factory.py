"""Choosing a desired-state store by the registry URL: the state lives next to the registry.

| URL | store |
|---|---|
| ``memory://`` (or nothing) | in this process: lost when it stops |
| ``http(s)://controller:8001`` | in memory too: a controller URL has no store of its own here |
| ``sqlite:///path/file.db``, ``postgresql://...`` | ``corral_models`` / ``corral_audit`` tables |
| ``etcd://host:2379[,host2:2379]`` | keys under ``/corral/models/`` and ``/corral/audit/`` |
"""

from __future__ import annotations

from corral.core.errors import ConfigError
from corral.core.state import StateStore
from corral.fmt.urls import redact


def state_from_url(url: str | None) -> StateStore:
    """Build the store for ``url`` without any I/O; the process opens it (``await
    store.open()``) on its own event loop."""
    scheme = (url or "memory://").split(":", 1)[0].lower()
    if scheme in ("memory", "http", "https"):
        from corral.state.memory import MemoryStateStore

        return MemoryStateStore()
    assert url is not None
    if scheme in ("sqlite", "postgresql", "postgres"):
        try:
            from corral.state.sql import SqlStateStore
        except ImportError:
            raise ConfigError("SQL state stores need SQLAlchemy: pip install 'corral[sql]'", param="registry") from None
        return SqlStateStore(url)
    if scheme == "etcd":
        from corral.state.etcd import EtcdStateStore

        try:
            return EtcdStateStore(url)
        except ValueError as e:
            raise ConfigError(str(e), param="registry") from None
    raise ConfigError(
        f"unknown state store URL {redact(url)!r}: use memory://, sqlite:///FILE, postgresql://... or etcd://HOST:PORT",
        param="registry",
    )
