"""Options of the openai-compatible engine, validated at config load (no network)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class OpenAICompatibleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    upstream_model: str | None = Field(
        None, min_length=1, description="the `model` sent upstream; default: the Corral model name"
    )
    api_key: SecretStr | None = Field(
        None, min_length=1, description="bearer token for the upstream; prefer api_key_env, as config files are read by many"
    )
    api_key_env: str | None = Field(
        None, min_length=1, description="name of an environment variable holding the upstream's bearer token"
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="connecting to the upstream; a failure is retried elsewhere")
    timeout_s: float = Field(
        300.0, gt=0, description="longest silence from the upstream (before its answer or between two events)"
    )
    max_connections: int = Field(64, ge=1, le=65536, description="pooled connections to the upstream")
    extra_headers: dict[str, str] = Field(default_factory=dict, description="sent with every upstream request")
    supports_embeddings: bool | None = Field(
        None, description="serve /embeddings too; default: true for kind embedding, false for kind llm"
    )
    verify_on_start: bool = Field(True, description="GET {source}/models at start and fail the start if unreachable")

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAICompatibleOptions:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give either api_key or api_key_env, not both")
        for name in self.extra_headers:
            if name.lower() == "authorization" and (self.api_key is not None or self.api_key_env is not None):
                raise ValueError("extra_headers sets authorization, which api_key/api_key_env also set")
        return self
