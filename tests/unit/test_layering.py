"""The layering contract of docs/architecture.md, checked on the source tree.

Every ``corral`` package may import only the packages this table allows; a new edge fails
this test until the table (and the architecture page) says why it exists. Known leaks are
listed module by module, so they cannot spread to other modules unnoticed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "corral"

# package -> the corral packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "protocol": set(),
    "cluster": {"core"},
    "web": {"core", "protocol"},
    "net": {"core"},
    "fmt": set(),
    "registry": {"core", "fmt"},
    "state": {"core", "registry", "fmt"},
    "engines": {"core", "net"},
    "config": {"core", "engines"},
    "bench": {"core"},
    "worker": {"core", "engines", "web", "net", "cluster", "observe"},
    "controller": {"core", "config", "engines", "web", "net", "observe"},
    "gateway": {"core", "protocol", "web", "net", "cluster", "observe", "fmt"},
    "observe": {"core", "registry", "web", "engines", "fmt"},
    "console": {"core", "web"},
    "standalone": {"core", "controller", "engines", "gateway", "observe", "registry", "state", "web", "net", "worker",
                   "console"},
    "cli": {"*"},
    "": set(),  # corral/__init__.py
}

# (importing module, imported package): the edges that cross the table today, each with
# its reason. Removing one is progress; adding one needs a reason here.
KNOWN_LEAKS: dict[tuple[str, str], str] = {}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == "corral" or m.startswith("corral.")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_every_import_follows_the_layering_table() -> None:
    violations = []
    used_leaks = set()
    for module, path in sorted(_modules().items()):
        source = _package(module)
        assert source in ALLOWED, f"{module}: package {source!r} is not in the layering table"
        allowed = ALLOWED[source]
        for target_module in sorted(_imports(path)):
            target = _package(target_module)
            if target in ("", source) or "*" in allowed or target in allowed:
                continue
            if (module, target) in KNOWN_LEAKS:
                used_leaks.add((module, target))
                continue
            violations.append(f"{module} imports {target_module} ({source} -> {target})")
    assert not violations, "imports against the layering of docs/architecture.md:\n" + "\n".join(violations)
    stale = set(KNOWN_LEAKS) - used_leaks
    assert not stale, f"known leaks that no longer exist (remove them from KNOWN_LEAKS): {sorted(stale)}"


def test_core_packages_start_without_torch() -> None:
    """Engines are optional extras: the serving core imports no engine library."""
    code = (
        "import sys; import corral.cli.main, corral.standalone, corral.gateway.service, "
        "corral.worker.service, corral.controller.service, corral.engines.catalog; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'llama_cpp', 'vllm', 'ray') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"importing the core loaded engine libraries: {done.stdout} {done.stderr[-2000:]}"
