"""Load ``corral.toml`` into ``Settings`` and validate model specs.

Every problem becomes a ``ConfigError`` that names the file, the line and the key, e.g.
``corral.toml:7: models[0].options.max_batch_size: Input should be greater than or equal to 1``.
``tomllib`` keeps no positions, so ``_locate`` scans the raw text for table headers and
``key =`` lines and maps key paths (``("models", 0, "options", "max_batch_size")``) to lines.
Only the first problem found (in document order) is reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.core.errors import ConfigError
from corral.core.keys import Limits
from corral.core.spec import (
    PROTOCOLS, ROUTING_POLICIES, AutoscalePolicy, ModelKind, ModelSpec, Resources, SamplingDefaults, ServerSettings,
    Settings,
)
from corral.core.tls import TlsSettings
from corral.engines.catalog import get_entry

Key = str | int
KeyPath = tuple[Key, ...]
_M = TypeVar("_M", bound=BaseModel)

_NAME_PATTERN = r"^[A-Za-z0-9._:/-]+$"
_TOP_KEYS = ("server", "models")


class _KeyLimitsTable(BaseModel):
    """``[server.key_limits]``: the limits of every virtual key that sets none of its own."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rpm: int = Field(0, ge=0, le=10**12)
    tpm: int = Field(0, ge=0, le=10**12)
    max_concurrency: int = Field(0, ge=0, le=1_000_000)
    budget_tokens: int = Field(0, ge=0, le=10**12)
    budget_requests: int = Field(0, ge=0, le=10**12)
    budget_period: Literal["day", "month"] | None = None


