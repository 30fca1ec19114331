"""What the SQL registry (``corral.registry.sql``) and the SQL state store
(``corral.state.sql``) share: one database URL, one engine, and the same failure handling.

- URLs: ``sqlite:///path`` and ``postgresql://`` (or ``postgres://``) map to the async
  drivers (aiosqlite, asyncpg); driver URLs (``postgresql+asyncpg://``) are taken as they
  are; anything else is a ``ConfigError`` raised at construction, before any I/O.
- ``safe_url``: the URL as the user wrote it, without the password, for messages and logs.
- PostgreSQL connections have a connect and a statement timeout and are pinged before
  use (a server restart leaves closed connections in the pool). SQLite runs in WAL mode
  and writers wait up to ``busy_timeout_ms`` for the file lock.
- ``open()`` creates the subclass's tables when missing, retrying the race with another
  process creating them at the same moment.
- Database and network failures become ``corral.core.errors.Unavailable`` whose message
  names ``safe_url`` and never the password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Column, MetaData, Table, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from corral.core.errors import ConfigError, Unavailable

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
_DRIVERS.update({name: name for name in list(_DRIVERS.values())})  # driver URLs are accepted as they are


def driver_url(url: str, what: str = "registry") -> URL:
    """``url`` with the async driver SQLAlchemy needs; ``ConfigError`` for anything else."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid {what} URL: {exc}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"unsupported {what} URL scheme {parsed.drivername!r}: use sqlite:///path or postgresql://user@host/db"
        )
    return parsed.set(drivername=driver)


def safe_url(url: str) -> str:
    """The URL as given, without its password (call after ``driver_url`` accepted it)."""
    given = make_url(url)
    return URL.create(
        given.drivername, given.username, None, given.host, given.port, given.database, given.query
    ).render_as_string(hide_password=False)


class SqlBase:
    """A SQLAlchemy async engine on one URL. Subclasses pass the ``MetaData`` holding their
    tables and set ``_what`` / ``_error_code`` for their messages."""

    connect_timeout = 5.0  # seconds to establish a PostgreSQL connection
    command_timeout = 10.0  # seconds for one PostgreSQL statement
    busy_timeout_ms = 5000  # SQLite: how long a writer waits for the file lock
    schema_attempts = 3  # CREATE TABLE races with other processes opening the same database
    _what = "registry"  # "invalid registry URL", "registry database ... unavailable"
    _error_code = "registry_unavailable"

    def __init__(self, url: str, metadata: MetaData) -> None:
        self._url = driver_url(url, self._what)
        self._password = self._url.password or ""
        self.safe_url = safe_url(url)  # for messages and logs
        self._metadata = metadata
        self._engine = self._create_engine()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name  # "sqlite" or "postgresql"

    async def open(self) -> None:
        """Create the tables if missing; harmless when they exist or another process creates them now."""
        with self._unavailable("create the schema"):
            for attempt in range(1, self.schema_attempts + 1):
                try:
                    async with self._engine.begin() as conn:
                        await conn.run_sync(self._metadata.create_all, checkfirst=True)
                    return
                except DBAPIError:
                    # Another process created the table between our check and our CREATE
                    # (PostgreSQL: duplicate table or pg_type unique violation; SQLite:
                    # "already exists"): the next checkfirst sees it.
                    if attempt == self.schema_attempts:
                        raise
                    await asyncio.sleep(0.05 * attempt)

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self._engine.dispose()

    # -- for subclasses --

    def _upsert(self, table: Table, key: Column[Any], values: dict[str, Any]) -> Insert:
        """``INSERT .. ON CONFLICT (key) DO UPDATE`` setting every other column of ``values``."""
        insert = postgresql_insert if self.dialect == "postgresql" else sqlite_insert
        statement = insert(table).values(**values)
        return statement.on_conflict_do_update(
            index_elements=[key],
            set_={name: statement.excluded[name] for name in values if name != key.name},
        )

    def _create_engine(self) -> AsyncEngine:
        if self._url.drivername.startswith("postgresql"):
            return create_async_engine(
                self._url,
                pool_pre_ping=True,  # replace connections a server restart has closed
                connect_args={"timeout": self.connect_timeout, "command_timeout": self.command_timeout},
            )
        engine = create_async_engine(self._url)
        busy_timeout_ms = self.busy_timeout_ms

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # with WAL, NORMAL syncs at checkpoints, not at every commit: still consistent
            # after a crash, and commits stop costing an fsync each
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.close()

        return engine

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        """Database and network failures become ``Unavailable`` (without the password)."""
        try:
            yield
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            message = f"{self._what} database {self.safe_url} unavailable: could not {action}: {self._describe(exc)}"
            raise Unavailable(message, code=self._error_code) from exc

    def _describe(self, exc: BaseException) -> str:
        original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"{type(original).__name__}: {text}"
