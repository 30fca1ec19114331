"""``corral controller --launcher ...``: which launcher each value builds, and the
refusals, without starting anything (Ray is connected to only when the controller's
loop starts, in ``RayLauncher.open``)."""

from __future__ import annotations

import pytest

from corral.cli.cluster import _capacity
from corral.cli.main import _parser
from corral.cli.tls_args import tls_from_args
from corral.core.errors import ConfigError


def capacity_for(*flags: str):  # type: ignore[no-untyped-def]
    args = _parser().parse_args(["controller", "--port", "8001", *flags])
    return _capacity(args, tls_from_args(args))


def test_ray_url_names_the_gcs_address_and_the_workers_get_a_reachable_controller_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    launcher = capacity_for("--launcher", "ray://10.1.2.3:6379", "--ray-namespace", "team-a").launcher
    assert launcher.name == "ray" and launcher.places_by_resources and launcher.per_worker == 1
    assert (launcher._address, launcher._namespace, launcher._url) == ("10.1.2.3:6379", "team-a", "http://127.0.0.1:8001")
    launcher = capacity_for("--launcher", "ray://h:1", "--launcher-controller-url", "http://ctrl.internal:8001/").launcher
    assert launcher._url == "http://ctrl.internal:8001"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert capacity_for("--launcher", "ray").launcher._address == "head:6379"


def test_local_stays_local(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = capacity_for("--launcher", "local", "--launcher-max-instances", "3").launcher
    assert launcher.name == "local" and not launcher.places_by_resources and launcher.per_worker == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "ray"], "set RAY_ADDRESS, or give --launcher ray://HOST:PORT"),
        (["--launcher", "ray://"], "unknown --launcher 'ray://'"),
        (["--launcher", "kubernetes"], "use local, ray (with RAY_ADDRESS) or ray://HOST:PORT"),
        (["--launcher", "ray://h:1", "--launcher-max-instances", "2"], "--launcher-max-instances must be 1"),
    ],
)
def test_bad_launchers_are_refused(monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError) as info:
        capacity_for(*flags)
    assert message in info.value.message