class _ServerTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = ServerSettings.host
    protocols: list[Literal["openai", "anthropic", "ollama"]] = Field(default_factory=lambda: list(PROTOCOLS), min_length=1)
    port: int = Field(ServerSettings.port, ge=1, le=65535)
    api_keys: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    max_body_bytes: int = Field(ServerSettings.max_body_bytes, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    records: str | None = None
    capture_text: bool = False
    redact: list[str] = Field(default_factory=list)
    retention_days: float = Field(30.0, gt=0)
    records_max_mb: float = Field(ServerSettings.records_max_mb, ge=0)
    records_max_rows: int = Field(ServerSettings.records_max_rows, ge=0)
    records_sample: float = Field(ServerSettings.records_sample, gt=0, le=1)
    key_limits: _KeyLimitsTable | None = None
    # paths, relative to the working directory; whether the files are usable is checked
    # by the command that serves (corral.core.tls.check_tls), not by every reader of the file
    tls_cert: str | None = Field(None, min_length=1)
    tls_key: str | None = Field(None, min_length=1)
    tls_ca: str | None = Field(None, min_length=1)


class _ModelTable(BaseModel):
    """A ``[[models]]`` table without its ``options`` (those follow the engine's schema)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, pattern=_NAME_PATTERN)
    kind: Literal["llm", "embedding", "rerank"]
    engine: str = Field(min_length=1)
    source: str = Field(min_length=1)
    replicas: int | None = Field(None, ge=0)  # default 1; with autoscale, min_replicas
    routing: Literal[ROUTING_POLICIES] = "power_of_two"  # type: ignore[valid-type]
    weight: float = Field(1.0, gt=0)
    max_concurrency: int = Field(0, ge=0)


class AutoscaleTable(BaseModel):
    """``[models.autoscale]``, also the body of ``PUT /admin/v1/models/NAME/autoscale``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min_replicas: int = Field(AutoscalePolicy.min_replicas, ge=0, le=1024)
    max_replicas: int = Field(AutoscalePolicy.max_replicas, ge=1, le=1024)
    target_in_flight: float = Field(AutoscalePolicy.target_in_flight, gt=0, le=1e6, allow_inf_nan=False)
    upscale_delay_s: float = Field(AutoscalePolicy.upscale_delay_s, ge=0, le=86400, allow_inf_nan=False)
    downscale_delay_s: float = Field(AutoscalePolicy.downscale_delay_s, ge=0, le=86400, allow_inf_nan=False)
    downscale_to_zero_delay_s: float = Field(AutoscalePolicy.downscale_to_zero_delay_s, ge=0, le=30 * 86400, allow_inf_nan=False)
    target_ttft_p90_s: float | None = Field(None, gt=0, le=3600, allow_inf_nan=False)
    cold_start_timeout_s: float = Field(AutoscalePolicy.cold_start_timeout_s, gt=0, le=3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleTable:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self

    def policy(self) -> AutoscalePolicy:
        return AutoscalePolicy(**self.model_dump())


class SamplingTable(BaseModel):
    """``[models.sampling]``, also ``sampling`` in the admin API's deploy body: what the
    model samples with when a request leaves a parameter out."""

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)

    def defaults(self) -> SamplingDefaults:
        return SamplingDefaults(temperature=self.temperature, top_p=self.top_p)


# bounds of a resources request: generous for real machines, small enough that what is
# accepted is a number every launcher, JSON and Ray take
MAX_CPUS, MAX_GPUS, MAX_MEMORY_GB, MAX_CUSTOM = 4096.0, 256.0, 65536.0, 1e6
_RESOURCE_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
# names Ray keeps for itself: asking for them through ``custom`` would bypass the typed keys
_RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class ResourcesTable(BaseModel):
    """``[models.resources]``, also ``resources`` in the admin API's deploy body: what one
    instance reserves on its node when a launcher places workers by resources."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_cpus: float | None = Field(None, ge=0, le=MAX_CPUS, allow_inf_nan=False)
    num_gpus: float | None = Field(None, ge=0, le=MAX_GPUS, allow_inf_nan=False)
    memory_gb: float | None = Field(None, gt=0, le=MAX_MEMORY_GB, allow_inf_nan=False)
    custom: dict[str, Annotated[float, Field(gt=0, le=MAX_CUSTOM, allow_inf_nan=False)]] = Field(
        default_factory=dict, max_length=32
    )

    @field_validator("custom")
    @classmethod
    def _names(cls, custom: dict[str, float]) -> dict[str, float]:
        for name in custom:
            if not re.match(_RESOURCE_NAME, name):
                raise ValueError(f"{name[:80]!r} is not a resource name (a letter or _, then letters, digits, _ . : -)")
            if name in _RESERVED_RESOURCES or name.startswith("node:"):
                raise ValueError(f"{name!r} is one of Ray's own resources: use num_cpus, num_gpus or memory_gb")
        return custom

    def resources(self) -> Resources:
        return Resources(num_cpus=self.num_cpus, num_gpus=self.num_gpus, memory_gb=self.memory_gb,
                         custom=tuple(sorted(self.custom.items())))


_MODEL_KEYS = (*_ModelTable.model_fields, "options", "autoscale", "sampling", "resources")
_SUBTABLES = ("options", "autoscale", "sampling", "resources")


class _Problem(Exception):
    """One invalid key. ``unknown`` means ``path[-1]`` is not allowed where it stands and
    ``message`` is only a suggestion suffix; otherwise ``message`` describes the value."""

    def __init__(self, path: KeyPath, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.unknown = unknown


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _render(problem: _Problem) -> str:
    if not problem.unknown:
        return f"{_dotted(problem.path)}: {problem.message}" if problem.path else problem.message
    key, parent = problem.path[-1], problem.path[:-1]
    if not parent:
        return f"unknown top-level key {key!r}{problem.message}"
    where = "[server]" if parent == ("server",) else _dotted(parent)
    return f"unknown key {key!r} in {where}{problem.message}"


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], prefix: KeyPath) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(allowed)})"
            raise _Problem((*prefix, key), hint, unknown=True)


def _validate(model: type[_M], table: Mapping[str, Any], prefix: KeyPath) -> _M:
    """Validate ``table`` with ``model``; turn the first pydantic error into a ``_Problem``."""
    allowed = [*model.model_fields, *(f.alias for f in model.model_fields.values() if f.alias)]
    _check_keys(table, allowed, prefix)
    try:
        return model.model_validate(dict(table))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = (*prefix, *err["loc"])
        if err["type"] == "missing":
            raise _Problem(loc[:-1], f"missing required key {loc[-1]!r}") from None
        if err["type"] == "extra_forbidden":
            raise _Problem(loc, "", unknown=True) from None
        raise _Problem(loc, err["msg"]) from None


def _check_model(table: Mapping[str, Any]) -> ModelSpec:
    """All per-model checks on a raw table; paths in problems are relative to the model."""
    _check_keys(table, _MODEL_KEYS, ())
    model = _validate(_ModelTable, {k: v for k, v in table.items() if k not in _SUBTABLES}, ())
    autoscale = _check_autoscale(table.get("autoscale"))
    sampling = _check_sampling(table.get("sampling"))
    resources = _check_resources(table.get("resources"))
    replicas = _initial_replicas(model.replicas, autoscale)
    try:
        entry = get_entry(model.engine)
    except ConfigError as exc:
        raise _Problem(("engine",), exc.message) from None
    kind = ModelKind(model.kind)
    if kind not in entry.kinds:
        serves = ", ".join(sorted(k.value for k in entry.kinds))
        raise _Problem(("engine",), f"engine {entry.name!r} cannot serve kind {kind.value!r} (it serves: {serves})")
    options = table.get("options", {})
    if not isinstance(options, Mapping):
        raise _Problem(("options",), "must be a table")
    try:
        schema = entry.options_model()
    except Exception as exc:  # a third-party schema that fails to import
        raise _Problem(("engine",), f"cannot load the options schema of engine {entry.name!r}: {exc}") from None
    _validate(schema, options, ("options",))
    fields = model.model_dump(exclude={"kind", "replicas"})
    return ModelSpec(kind=kind, options=dict(options), replicas=replicas, autoscale=autoscale, sampling=sampling,
                     resources=resources, **fields)


def _check_resources(raw: Any) -> Resources | None:
    if raw is None:
        return None
    if isinstance(raw, Resources):  # a spec built in code, checked again
        raw = raw.as_dict()
    if not isinstance(raw, Mapping):
        raise _Problem(("resources",), "must be a table ([models.resources])")
    return _validate(ResourcesTable, raw, ("resources",)).resources()


def _check_sampling(raw: Any) -> SamplingDefaults:
    if raw is None:
        return SamplingDefaults()
    if isinstance(raw, SamplingDefaults):  # a spec built in code, checked again
        raw = {k: v for k, v in dataclasses.asdict(raw).items() if v is not None}
    if not isinstance(raw, Mapping):
        raise _Problem(("sampling",), "must be a table ([models.sampling])")
    return _validate(SamplingTable, raw, ("sampling",)).defaults()


def _check_autoscale(raw: Any) -> AutoscalePolicy | None:
    if raw is None:
        return None
    if isinstance(raw, AutoscalePolicy):  # a spec built in code, checked again
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, Mapping):
        raise _Problem(("autoscale",), "must be a table ([models.autoscale])")
    return _validate(AutoscaleTable, raw, ("autoscale",)).policy()


def _initial_replicas(replicas: int | None, autoscale: AutoscalePolicy | None) -> int:
    """Without a policy: 1 unless given (at least 1). With one: the autoscaler starts
    from ``replicas`` if given (within min..max), else from ``min_replicas``."""
    if autoscale is None:
        if replicas == 0:
            raise _Problem(("replicas",), "must be at least 1 (0 replicas needs an [models.autoscale] table with min_replicas = 0)")
        return 1 if replicas is None else replicas
    if replicas is None:
        return autoscale.min_replicas
    if not autoscale.min_replicas <= replicas <= autoscale.max_replicas:
        raise _Problem(
            ("replicas",),
            f"must be within autoscale.min_replicas..max_replicas ({autoscale.min_replicas}..{autoscale.max_replicas})",
        )
    return replicas


def validate_model_spec(spec: ModelSpec) -> None:
    """Run the per-model checks of the config loader on a spec not read from a file."""
    kind = spec.kind.value if isinstance(spec.kind, ModelKind) else spec.kind
    table = {"name": spec.name, "kind": kind, "engine": spec.engine, "source": spec.source}
    try:
        extra = {"routing": spec.routing, "weight": spec.weight, "max_concurrency": spec.max_concurrency}
        if spec.autoscale is not None:
            extra["autoscale"] = spec.autoscale
        extra["sampling"] = spec.sampling
        if spec.resources is not None:
            extra["resources"] = spec.resources
        _check_model({**table, "replicas": spec.replicas, **extra, "options": spec.options})
    except _Problem as problem:
        text = _render(problem)
        raise ConfigError(f"model {spec.name!r}: {text}", param=_dotted(problem.path) or None) from None


def _check_tls_keys(server: dict[str, Any]) -> TlsSettings:
    """``tls_cert``/``tls_key``/``tls_ca`` out of ``server`` as one ``TlsSettings``; a
    certificate without its key (or the reverse) is reported at the key given."""
    cert, key, ca = (server.pop(name, None) for name in ("tls_cert", "tls_key", "tls_ca"))
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if cert is not None else ("tls_key", "tls_cert")
        raise _Problem(("server", given),
                       f"needs {missing} too: a server presents a certificate and its private key together")
    return TlsSettings(cert=cert, key=key, ca=ca)


def _check_document(data: Mapping[str, Any]) -> Settings:
    _check_keys(data, _TOP_KEYS, ())
    raw_server = data.get("server", {})
    if not isinstance(raw_server, Mapping):
        raise _Problem(("server",), "must be a table ([server])")
    server = _validate(_ServerTable, raw_server, ("server",))
    server_kwargs = server.model_dump(exclude_unset=True)
    if "api_keys" in server_kwargs:
        server_kwargs["api_keys"] = tuple(server_kwargs["api_keys"])
    if server_kwargs.get("key_limits") is not None:
        server_kwargs["key_limits"] = Limits(**server_kwargs["key_limits"])
    else:
        server_kwargs.pop("key_limits", None)
    if "protocols" in server_kwargs:
        protocols = server_kwargs["protocols"]
        if len(set(protocols)) != len(protocols):
            raise _Problem(("server", "protocols"), "names a protocol twice")
        server_kwargs["protocols"] = tuple(protocols)
    server_kwargs["tls"] = _check_tls_keys(server_kwargs)
    if "redact" in server_kwargs:
        for i, pattern in enumerate(server_kwargs["redact"]):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _Problem(("server", "redact", i), f"not a regular expression: {exc}") from None
        server_kwargs["redact"] = tuple(server_kwargs["redact"])
    raw_models = data.get("models", [])
    if not isinstance(raw_models, list):
        raise _Problem(("models",), "must be an array of tables ([[models]])")
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(raw_models):
        prefix: KeyPath = ("models", index)
        if not isinstance(table, Mapping):
            raise _Problem(prefix, "must be a table ([[models]])")
        try:
            spec = _check_model(table)
        except _Problem as problem:
            raise _Problem((*prefix, *problem.path), problem.message, unknown=problem.unknown) from None
        if spec.name in seen:
            raise _Problem((*prefix, "name"), f"duplicate model name {spec.name!r} (also models[{seen[spec.name]}])")
        seen[spec.name] = index
        specs.append(spec)
    return Settings(server=ServerSettings(**server_kwargs), models=tuple(specs))


# ---------------------------------------------------------------------------- locator

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEYPATH = rf"{_PART}(?:\s*\.\s*{_PART})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_KEYPATH})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_KEYPATH})\s*\]")
_KEY_LINE = re.compile(rf"^\s*({_KEYPATH})\s*=")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEYPATH})\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_PART, text))


def _advance(text: str, depth: int, ml: str | None) -> tuple[int, str | None]:
    """Bracket depth and open multi-line string delimiter after ``text`` (strings and comments skipped)."""
    i, n = 0, len(text)
    while i < n:
        if ml is not None:
            end = text.find(ml, i)
            if end < 0:
                return depth, ml
            i, ml = end + 3, None
            continue
        c = text[i]
        if c == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            ml, i = text[i : i + 3], i + 3
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, ml


def _locate(text: str) -> dict[KeyPath, int]:
    """Map each table header and key path found in ``text`` to its first line (1-based).

    Array-of-tables entries get their index: the 2nd ``[[models]]`` is ``("models", 1)`` and
    a following ``[models.options]`` is ``("models", 1, "options")``. Keys of an inline table
    (``options = { a = 1 }``) map to the line of the key that holds it.
    """
    lines: dict[KeyPath, int] = {}
    arrays: dict[tuple[str, ...], int] = {}
    table: KeyPath = ()
    depth, ml = 0, None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if depth or ml is not None:
            depth, ml = _advance(line, depth, ml)
            continue
        array = _ARRAY_HEADER.match(line)
        header = array or _TABLE_HEADER.match(line)
        if header:
            parts = _split_key(header.group(1))
            if array:
                arrays[parts] = arrays.get(parts, -1) + 1
            path: list[Key] = []
            for k in range(len(parts)):
                path.append(parts[k])
                if parts[: k + 1] in arrays:
                    path.append(arrays[parts[: k + 1]])
            table = tuple(path)
            lines.setdefault(table, lineno)
            continue
        keyline = _KEY_LINE.match(line)
        if keyline is None:
            continue
        parts = _split_key(keyline.group(1))
        for k in range(1, len(parts) + 1):
            lines.setdefault((*table, *parts[:k]), lineno)
        value = line[keyline.end() :]
        if value.lstrip().startswith("{"):
            for inner in _INLINE_KEY.finditer(value):
                lines.setdefault((*table, *parts, *_split_key(inner.group(1))), lineno)
        depth, ml = _advance(value, 0, None)
    return lines


def _line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int:
    """Line of ``path``, else of its nearest enclosing key or table, else 1."""
    for k in range(len(path), 0, -1):
        if path[:k] in lines:
            return lines[path[:k]]
    return 1


def load_settings(path: Path) -> Settings:
    """Read, validate and convert a ``corral.toml``; raise ``ConfigError`` on any problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return _check_document(data)
    except _Problem as problem:
        line = _line_of(_locate(text), problem.path)
        message = _render(problem)
        raise ConfigError(f"{path}:{line}: {message}", param=_dotted(problem.path) or None) from None
