"""Options of the anthropic engine, validated at config load (no network, no key lookup)."""

from __future__ import annotations

from pydantic import Field

from corral.engines.openai_compatible.options import CloudOptions


class AnthropicOptions(CloudOptions):
    """``source`` is the Claude model id; ``base_url`` defaults to https://api.anthropic.com
    and the key to $ANTHROPIC_API_KEY."""

    anthropic_version: str = Field("2023-06-01", min_length=1, description="the anthropic-version header")
    default_max_tokens: int = Field(
        4096, ge=1, description="max_tokens sent when the request gives none (the Messages API requires one)"
    )
