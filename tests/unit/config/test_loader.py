"""Tests of the TOML config loader: round trip, and file:line:key in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config.loader import load_settings, validate_model_spec
from corral.core.errors import ConfigError
from corral.core.spec import ModelKind, ModelSpec, SamplingDefaults, ServerSettings, Settings

FULL = """\
# corral config
[server]
host = "0.0.0.0"
port = 9000
api_keys = ["k1", "k2"]
max_body_bytes = 2048
log_level = "debug"

[[models]]
name = "demo-chat"
kind = "llm"
engine = "transformers"
source = "sshleifer/tiny-gpt2"
replicas = 2

[models.options]
max_batch_size = 4
dtype = "float32"

[[models]]
name = "org/embed:v1"
kind = "embedding"
engine = "sentence-transformers"
source = "/models/minilm"
options = { normalize = false, batch_wait_ms = 1 }
"""

MODEL = """\
[[models]]
name = "m"
kind = "llm"
engine = "transformers"
source = "x"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    return message


def test_full_file_round_trips(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))
    assert settings == Settings(
        server=ServerSettings(
            host="0.0.0.0", port=9000, api_keys=("k1", "k2"), max_body_bytes=2048, log_level="debug"
        ),
        models=(
            ModelSpec(
                name="demo-chat",
                kind=ModelKind.LLM,
                engine="transformers",
                source="sshleifer/tiny-gpt2",
                options={"max_batch_size": 4, "dtype": "float32"},
                replicas=2,
            ),
            ModelSpec(
                name="org/embed:v1",
                kind=ModelKind.EMBEDDING,
                engine="sentence-transformers",
                source="/models/minilm",
                options={"normalize": False, "batch_wait_ms": 1},
            ),
        ),
    )
    assert isinstance(settings.models[0].kind, ModelKind)
    assert isinstance(settings.server.api_keys, tuple)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_partial_server_keeps_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[server]\nport = 8080\n"))
    assert settings.server == ServerSettings(port=8080)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "# top\nservers = 1\n" + MODEL)
    assert ":2: unknown top-level key 'servers' (did you mean 'server'?)" in message


def test_unknown_server_key_with_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\nhost = "h"\nprot = 80\n')
    assert message.endswith(":3: unknown key 'prot' in [server] (did you mean 'port'?)")


def test_unknown_model_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "replica = 2\n")
    assert ":6: unknown key 'replica' in models[0] (did you mean 'replicas'?)" in message


def test_unknown_option_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "[models.options]\ndtype = 'auto'\nmax_batch = 2\n")
    assert ":8: unknown key 'max_batch' in models[0].options (did you mean 'max_batch_size'?)" in message


def test_bad_option_value_in_second_model(tmp_path: Path) -> None:
    text = MODEL + MODEL.replace('"m"', '"n"') + "\n[models.options]\nmax_batch_size = 0\n"
    message = error_of(tmp_path, text)
    assert message.endswith(":13: models[1].options.max_batch_size: Input should be greater than or equal to 1")


def test_bad_option_value_inline_table(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "options = { dtype = 'auto', max_batch_size = 0 }\n")
    assert ":6: models[0].options.max_batch_size: Input should be greater than or equal to 1" in message


def test_bad_option_value_dotted_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "options.dtype = 'float64'\n")
    assert ":6: models[0].options.dtype: Input should be" in message


@pytest.mark.parametrize("value", ['"x"', "true", "80.0"])
def test_port_wrong_type(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, f'[server]\nhost = "h"\nport = {value}\n')
    assert message.endswith(":3: server.port: Input should be a valid integer")


