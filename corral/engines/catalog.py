"""The table of known engines: name, what it serves, its options schema, its factory, and
the optional dependency it needs. Nothing here imports an engine library, so the CLI and
config validation stay fast and work without torch.

Third-party engines join through the ``corral.engines`` entry-point group: each entry
point resolves to an ``EngineEntry``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from corral.core.errors import ConfigError, EngineNotInstalled
from corral.core.spec import ModelKind

if TYPE_CHECKING:
    from pydantic import BaseModel

    from corral.core.engine import Engine
    from corral.core.spec import ModelSpec


@dataclass(frozen=True)
class EngineEntry:
    name: str
    kinds: frozenset[ModelKind]
    serves: tuple[str, ...]  # human words: chat, completion, embedding
    options: str  # "module:Class" of a pydantic model with extra="forbid"
    factory: str  # "module:callable" taking (spec, options) and returning an Engine
    requires: tuple[str, ...]  # importable module names of the optional dependency
    extra: str  # the pip extra that installs them; "" if corral's own dependencies do (built in)
    # the engine loads one .gguf file: its factory gets the spec with ``source`` resolved to
    # that file's path (``sources.resolve_gguf``: a path, a folder, package:MODULE)
    gguf_source: bool = False

    def installed(self) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def install_hint(self) -> str:
        if not self.extra:
            return "built in: reinstall corral (pip install --force-reinstall corral)"
        return f"pip install 'corral[{self.extra}]'"

    def options_model(self) -> type[BaseModel]:
        return _load(self.options)

    def create(self, spec: ModelSpec) -> Engine:
        if not self.installed():
            raise EngineNotInstalled(
                f"model {spec.name!r} uses engine {self.name!r}, whose dependencies are not installed: "
                f"{self.install_hint()}"
            )
        options = self.options_model().model_validate(spec.options)
        if self.gguf_source:
            from corral.engines.sources import resolve_gguf

            spec = dataclasses.replace(spec, source=str(resolve_gguf(spec.source)))
        return _load(self.factory)(spec, options)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _cloud(name: str, serves: tuple[str, ...], options: str = "openai_compatible.options:CloudOptions",
           factory: str = "openai_compatible.cloud:create_engine") -> EngineEntry:
    """A cloud provider: an entry of ``openai_compatible/providers.py`` (or anthropic),
    built in (aiohttp is a core dependency), serving what the vendor's API has."""
    kinds = {ModelKind.LLM} | ({ModelKind.EMBEDDING} if "embedding" in serves else set())
    return EngineEntry(
        name=name, kinds=frozenset(kinds), serves=serves, options=f"corral.engines.{options}",
        factory=f"corral.engines.{factory}", requires=("aiohttp",), extra="",
    )


BUILTIN: tuple[EngineEntry, ...] = (
    EngineEntry(
        name="transformers",
        kinds=frozenset({ModelKind.LLM}),
        serves=("chat", "completion"),
        options="corral.engines.transformers.options:TransformersOptions",
        factory="corral.engines.transformers.engine:TransformersEngine",
        requires=("torch", "transformers"),
        extra="transformers",
    ),
    EngineEntry(
        name="llamacpp",
        kinds=frozenset({ModelKind.LLM}),
        serves=("chat", "completion"),
        options="corral.engines.llamacpp.options:LlamaCppOptions",
        factory="corral.engines.llamacpp.engine:LlamaCppEngine",
        requires=("llama_cpp",),
        extra="llamacpp",
        gguf_source=True,
    ),
    EngineEntry(
        name="vllm",
        kinds=frozenset({ModelKind.LLM}),
        serves=("chat", "completion"),
        options="corral.engines.vllm.options:VLLMOptions",
        factory="corral.engines.vllm.engine:VLLMEngine",
        requires=("vllm",),
        extra="vllm",
    ),
    EngineEntry(
        name="sentence-transformers",
        kinds=frozenset({ModelKind.EMBEDDING, ModelKind.RERANK}),
        serves=("embedding", "rerank"),
        options="corral.engines.sentence_transformers.options:SentenceTransformersOptions",
        factory="corral.engines.sentence_transformers.engine:create",
        requires=("torch", "sentence_transformers"),
        extra="sentence-transformers",
    ),
    EngineEntry(
        name="openai-compatible",
        kinds=frozenset({ModelKind.LLM, ModelKind.EMBEDDING}),
        serves=("chat", "completion", "embedding"),
        options="corral.engines.openai_compatible.options:OpenAICompatibleOptions",
        factory="corral.engines.openai_compatible.engine:create_engine",
        requires=("aiohttp",),
        extra="",  # aiohttp is a core dependency
    ),
    _cloud("openai", ("chat", "completion", "embedding")),
    _cloud("azure-openai", ("chat", "completion", "embedding"), options="openai_compatible.options:AzureOptions"),
    _cloud("gemini", ("chat", "embedding")),
    _cloud("deepseek", ("chat",)),
    _cloud("dashscope", ("chat", "embedding")),
    _cloud("zhipu", ("chat", "embedding")),
    _cloud("qianfan", ("chat", "embedding")),
    _cloud("moonshot", ("chat",)),
    _cloud("anthropic", ("chat",),
           options="anthropic.options:AnthropicOptions", factory="anthropic.engine:create_engine"),
)


def all_entries() -> dict[str, EngineEntry]:
    entries = {e.name: e for e in BUILTIN}
    for ep in entry_points(group="corral.engines"):
        entry = ep.load()
        if isinstance(entry, EngineEntry):
            entries.setdefault(entry.name, entry)
    return entries


def get_entry(name: str) -> EngineEntry:
    entries = all_entries()
    try:
        return entries[name]
    except KeyError:
        known = ", ".join(sorted(entries))
        raise ConfigError(f"unknown engine {name!r}; known engines: {known}", param="engine") from None


def installed_engines() -> list[str]:
    """Names of the engines whose optional dependencies are importable here."""
    return sorted(name for name, entry in all_entries().items() if entry.installed())
