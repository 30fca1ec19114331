"""The protocol front-ends a gateway can serve, by the name ``[server] protocols`` uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from corral.core.errors import ConfigError
from corral.gateway.frontend import Frontend, Kit
from corral.gateway.anthropic.routes import AnthropicFrontend
from corral.gateway.ollama.routes import OllamaFrontend
from corral.gateway.openai.routes import OpenAIFrontend

FRONTENDS: Mapping[str, Callable[[Kit], Frontend]] = MappingProxyType({
    "openai": OpenAIFrontend,
    "anthropic": AnthropicFrontend,
    "ollama": OllamaFrontend,
})


def build_frontends(names: tuple[str, ...], kit: Kit) -> list[Frontend]:
    unknown = [n for n in names if n not in FRONTENDS]
    if unknown:
        raise ConfigError(f"unknown protocol {unknown[0]!r}: this build serves {', '.join(FRONTENDS)}")
    return [FRONTENDS[name](kit) for name in names]
