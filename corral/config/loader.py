"""Load ``corral.toml`` into ``Settings`` and validate model specs.

Every problem becomes a ``ConfigError`` that names the file, the line and the key, e.g.
``corral.toml:7: models[0].options.max_batch_size: Input should be greater than or equal to 1``.
``tomllib`` keeps no positions, so ``_locate`` scans the raw text for table headers and
``key =`` lines and maps key paths (``("models", 0, "options", "max_batch_size")``) to lines.
Only the first problem found (in document order) is reported.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.core.errors import ConfigError
from corral.core.spec import ROUTING_POLICIES, ModelKind, ModelSpec, ServerSettings, Settings
from corral.engines.catalog import get_entry

Key = str | int
KeyPath = tuple[Key, ...]
_M = TypeVar("_M", bound=BaseModel)

_NAME_PATTERN = r"^[A-Za-z0-9._:/-]+$"
_TOP_KEYS = ("server", "models")


class _ServerTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = ServerSettings.host
    port: int = Field(ServerSettings.port, ge=1, le=65535)
    api_keys: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    max_body_bytes: int = Field(ServerSettings.max_body_bytes, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    records: str | None = None
    capture_text: bool = False
    redact: list[str] = Field(default_factory=list)
    retention_days: float = Field(30.0, gt=0)


class _ModelTable(BaseModel):
    """A ``[[models]]`` table without its ``options`` (those follow the engine's schema)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, pattern=_NAME_PATTERN)
    kind: Literal["llm", "embedding", "rerank"]
    engine: str = Field(min_length=1)
    source: str = Field(min_length=1)
    replicas: int = Field(1, ge=1)
    routing: Literal[ROUTING_POLICIES] = "power_of_two"  # type: ignore[valid-type]
    weight: float = Field(1.0, gt=0)
    max_concurrency: int = Field(0, ge=0)


_MODEL_KEYS = (*_ModelTable.model_fields, "options")


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
    model = _validate(_ModelTable, {k: v for k, v in table.items() if k != "options"}, ())
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
    return ModelSpec(kind=kind, options=dict(options), **model.model_dump(exclude={"kind"}))


def validate_model_spec(spec: ModelSpec) -> None:
    """Run the per-model checks of the config loader on a spec not read from a file."""
    kind = spec.kind.value if isinstance(spec.kind, ModelKind) else spec.kind
    table = {"name": spec.name, "kind": kind, "engine": spec.engine, "source": spec.source}
    try:
        extra = {"routing": spec.routing, "weight": spec.weight, "max_concurrency": spec.max_concurrency}
        _check_model({**table, "replicas": spec.replicas, **extra, "options": spec.options})
    except _Problem as problem:
        text = _render(problem)
        raise ConfigError(f"model {spec.name!r}: {text}", param=_dotted(problem.path) or None) from None


def _check_document(data: Mapping[str, Any]) -> Settings:
    _check_keys(data, _TOP_KEYS, ())
    raw_server = data.get("server", {})
    if not isinstance(raw_server, Mapping):
        raise _Problem(("server",), "must be a table ([server])")
    server = _validate(_ServerTable, raw_server, ("server",))
    server_kwargs = server.model_dump(exclude_unset=True)
    if "api_keys" in server_kwargs:
        server_kwargs["api_keys"] = tuple(server_kwargs["api_keys"])
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