def test_port_out_of_range(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[server]\nport = 70000\n")
    assert ":2: server.port: Input should be less than or equal to 65535" in message


def test_empty_api_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\napi_keys = [\n  "a",\n  "",\n]\nlog_level = "loud"\n')
    assert ":2: server.api_keys[1]: String should have at least 1 character" in message


def test_bool_option_where_int_expected(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "[models.options]\nmax_queue = true\n")
    assert ":7: models[0].options.max_queue: Input should be a valid integer" in message


def test_bad_kind(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL.replace('"llm"', '"chat"'))
    assert ":3: models[0].kind: Input should be 'llm', 'embedding' or 'rerank'" in message


def test_bad_name(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL.replace('"m"', '"has space"'))
    assert ":2: models[0].name: String should match pattern" in message


def test_unknown_engine_lists_known(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL.replace('"transformers"', '"no-such-engine"'))
    assert ":4: models[0].engine: unknown engine 'no-such-engine'; known engines:" in message
    assert "sentence-transformers" in message and "transformers" in message


def test_engine_does_not_serve_kind(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL.replace('"transformers"', '"sentence-transformers"'))
    assert ":4: models[0].engine: engine 'sentence-transformers' cannot serve kind 'llm'" in message


def test_duplicate_model_names(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "\n" + MODEL)
    assert message.endswith(":8: models[1].name: duplicate model name 'm' (also models[0])")


def test_missing_required_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[server]\nport = 1\n\n" + MODEL.replace('source = "x"\n', ""))
    assert message.endswith(":4: models[0]: missing required key 'source'")


def test_bad_replicas(tmp_path: Path) -> None:
    message = error_of(tmp_path, MODEL + "replicas = 0\n")
    assert ":6: models[0].replicas: must be at least 1 (0 replicas needs an [models.autoscale] table" in message
    message = error_of(tmp_path, MODEL + "replicas = -1\n")
    assert ":6: models[0].replicas: Input should be greater than or equal to 0" in message


def test_autoscale_table(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(MODEL + "[models.autoscale]\nmin_replicas = 1\nmax_replicas = 3\ntarget_ttft_p90_s = 2.0\n")
    spec = load_settings(path).models[0]
    assert spec.autoscale is not None and spec.replicas == 1  # starts at min_replicas
    assert (spec.autoscale.max_replicas, spec.autoscale.target_ttft_p90_s, spec.autoscale.upscale_delay_s) == (3, 2.0, 5.0)
    message = error_of(tmp_path, MODEL + "[models.autoscale]\nmin_replicas = 2\nmax_replicas = 1\n")
    assert ":6: models[0].autoscale: Value error, max_replicas (1) is below min_replicas (2)" in message
    message = error_of(tmp_path, MODEL + "[models.autoscale]\nmax_replica = 3\n")
    assert ":7: unknown key 'max_replica' in models[0].autoscale (did you mean 'max_replicas'?)" in message
    message = error_of(tmp_path, MODEL + "[models.autoscale]\ntarget_in_flight = 0\n")
    assert ":7: models[0].autoscale.target_in_flight: Input should be greater than 0" in message
    message = error_of(tmp_path, MODEL + "replicas = 5\n[models.autoscale]\nmax_replicas = 3\n")
    assert ":6: models[0].replicas: must be within autoscale.min_replicas..max_replicas (0..3)" in message


def test_sampling_table(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(MODEL + "[models.sampling]\ntemperature = 0.2\ntop_p = 0.9\n")
    spec = load_settings(path).models[0]
    assert spec.sampling == SamplingDefaults(temperature=0.2, top_p=0.9)
    assert spec.sampling.pairs() == (("temperature", 0.2), ("top_p", 0.9))
    path.write_text(MODEL)
    assert load_settings(path).models[0].sampling.pairs() == ()
    message = error_of(tmp_path, MODEL + "[models.sampling]\ntemperature = 3.0\n")
    assert ":7: models[0].sampling.temperature: Input should be less than or equal to 2" in message
    message = error_of(tmp_path, MODEL + "[models.sampling]\ntop_p = 0\n")
    assert ":7: models[0].sampling.top_p: Input should be greater than 0" in message
    message = error_of(tmp_path, MODEL + "[models.sampling]\ntop_k = 40\n")
    assert ":7: unknown key 'top_k' in models[0].sampling" in message
    with pytest.raises(ConfigError, match="sampling.temperature"):
        validate_model_spec(ModelSpec(name="m", kind=ModelKind.LLM, engine="transformers", source="x",
                                      sampling=SamplingDefaults(temperature=-1.0)))


def test_models_not_array_of_tables(tmp_path: Path) -> None:
    message = error_of(tmp_path, "models = 3\n")
    assert ":1: models: must be an array of tables" in message


def test_multiline_string_does_not_confuse_locator(tmp_path: Path) -> None:
    text = MODEL.replace('source = "x"', 'source = """\nport = 1\n[server]\n"""') + "replicas = true\n"
    message = error_of(tmp_path, text)
    assert ":9: models[0].replicas: Input should be a valid integer" in message


def test_toml_syntax_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\nhost = "h"\nport = = 3\n')
    assert "invalid TOML" in message and "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_settings(path)


def test_validate_model_spec_accepts_valid() -> None:
    validate_model_spec(ModelSpec(name="m", kind=ModelKind.LLM, engine="transformers", source="x"))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (ModelSpec(name="", kind=ModelKind.LLM, engine="transformers", source="x"), "name:"),
        (ModelSpec(name="m", kind=ModelKind.LLM, engine="nope", source="x"), "unknown engine 'nope'"),
        (ModelSpec(name="m", kind=ModelKind.EMBEDDING, engine="transformers", source="x"), "cannot serve"),
        (ModelSpec(name="m", kind=ModelKind.LLM, engine="transformers", source="x", replicas=0), "replicas:"),
        (
            ModelSpec(name="m", kind=ModelKind.LLM, engine="transformers", source="x", options={"dtyp": "auto"}),
            "unknown key 'dtyp' in options (did you mean 'dtype'?)",
        ),
        (
            ModelSpec(name="m", kind=ModelKind.LLM, engine="transformers", source="x", options={"threads": 0}),
            "options.threads: Input should be greater than or equal to 1",
        ),
    ],
)
def test_validate_model_spec_rejects(spec: ModelSpec, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_model_spec(spec)
    message = str(info.value)
    assert message.startswith(f"model {spec.name!r}: ")
    assert needle in message
    assert ".toml" not in message


def test_protocols_are_checked(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, '[server]\nprotocols = ["openai"]\n')).server.protocols == ("openai",)
    assert ":2: server.protocols[0]: Input should be" in error_of(tmp_path, '[server]\nprotocols = ["gopher"]\n')
    assert "names a protocol twice" in error_of(tmp_path, '[server]\nprotocols = ["openai", "openai"]\n')
    assert "server.protocols: List should have at least 1 item" in error_of(tmp_path, "[server]\nprotocols = []\n")


def test_default_key_limits_table(tmp_path: Path) -> None:
    from corral.core.keys import Limits

    settings = load_settings(write(tmp_path, "[server.key_limits]\nrpm = 60\nbudget_tokens = 1000\nbudget_period = \"month\"\n"))
    assert settings.server.key_limits == Limits(rpm=60, budget_tokens=1000, budget_period="month")
    assert load_settings(write(tmp_path, "[server]\nport = 8080\n")).server.key_limits == Limits()
    assert "rpm" in error_of(tmp_path, "[server.key_limits]\nrpm = -1\n")
    assert "budget_period" in error_of(tmp_path, "[server.key_limits]\nbudget_period = \"week\"\n")
