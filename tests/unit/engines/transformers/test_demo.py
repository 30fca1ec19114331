"""The offline demo model: builds once, reloads offline, chats in ChatML, generates, is deterministic."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.engines.transformers.demo import COMPLETE_MARKER, DEMO_LLM_NAME, ensure_demo_llm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_llm(tmp_path_factory.mktemp("cache-a"))


@pytest.fixture(scope="module")
def tokenizer(demo_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(demo_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_dir, local_files_only=True).eval()


def test_layout(demo_dir: Path) -> None:
    assert demo_dir.name == DEMO_LLM_NAME
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "README.md", COMPLETE_MARKER):
        assert (demo_dir / name).is_file(), name
    assert "random-weight" in (demo_dir / "README.md").read_text()
    # no temporary build folders left next to it
    assert [p.name for p in demo_dir.parent.iterdir()] == [DEMO_LLM_NAME]


def test_reload_offline(tokenizer, model) -> None:
    assert len(tokenizer) == model.config.vocab_size == 512
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    assert model.config.eos_token_id == eos
    assert model.generation_config.eos_token_id == eos


def test_chat_template(tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
         {"role": "assistant", "content": "A"}],
        tokenize=False,
    )
    assert full == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("text", ["héllo wörld ✓", "def f(x):\n\treturn x  # it 's .  ok\n", "日本語 🙂 \x00", ""])
def test_round_trip(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_second_call_reuses(demo_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = demo_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="corral.engines.transformers.demo"):
        again = ensure_demo_llm(demo_dir.parent)
    assert again == demo_dir
    assert weights.stat().st_mtime_ns == before
    assert not any("building" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING and "random-weight" in r.getMessage() for r in caplog.records)


def test_deterministic_build(demo_dir: Path, tmp_path: Path) -> None:
    other = ensure_demo_llm(tmp_path)
    assert other != demo_dir
    for name in ("model.safetensors", "tokenizer.json"):
        assert (other / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_generate(tokenizer, model) -> None:
    import torch

    ids = torch.tensor([tokenizer.encode("def f(x):\n")[:5]])
    assert ids.shape == (1, 5)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert 5 < out.shape[1] <= 5 + 8
    assert torch.equal(out[0, :5], ids[0])
    assert isinstance(tokenizer.decode(out[0, 5:]), str)


def test_import_is_cheap() -> None:
    code = "import sys, corral.engines.transformers.demo; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
