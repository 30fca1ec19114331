"""Loading the transformers engine's model and tokenizer from a resolved source.

Two layouts:

- a model folder (local, or downloaded from a hub id): ``from_pretrained(folder)``;
- a ``.gguf`` file (``FOLDER/FILE.gguf``, or ``package:MODULE`` shipping one):
  transformers reads the GGUF's configuration, tokenizer and chat template and
  dequantises every tensor to a full-precision ``torch`` tensor (``float32`` unless the
  options ask for another dtype; quantised kernels are llama.cpp's business). It takes
  seconds for a 135M model (transformers draws a progress bar), so it is logged
  before and after.

Imported only by the engine, under its import lock (``heavy_imports``): importing this
module imports torch and transformers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from corral.engines import sources
from corral.engines.transformers.options import TransformersOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a PreTrainedModel in eval mode on the options' device
    tokenizer: Any
    path: Path  # the folder or .gguf file it came from


def load_causal_lm(name: str, source: str, options: TransformersOptions) -> LoadedModel:
    """Resolve ``source`` (blocking: may download) and load it; ``name`` is for the logs."""
    path = sources.resolve(source, revision=options.revision)
    started = time.perf_counter()
    if sources.is_gguf(path):
        model, tokenizer = _from_gguf(name, path, options)
    else:
        model, tokenizer = _from_folder(name, path, options)
    model.to(options.device).eval()
    log.info("loaded %s (transformers) in %.1fs", name, time.perf_counter() - started)
    return LoadedModel(model, tokenizer, path)


def _dtype(options: TransformersOptions, default: Any) -> Any:
    return default if options.dtype == "auto" else getattr(torch, options.dtype)


def _from_folder(name: str, path: Path, options: TransformersOptions) -> tuple[Any, Any]:
    log.info("loading %s (transformers) from %s", name, path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=options.revision, trust_remote_code=options.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_dtype(options, "auto"), revision=options.revision, trust_remote_code=options.trust_remote_code
    )
    return model, tokenizer


def _from_gguf(name: str, path: Path, options: TransformersOptions) -> tuple[Any, Any]:
    dtype = _dtype(options, torch.float32)
    size_mb = path.stat().st_size / 1e6
    log.info(
        "loading %s (transformers) from the GGUF file %s (%.0f MB): dequantising its tensors to %s, "
        "this takes a few seconds",
        name, path, size_mb, str(dtype).removeprefix("torch."),
    )
    folder, file = path.parent, path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=dtype)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s: the GGUF file has no chat template; only /v1/completions will work", name)
    return model, tokenizer
