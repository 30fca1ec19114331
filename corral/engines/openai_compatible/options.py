"""Options of the engines that call an HTTP API upstream (openai-compatible, the cloud
providers, anthropic), validated at config load (no network, no key lookup)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class ConnectionOptions(BaseModel):
    """How to reach and authenticate to the upstream: shared by every HTTP engine."""

    model_config = ConfigDict(extra="forbid", strict=True)

    api_key: SecretStr | None = Field(
        None, min_length=1,
        description="the upstream's key; prefer api_key_env or api_key_file, as config files are read by many",
    )
    api_key_env: str | None = Field(
        None, min_length=1,
        description="environment variable holding the key; cloud providers default to their usual one "
        "(e.g. OPENAI_API_KEY)",
    )
    api_key_file: str | None = Field(
        None, min_length=1, description="a secrets file holding the key (one line); a warning if others may read it"
    )
    connect_timeout_s: float = Field(
        5.0, gt=0,
        description="establishing a connection to the upstream (not waiting for a pooled one); "
        "a failure is retried elsewhere",
    )
    timeout_s: float = Field(
        300.0, gt=0, description="longest silence from the upstream (before its answer or between two events)"
    )
    max_connections: int = Field(
        256, ge=1, le=65536, description="pooled connections to the upstream: requests it serves at once"
    )
    max_queued: int = Field(
        1024, ge=0, le=1_000_000,
        description="requests waiting, in arrival order, for a pooled connection when all are busy; beyond, 429",
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for a pooled connection, then 429 with Retry-After"
    )
    extra_headers: dict[str, str] = Field(default_factory=dict, description="sent with every upstream request")
    verify_on_start: bool = Field(
        True, description="list the upstream's models at start; fail the start if unreachable or the key is refused"
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ConnectionOptions:
        given = [name for name in ("api_key", "api_key_env", "api_key_file") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of api_key, api_key_env and api_key_file, not both {' and '.join(given)}")
        return self


class OpenAICompatibleOptions(ConnectionOptions):
    """The generic engine: ``source`` is the server's base URL; no key unless given."""

    upstream_model: str | None = Field(
        None, min_length=1, description="the `model` sent upstream; default: the Corral model name"
    )
    supports_embeddings: bool | None = Field(
        None, description="serve /embeddings too; default: true for kind embedding, false for kind llm"
    )
    passthrough: bool = Field(
        True, description="forward the upstream's streamed events to OpenAI clients as they come (only the id and "
        "model name rewritten) instead of decoding and encoding each; false: always translate"
    )

    @model_validator(mode="after")
    def _one_authorization(self) -> OpenAICompatibleOptions:
        keyed = self.api_key is not None or self.api_key_env is not None or self.api_key_file is not None
        if keyed and any(name.lower() == "authorization" for name in self.extra_headers):
            raise ValueError("extra_headers sets authorization, which api_key/api_key_env/api_key_file also set")
        return self


class CloudOptions(ConnectionOptions):
    """A cloud provider: ``source`` is the upstream model id; the base URL and the key's
    environment variable default to the provider's (see ``providers.py``)."""

    base_url: str | None = Field(
        None, min_length=1, description="override the provider's base URL (a regional endpoint, a proxy, a test fake)"
    )


class AzureOptions(CloudOptions):
    """Azure OpenAI: ``source`` is the deployment name, ``base_url`` the resource endpoint
    (https://NAME.openai.azure.com; default: $AZURE_OPENAI_ENDPOINT)."""

    api_version: str = Field("2024-10-21", min_length=1, description="the api-version query parameter of every request")
