"""Per-model ``resources``: the TOML table (file, line and key of every problem), the
admin API's deploy body (400 naming the field), and their round trip through the
stored spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.config.loader import load_settings, validate_model_spec
from corral.controller.admin import DeployBody
from corral.core.errors import ConfigError
from corral.core.spec import ModelKind, ModelSpec, Resources
from corral.core.state import spec_from_json, spec_to_json
from corral.web.errors import from_validation

MODEL = """\
[[models]]
name = "m"
kind = "llm"
engine = "transformers"
source = "x"
"""


def load(tmp_path: Path, text: str) -> ModelSpec:
    path = tmp_path / "corral.toml"
    path.write_text(MODEL + text)
    return load_settings(path).models[0]


def problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_a_resources_table_is_read(tmp_path: Path) -> None:
    spec = load(tmp_path, '[models.resources]\nnum_cpus = 1.5\nnum_gpus = 1\nmemory_gb = 8\ncustom = { nodeb = 1, "zone:a" = 0.5 }\n')
    assert spec.resources == Resources(num_cpus=1.5, num_gpus=1.0, memory_gb=8.0, custom=(("nodeb", 1.0), ("zone:a", 0.5)))
    assert spec.resources.as_dict() == {"num_cpus": 1.5, "num_gpus": 1.0, "memory_gb": 8.0, "custom": {"nodeb": 1.0, "zone:a": 0.5}}
    assert spec.resources.describe() == "num_cpus=1.5, num_gpus=1, memory_gb=8, custom.nodeb=1, custom.zone:a=0.5"
    assert load(tmp_path, "").resources is None  # no table: nothing reserved


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[models.resources]\nnum_cpus = -1\n", ":7: models[0].resources.num_cpus: Input should be greater than or equal to 0"),
        ("[models.resources]\nnum_gpus = 1000\n", ":7: models[0].resources.num_gpus: Input should be less than or equal to 256"),
        ("[models.resources]\nmemory_gb = 0\n", ":7: models[0].resources.memory_gb: Input should be greater than 0"),
        ('[models.resources]\nnum_cpus = "2"\n', ":7: models[0].resources.num_cpus: Input should be a valid number"),
        ("[models.resources]\nnum_cpus = nan\n", ":7: models[0].resources.num_cpus: Input should be a finite number"),
        ("[models.resources]\ncpus = 1\n", ":7: unknown key 'cpus' in models[0].resources"),
        ("[models.resources]\ncustom = { nodeb = 0 }\n", ":7: models[0].resources.custom.nodeb: Input should be greater than 0"),
        ("[models.resources]\ncustom = { CPU = 1 }\n", "models[0].resources.custom: Value error, 'CPU' is one of Ray's own"),
        ('[models.resources]\ncustom = { "two words" = 1 }\n', ":7: models[0].resources.custom: Value error, 'two words' is not a resource name"),
        ("resources = 2\n", ":6: models[0].resources: must be a table ([models.resources])"),
    ],
)
def test_bad_resources_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problem(tmp_path, text)


def test_resources_survive_the_stored_spec_and_are_checked_again() -> None:
    spec = ModelSpec("m", ModelKind.LLM, "transformers", "x", resources=Resources(num_cpus=0.5, custom=(("nodeb", 1.0),)))
    back = spec_from_json(spec_to_json(spec))
    assert back.resources == spec.resources and back == spec
    assert spec_from_json(spec_to_json(ModelSpec("m", ModelKind.LLM, "transformers", "x"))).resources is None
    validate_model_spec(spec)
    with pytest.raises(ConfigError) as info:
        validate_model_spec(ModelSpec("m", ModelKind.LLM, "transformers", "x", resources=Resources(num_cpus=-2)))
    assert info.value.param == "resources.num_cpus"


@pytest.mark.parametrize(
    ("resources", "param"),
    [
        ({"num_cpus": -1}, "resources.num_cpus"),
        ({"num_gpus": True}, "resources.num_gpus"),
        ({"memory_gb": 1e9}, "resources.memory_gb"),
        ({"custom": {"GPU": 1}}, "resources.custom"),
        ({"custom": {"nodeb": "1"}}, "resources.custom.nodeb"),
        ({"custom": [1]}, "resources.custom"),
        ({"gpus": 1}, "resources.gpus"),
        ("big", "resources"),
    ],
)
def test_the_deploy_body_names_the_bad_field(resources: object, param: str) -> None:
    body = {"name": "m", "engine": "transformers", "source": "x", "resources": resources}
    import orjson

    with pytest.raises(ValidationError) as info:
        DeployBody.model_validate_json(orjson.dumps(body))
    error = from_validation(info.value)
    assert error.status == 400 and error.param == param, (error.param, error.message)


def test_the_deploy_body_takes_the_documented_example() -> None:
    body = DeployBody.model_validate_json(
        b'{"name":"m","engine":"transformers","source":"x","resources":'
        b'{"num_cpus": 1.5, "num_gpus": 1, "memory_gb": 8, "custom": {"nodeb": 1}}}'
    )
    assert body.resources is not None
    assert body.resources.resources() == Resources(1.5, 1.0, 8.0, (("nodeb", 1.0),))
