"""The admin API's request bodies take only numbers that can be stored, audited and
served back as JSON: a ``max_concurrency`` beyond 64 bits once made every later
``GET /admin/v1/audit`` a 500 (orjson cannot encode it)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.controller.admin import DeployBody, ScaleBody, UpdateBody
from corral.web.errors import from_validation

DEPLOY = b'{"name": "m", "engine": "transformers", "source": "demo:tiny-llama", '


@pytest.mark.parametrize(
    "model, body, param",
    [
        (DeployBody, DEPLOY + b'"max_concurrency": 18446744073709551616}', "max_concurrency"),
        (DeployBody, DEPLOY + b'"max_concurrency": 1000001}', "max_concurrency"),
        (DeployBody, DEPLOY + b'"weight": Infinity}', "weight"),
        (DeployBody, DEPLOY + b'"weight": 1e308}', "weight"),
        (UpdateBody, b'{"max_concurrency": 100000000000000000000000}', "max_concurrency"),
        (UpdateBody, b'{"weight": NaN}', "weight"),
        (UpdateBody, b'{"weight": Infinity}', "weight"),
        (ScaleBody, b'{"replicas": 18446744073709551616}', "replicas"),
    ],
)
def test_numbers_beyond_the_bounds_are_refused_naming_the_field(model: type, body: bytes, param: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(body)
    err = from_validation(info.value)
    assert (err.status, err.param) == (400, param)


def test_numbers_at_the_bounds_pass() -> None:
    assert DeployBody.model_validate_json(DEPLOY + b'"max_concurrency": 1000000, "weight": 1e6}').max_concurrency == 1_000_000
    assert UpdateBody.model_validate_json(b'{"max_concurrency": 0, "weight": 0.001}').weight == 0.001
