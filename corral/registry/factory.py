"""Choosing a registry by URL.

| URL | registry |
|---|---|
| ``memory://`` (or nothing) | in this process (standalone; a controller's default) |
| ``sqlite:///path/file.db`` | SQLite file shared by processes on one machine |
| ``postgresql://user:pass@host:5432/db`` | PostgreSQL, shared by controllers for HA |
| ``etcd://host:2379[,host2:2379]`` | etcd: leases and watches |
| ``http(s)://controller:8001[,https://c2:8001]`` | a controller's registry API (``--controller``) |
"""

from __future__ import annotations

import ssl

from corral.fmt.urls import redact

from corral.core.errors import ConfigError
from corral.core.registry import Registry


def registry_from_url(url: str | None, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> Registry:
    """Build the registry for ``url`` without any I/O; the process opens it (``await
    registry.open()``) on its own event loop. ``ssl_context`` verifies an https://
    controller (the other stores have their own TLS settings, in their URLs)."""
    scheme = (url or "memory://").split(":", 1)[0].lower()
    if scheme == "memory":
        from corral.registry.embedded import EmbeddedRegistry

        return EmbeddedRegistry()
    assert url is not None
    if scheme in ("sqlite", "postgresql", "postgres"):
        try:
            from corral.registry.sql import SqlRegistry
        except ImportError:
            raise ConfigError("SQL registries need SQLAlchemy: pip install 'corral[sql]'", param="registry") from None
        return SqlRegistry(url)
    if scheme == "etcd":
        from corral.registry.etcd import EtcdRegistry

        return EtcdRegistry(url)
    if scheme in ("http", "https"):
        from corral.registry.remote import RemoteRegistry

        return RemoteRegistry(url, token, ssl_context)
    raise ConfigError(
        f"unknown registry URL {redact(url)!r}: use memory://, sqlite:///FILE, postgresql://..., "
        "etcd://HOST:PORT or a controller's http:// URL",
        param="registry",
    )
