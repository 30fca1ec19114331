"""Session fixtures: one standalone server with the default demo deployment, shared by
all integration tests (starting one costs a few seconds of torch import and model load)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import Server, start_corral

API_KEY = "test-key-123"


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
    """``corral start`` with no model arguments: the offline demo deployment, plus an API key."""
    server = start_corral(["--api-key", API_KEY], corral_home, tmp_path_factory.mktemp("logs"))
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
