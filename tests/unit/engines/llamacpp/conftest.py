"""Fixtures of the llama.cpp engine tests: the demo model exported to GGUF once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

import llama_cpp  # noqa: E402,F401  (the llamacpp extra; pinned in requirements.lock)
import gguf  # noqa: E402,F401


@pytest.fixture(scope="session")
def llamacpp_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llamacpp-cache")


@pytest.fixture(scope="session")
def demo_gguf(llamacpp_cache: Path) -> Path:
    from corral.engines.llamacpp.gguf_export import ensure_demo_gguf

    return ensure_demo_gguf(llamacpp_cache)
