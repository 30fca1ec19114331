"""The GGUF exporter: llama.cpp loads the file, tokenises like the HF tokenizer and
computes the same logits as transformers for the same demo model."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from corral.engines.llamacpp.gguf_export import DEMO_GGUF_NAME, ensure_demo_gguf, export_gguf
from corral.engines.transformers.demo import DEMO_LLM_NAME

# OFFLINE-MODELS.md saw 1.5e-4 between llama.cpp (f32) and transformers on this model
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def hf_folder(demo_gguf: Path) -> Path:
    return demo_gguf.parent / DEMO_LLM_NAME


@pytest.fixture(scope="module")
def llama(demo_gguf: Path):  # type: ignore[no-untyped-def]
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(demo_gguf), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def hf(hf_folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, local_files_only=True).eval()
    return tok, model


def test_demo_gguf_is_built_once_next_to_the_demo_model(demo_gguf: Path, llamacpp_cache: Path) -> None:
    assert demo_gguf == llamacpp_cache / DEMO_GGUF_NAME
    assert (llamacpp_cache / DEMO_LLM_NAME / "config.json").is_file()
    mtime = demo_gguf.stat().st_mtime_ns
    assert ensure_demo_gguf(llamacpp_cache) == demo_gguf
    assert demo_gguf.stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in llamacpp_cache.iterdir() if ".tmp-" in p.name]  # no temporary left behind


def test_metadata(llama, hf) -> None:  # type: ignore[no-untyped-def]
    import llama_cpp

    tok, _ = hf
    meta = llama.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.add_bos_token"] == "false"
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert llama.n_vocab() == len(tok)
    assert llama.token_eos() == tok.convert_tokens_to_ids("<|im_end|>")
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tid = tok.convert_tokens_to_ids(special)
        assert llama_cpp.llama_vocab_get_attr(vocab, tid) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    # both of the HF generation config's eos ids end generation in llama.cpp too
    eog = {t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    assert eog == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}


def test_tokenization_matches_the_hf_tokenizer(llama, hf) -> None:  # type: ignore[no-untyped-def]
    tok, _ = hf
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="replace")[:2000] for p in sorted(stdlib.glob("*.py"))[60:90]]
    texts += ["héllo wörld 日本語 🙂  \t\n\n x", "<|im_start|>user\nhi<|im_end|>\n", "x = 1_000  # 'quoted'"]
    for text in texts:
        assert llama.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"]
        ids = tok(text)["input_ids"]
        assert llama.detokenize(ids).decode("utf-8", errors="replace") == tok.decode(ids, skip_special_tokens=True)


def test_logits_and_greedy_text_match_transformers(llama, hf) -> None:  # type: ignore[no-untyped-def]
    import torch

    tok, model = hf
    ids = tok("def main(argv):\n    return")["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llama.reset()
    llama.eval(ids)
    got = np.array(llama.scores[: len(ids)])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < LOGIT_TOLERANCE
    assert (got.argmax(-1) == expected.argmax(-1)).all()

    with torch.no_grad():
        hf_out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    eos = set(model.generation_config.eos_token_id)
    hf_ids = hf_out[: next((i for i, t in enumerate(hf_out) if t in eos), len(hf_out))]
    assert len(hf_ids) >= 8  # a real comparison, not an immediate end
    ours: list[int] = []
    for token in llama.generate(ids, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0):
        if token in eos or len(ours) == len(hf_ids):
            break
        ours.append(token)
    assert ours == hf_ids


def test_export_refuses_what_it_cannot_convert(hf_folder: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(hf_folder, folder)
    config = (folder / "config.json").read_text().replace('"rope_type": "default"', '"rope_type": "yarn"')
    (folder / "config.json").write_text(config)
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        export_gguf(folder, tmp_path / "x.gguf")
    (folder / "config.json").write_text(config.replace('"model_type": "llama"', '"model_type": "mistral"'))
    with pytest.raises(ValueError, match="model_type"):
        export_gguf(folder, tmp_path / "x.gguf")
