"""A tiny random-weight chat model built offline, for smoke tests and demos.

`ensure_demo_llm` builds (once) a folder that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load with `HF_HUB_OFFLINE=1`: a byte-level BPE tokenizer
(vocab 512) trained on the Python standard library's own sources, a ChatML chat template, and a
2-layer Llama (~100k parameters) with seeded random weights. Its replies are meaningless text;
it exists so the serving stack can be exercised end to end without a model hub.

torch, transformers and tokenizers are imported inside functions, so importing this module is
cheap.
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEMO_LLM_NAME = "demo-llm-v1"
COMPLETE_MARKER = ".demo-llm-complete"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 512
SEED = 0
_CORPUS_FILES = 40
_CORPUS_MAX_BYTES = 2_000_000

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- else %}{%- set content = namespace(text='') %}"
    "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}"
    "{%- set content.text = content.text + part['text'] %}{%- endif %}{%- endfor %}"
    "{%- set content = content.text %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_README = """\
# demo-llm-v1

A **random-weight smoke-test model** built offline by `corral.engines.transformers.demo`.

- Tokenizer: byte-level BPE, vocabulary {vocab}, trained on the Python standard library's sources.
  Special tokens: `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos). ChatML chat template.
- Model: LlamaForCausalLM, hidden 64, 2 layers, 4 heads (2 KV heads), float32, seed {seed}.

The weights are random: its outputs are meaningless text. Use it only to test the serving
machinery (loading, tokenization, chat templating, generation, streaming, batching).
"""


def _corpus() -> list[str]:
    """A deterministic selection of standard-library sources (sorted, capped in count and size)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    texts: list[str] = []
    total = 0
    for path in files[:_CORPUS_FILES]:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        text = text[: max(0, _CORPUS_MAX_BYTES - total)]
        if not text:
            break
        texts.append(text)
        total += len(text)
    if not texts:
        raise RuntimeError(f"no Python sources found under {stdlib} to train the demo tokenizer on")
    return texts


def _build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _build_into(folder: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        eos_token_id=[im_end, eot],
        pad_token_id=eot,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=None)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(_README.format(vocab=len(tokenizer), seed=SEED), encoding="utf-8")
    (folder / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def _warn(folder: Path) -> Path:
    logger.warning(
        "demo-chat is a tiny random-weight smoke-test model: its replies are meaningless (%s)", folder
    )
    return folder


def ensure_demo_llm(cache_dir: Path) -> Path:
    """Return the demo model's folder under `cache_dir`, building it on first use.

    The build happens in a temporary sibling folder that is renamed into place, and the folder
    is only used once it holds the completion marker, so a crashed or concurrent build never
    exposes a half-written model. If another process finishes first, its folder is kept.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_LLM_NAME
    if _is_complete(target):
        return _warn(target)

    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building the demo model into %s (one-off, about a second)", target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_LLM_NAME}.tmp-", dir=cache_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the finished folder may be shared
        _build_into(tmp)
        if target.exists() and not _is_complete(target):
            # A leftover without the marker (not made by this code's atomic rename): set it aside.
            stale = Path(tempfile.mkdtemp(prefix=f".{DEMO_LLM_NAME}.stale-", dir=cache_dir))
            try:
                os.replace(target, stale / "old")
            except OSError:
                pass  # someone else moved it meanwhile
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise  # not a lost race: a real error
            logger.info("another process built %s first; keeping theirs", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _warn(target)
