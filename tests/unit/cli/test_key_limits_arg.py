"""``corral gateway --key-limits``: the default limits of every virtual key, parsed from
the command line the way ``[server.key_limits]`` is read from a config file."""

from __future__ import annotations

import argparse

import pytest

from corral.cli.keys_args import parse_limits
from corral.cli.main import _parser
from corral.core.keys import Limits


def test_limits_parse_by_name() -> None:
    assert parse_limits("rpm=600, tpm=100000,max-concurrency=4,budget_tokens=5000000,budget_period=month") == Limits(
        rpm=600, tpm=100_000, max_concurrency=4, budget_tokens=5_000_000, budget_period="month"
    )
    assert parse_limits("") == Limits()


@pytest.mark.parametrize("text", ["rpm=x", "rpm=-1", "speed=3", "budget_period=week", "rpm"])
def test_bad_limits_say_what_is_accepted(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=N"):
        parse_limits(text)


def test_the_gateway_takes_them(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["gateway", "--controller", "http://127.0.0.1:1", "--key-limits", "rpm=60"])
    assert args.key_limits == Limits(rpm=60)
    with pytest.raises(SystemExit):
        parser.parse_args(["gateway", "--controller", "http://127.0.0.1:1", "--key-limits", "rpm=fast"])
    assert "--key-limits" in capsys.readouterr().err
