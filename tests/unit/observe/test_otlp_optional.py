"""The OpenTelemetry SDK is an extra (``corral[otel]``): a gateway without ``OTEL_*``
settings never imports it and starts without it; with export configured and the SDK
missing, it refuses to start with what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# a Python where the SDK cannot be imported, as on an install without the extra
_WITHOUT_SDK = """
import sys
class NoSdk:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoSdk())
from corral.core.errors import ConfigError
from corral.core.spec import ServerSettings
from corral.gateway.observability import gateway_observability
from corral.gateway.router import Router
from corral.registry.embedded import EmbeddedRegistry
"""


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_WITHOUT_SDK + code)], capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": ":".join(sys.path)})


def test_without_otel_settings_the_sdk_is_never_imported(tmp_path) -> None:
    result = run(f"""
obs = gateway_observability(ServerSettings(records="sqlite:///{tmp_path}/r.db"), Router(EmbeddedRegistry(), lambda r: None), "g")
assert obs.exporter is None
assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
print("started")
""", {})
    assert result.returncode == 0 and "started" in result.stdout, result.stderr


def test_export_configured_without_the_sdk_is_a_clear_error(tmp_path) -> None:
    result = run(f"""
try:
    gateway_observability(ServerSettings(records="sqlite:///{tmp_path}/r.db"), Router(EmbeddedRegistry(), lambda r: None), "g")
except ConfigError as exc:
    print(exc.message)
""", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert result.returncode == 0, result.stderr
    assert "pip install 'corral[otel]'" in result.stdout and "opentelemetry" in result.stdout, result.stdout
