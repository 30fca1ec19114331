"""Loading a GGUF file for the llama.cpp engine: the weights, and a vocabulary twin.

Two things are loaded from the same file:

- the *weights* (``llama_model_load_from_file``, no context of their own): the decode
  thread's ``Context`` is created on them, and re-created after a crash in milliseconds;
- a vocabulary-only ``llama_cpp.Llama`` *twin* (no weights), used to tokenise, render
  the chat template and detokenise. llama.cpp's vocabulary is read-only once loaded, so
  the event loop (admission: a bad or oversized request is refused before it queues)
  and the decode thread (detokenising) may both use it.

The chat template is the GGUF's own ``tokenizer.chat_template`` through a
``Jinja2ChatFormatter`` (llama-cpp-python would otherwise swap a recognised template for a
built-in format of its own); ``render`` tokenises its output exactly as llama-cpp-python's
chat handler does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.core.errors import ConfigError, InvalidRequest
from corral.engines.sync import heavy_imports

log = logging.getLogger(__name__)


@dataclass
class Gguf:
    """What the engine keeps of a loaded GGUF file."""

    llama_cpp: Any  # the module: the engine imports it only through here
    model: Any  # llama_model pointer: the weights
    twin: Any  # vocab-only llama_cpp.Llama: tokenising, templating, detokenising
    formatter: Any  # Jinja2ChatFormatter, or None when the file has no chat template
    eog: frozenset[int]  # end-of-generation token ids
    bos: int | None  # the beginning-of-text token, when the model has one
    n_vocab: int
    trained_ctx: int  # the model's training context (0: unknown)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """As ``create_completion`` tokenises (``add_bos`` adds BOS only when the GGUF asks for it)."""
        return list(self.twin.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def render(self, name: str, messages: list[dict[str, str]]) -> list[int]:
        """The chat prompt's token ids, from the GGUF's template."""
        if self.formatter is None:
            raise InvalidRequest(
                f"model {name!r} has no chat template in its GGUF file; use /v1/completions", param="messages"
            )
        try:
            rendered = self.formatter(messages=messages)
        except Exception as exc:  # jinja templates raise for roles or orders they do not accept
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None
        # exactly as llama-cpp-python's chat handler tokenises the rendered prompt
        return self.tokenize(rendered.prompt, add_bos=not rendered.added_special)

    def detokenize(self, ids: Any) -> str:
        return bytes(self.twin.detokenize(list(ids))).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.model is not None:
            self.llama_cpp.llama_model_free(self.model)
            self.model = None
        if self.twin is not None:
            self.twin.close()
            self.twin = None


def load_gguf(name: str, source: str, n_threads: int | None, verbose: bool) -> Gguf:
    with heavy_imports():
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model {name!r}: engine 'llamacpp' needs a .gguf file as its source; {str(path)!r} is not a file",
            param="source",
        )
    # vocab_only: no weights; llama-cpp-python still makes a (weightless) context, kept tiny.
    try:
        twin = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=8, n_batch=8, n_threads=1, verbose=verbose)
    except ValueError as exc:  # llama-cpp-python's word for "llama.cpp could not read it"
        raise ConfigError(f"model {name!r}: llama.cpp cannot load {str(path)!r}: {exc}", param="source") from None
    meta = twin.metadata
    trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0) or 0)

    def text_of(token: int) -> str:
        return "" if token < 0 else twin.detokenize([token], special=True).decode("utf-8", errors="replace")

    formatter = None
    template = meta.get("tokenizer.chat_template")
    eos, bos = twin.token_eos(), twin.token_bos()
    if template:
        formatter = Jinja2ChatFormatter(
            template=template, eos_token=text_of(eos), bos_token=text_of(bos), stop_token_ids=[eos]
        )
    vocab = llama_cpp.llama_model_get_vocab(twin.model)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    eog = frozenset(t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))

    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        twin.close()
        raise ConfigError(f"model {name!r}: llama.cpp cannot load the weights of {str(path)!r}", param="source")
    return Gguf(
        llama_cpp=llama_cpp,
        model=model,
        twin=twin,
        formatter=formatter,
        eog=eog,
        bos=bos if bos >= 0 else None,
        n_vocab=n_vocab,
        trained_ctx=trained,
    )
