"""The engine catalog and `corral engines`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from corral.core.errors import ConfigError, EngineNotInstalled
from corral.core.spec import ModelKind, ModelSpec
from corral.engines.catalog import BUILTIN, all_entries, get_entry


def test_builtin_engines_are_listed_with_their_capabilities() -> None:
    out = subprocess.run([sys.executable, "-m", "corral.cli.main", "engines", "--json"], capture_output=True, text=True, check=True)
    engines = {e["engine"]: e for e in json.loads(out.stdout)["engines"]}
    assert engines["transformers"]["serves"] == ["chat", "completion"] and engines["transformers"]["installed"]
    assert engines["sentence-transformers"]["serves"] == ["embedding", "rerank"]
    table = subprocess.run([sys.executable, "-m", "corral.cli.main", "engines"], capture_output=True, text=True, check=True)
    assert table.stdout.splitlines()[0].split() == ["ENGINE", "SERVES", "INSTALLED", "TO", "INSTALL"]


def test_missing_dependency_says_how_to_install() -> None:
    entry = dataclasses.replace(BUILTIN[0], name="phantom", requires=("corral_no_such_module_xyz",), extra="phantom")
    assert not entry.installed()
    assert entry.install_hint() == "pip install 'corral[phantom]'"
    spec = ModelSpec(name="m", kind=ModelKind.LLM, engine="phantom", source="x")
    with pytest.raises(EngineNotInstalled, match=r"pip install 'corral\[phantom\]'"):
        entry.create(spec)


def test_unknown_engine_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known engines: .*transformers"):
        get_entry("nope")
    assert set(all_entries()) >= {"transformers", "sentence-transformers"}
