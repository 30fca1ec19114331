"""The catalog's factory for the OpenAI-dialect cloud providers (``openai``,
``azure-openai``, ``gemini``, ``deepseek``, ``dashscope``, ``zhipu``, ``qianfan``,
``moonshot``): the model's engine names its ``Provider`` entry, ``source`` is the
upstream model id (Azure: the deployment name)."""

from __future__ import annotations

import os

from corral.core.errors import ConfigError
from corral.core.spec import ModelKind, ModelSpec
from corral.engines.openai_compatible.engine import (
    OpenAICompatibleChat,
    OpenAICompatibleEmbeddings,
    OpenAICompatibleEngine,
)
from corral.engines.openai_compatible.options import AzureOptions, CloudOptions
from corral.engines.openai_compatible.providers import PROVIDERS, Provider
from corral.engines.openai_compatible.upstream import check_base_url


def base_url(spec: ModelSpec, provider: Provider, configured: str | None) -> str:
    """options.base_url, else the provider's environment variable, else its default."""
    from_env = os.environ.get(provider.base_url_env, "").strip() if provider.base_url_env else ""
    url = configured or from_env or provider.base_url
    if not url:
        where = f"set the environment variable {provider.base_url_env} or " if provider.base_url_env else ""
        raise ConfigError(
            f"model {spec.name!r}: {provider.title} has no default endpoint; {where}options.base_url "
            "(e.g. https://NAME.openai.azure.com)",
            param="options.base_url",
        )
    return check_base_url(spec.name, spec.engine, url, "options.base_url")


def create_engine(spec: ModelSpec, options: CloudOptions) -> OpenAICompatibleEngine:
    provider = PROVIDERS.get(spec.engine)
    if provider is None:  # a catalog entry pointing here without a table entry: a Corral bug
        raise ConfigError(f"engine {spec.engine!r} has no entry in the provider table", param="engine")
    for name in options.extra_headers:
        if name.lower() == provider.auth_header_name():
            raise ConfigError(
                f"model {spec.name!r}: options.extra_headers sets {name}, which carries {provider.title}'s key; "
                "give the key with api_key_env / api_key_file instead",
                param="options.extra_headers",
            )
    base = base_url(spec, provider, options.base_url)
    api_version = options.api_version if isinstance(options, AzureOptions) else None
    if ModelKind(spec.kind) is ModelKind.EMBEDDING:
        if not provider.embeddings:
            raise ConfigError(f"model {spec.name!r}: {provider.title} serves no embeddings", param="kind")
        cls: type[OpenAICompatibleEngine] = OpenAICompatibleEmbeddings
    else:
        cls = OpenAICompatibleChat
    return cls(spec, options, provider, base=base, upstream_model=spec.source, api_version=api_version)
