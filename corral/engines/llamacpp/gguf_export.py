"""Writing a llama.cpp GGUF file straight from a small Hugging Face Llama folder.

llama.cpp's own ``convert_hf_to_gguf.py`` is not shipped by any wheel and refuses
tokenizers whose pre-tokenizer it does not recognise (the demo model's is trained
here, so it has no known hash). For a plain ``LlamaForCausalLM`` with a byte-level BPE
tokenizer the conversion is short, and this module does it with the ``gguf`` package:

- hyperparameters under the ``llama.*`` keys;
- the tokenizer as ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE) with the GPT-2
  pre-tokenizer (``tokenizer.ggml.pre = "gpt-2"``): tokens, token
  types (special tokens are CONTROL, so llama.cpp treats ``<|im_end|>`` and
  ``<|endoftext|>`` as end-of-generation tokens just as the HF generation config does),
  merges, bos/eos/pad ids, ``add_bos_token = False`` and the chat template;
- tensors renamed to llama.cpp names, with q/k rows permuted: HF Llama applies
  rotary embeddings to the two halves of each head ("rotate_half") while llama.cpp's
  llama architecture rotates interleaved pairs, so each head's rows are reordered.

Weights are written as float32: the files this is meant for are tiny; quantising is
llama.cpp's ``llama-quantize``'s job.

Reads safetensors with numpy: no torch is needed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_GGUF_NAME = "demo-llm-v1.f32.gguf"

# HF tensor name (after the "model.layers.N." prefix) -> llama.cpp name (after "blk.N.")
_LAYER_TENSORS = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _permute(weights: Any, n_head: int) -> Any:
    """Reorder each head's rows from HF's half-split rotary layout to llama.cpp's
    interleaved one (the same transform as ``convert_hf_to_gguf.LlamaModel.permute``)."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not supported by this exporter (only 'default')")
    return float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"  # transformers >= 4.43 saves it here
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_id(name: Any, vocab: dict[str, int]) -> int | None:
    if isinstance(name, dict):  # AddedToken serialised as a dict
        name = name.get("content")
    return vocab.get(name) if isinstance(name, str) else None


def _tokenizer(folder: Path, vocab_size: int) -> dict[str, Any]:
    tok = _read_json(folder / "tokenizer.json")
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError(f"{folder}: only byte-level BPE tokenizers (GPT-2 style) are supported by this exporter")
    vocab: dict[str, int] = dict(model["vocab"])
    special: set[int] = set()
    for added in tok.get("added_tokens") or ():
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ValueError(f"{folder}: the tokenizer has ids beyond the model's vocab_size {vocab_size}")

    import gguf

    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows with no token: padding, never produced by the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or ()]

    tok_config = _read_json(folder / "tokenizer_config.json")
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": _token_id(tok_config.get("bos_token"), vocab),
        "eos": _token_id(tok_config.get("eos_token"), vocab),
        "pad": _token_id(tok_config.get("pad_token"), vocab),
        "chat_template": _chat_template(folder, tok_config),
    }


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights found")
    out: dict[str, Any] = {}
    for f in files:
        out.update(load_file(f))
    return out


def export_gguf(hf_folder: Path, out: Path) -> Path:
    """Write ``out`` (a float32 llama-architecture GGUF) from the HF Llama in ``hf_folder``."""
    import gguf
    import numpy as np

    hf_folder, out = Path(hf_folder), Path(out)
    config = _read_json(hf_folder / "config.json")
    if config.get("model_type") != "llama":
        raise ValueError(f"{hf_folder}: model_type {config.get('model_type')!r} is not 'llama'")
    n_embd = int(config["hidden_size"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or n_embd // n_head)
    n_layer = int(config["num_hidden_layers"])
    vocab_size = int(config["vocab_size"])
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError(f"{hf_folder}: attention or MLP biases are not supported by this exporter")

    tok = _tokenizer(hf_folder, vocab_size)
    weights = _tensors(hf_folder)

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(hf_folder.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != n_embd:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_vocab_size(vocab_size)

    writer.add_tokenizer_model("gpt2")
    # "gpt-2": the GPT-2 pre-tokenizer regex, which is what HF's ByteLevel(use_regex=True) uses.
    # ("default" loads too and gives the same logits for a short prompt, but it splits text
    # differently: it tokenised 61 of 63 stdlib snippets unlike the HF tokenizer; "gpt-2": none.)
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    if tok["bos"] is not None:
        writer.add_bos_token_id(tok["bos"])
    elif tok["pad"] is not None:
        # llama.cpp's gpt2 vocab otherwise defaults bos to id 11 (a normal token here); it is never added
        writer.add_bos_token_id(tok["pad"])
    if tok["eos"] is not None:
        writer.add_eos_token_id(tok["eos"])
    if tok["pad"] is not None:
        writer.add_pad_token_id(tok["pad"])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    tied = bool(config.get("tie_word_embeddings")) or "lm_head.weight" not in weights
    for name, array in sorted(weights.items()):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if name in _GLOBAL_TENSORS:
            if name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            writer.add_tensor(_GLOBAL_TENSORS[name], array)
            continue
        parts = name.split(".", 3)  # model, layers, N, rest
        if len(parts) != 4 or parts[:2] != ["model", "layers"] or parts[3] not in _LAYER_TENSORS:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise ValueError(f"{hf_folder}: unexpected tensor {name!r}")
        rest = parts[3]
        if rest == "self_attn.q_proj.weight":
            array = _permute(array, n_head)
        elif rest == "self_attn.k_proj.weight":
            array = _permute(array, n_head_kv)
        writer.add_tensor(f"blk.{parts[2]}.{_LAYER_TENSORS[rest]}", np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def ensure_demo_gguf(cache_dir: Path) -> Path:
    """The demo model (``corral.engines.transformers.demo``) as a GGUF file next to its HF
    folder under ``cache_dir``, exported on first use. Written to a temporary name and
    renamed into place, so a crashed or concurrent export never leaves a partial file."""
    from corral.engines.transformers.demo import ensure_demo_llm

    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_GGUF_NAME
    if target.is_file():
        return target
    folder = ensure_demo_llm(cache_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{DEMO_GGUF_NAME}.tmp-", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("exporting the demo model to %s", target)
        export_gguf(folder, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, target)  # atomic; a concurrent exporter's identical file is simply replaced
    finally:
        tmp.unlink(missing_ok=True)
    return target
