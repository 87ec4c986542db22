"""The metadata store: SQLAlchemy 2 over SQLite (embedded default, WAL) or PostgreSQL (clusters).

The schema is owned by Alembic migrations (`tuneforge/store/migrations`); `MetadataStore.migrate()`
brings any database to the head revision and is safe to run from several replicas at start-up on
PostgreSQL (Alembic runs each migration in a transaction).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Select, and_, create_engine, event, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tuneforge.common.names import check_resource_id
from tuneforge.store.artifacts import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _create_private(database: Path) -> None:
    """Creates the SQLite file owner-only before SQLite first opens it (its -wal and -shm take its mode).

    An existing file is never opened here: closing any descriptor of a file drops every POSIX lock
    this process holds on it, SQLite's included, and another process's last connection would then
    checkpoint and delete the WAL under this process's open connections (a corrupt database).
    """
    with suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
    if database.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
        os.chmod(database, PRIVATE_FILE_MODE)


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL and a busy timeout, their directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            database = Path(parsed.database).expanduser()
            database.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            _create_private(database)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    return create_engine(parsed, pool_pre_ping=True)


class MetadataStore:
    """Owns the engine and hands out transactional sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        return config

    def migrate(self) -> str:
        """Upgrades the schema to the newest migration; returns the revision now in force."""
        config = self._alembic_config()
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise Unavailable(f"metadata database {self.safe_url} is not reachable: {exc.orig}") from exc
        return self.current_revision()

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision this code knows."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return make_url(self.url).render_as_string(hide_password=True)

    def ping(self) -> None:
        """Raises Unavailable unless the database answers."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise Unavailable(f"metadata database {self.safe_url} is not reachable: {exc.orig}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


#: What a cursor in a page token may hold: names and ids, or non-negative integers (versions, offsets).
CursorValue = str | int
#: Largest integer a cursor may carry (a 64-bit column or file offset).
MAX_CURSOR_INT = 2**63 - 1
#: Longest page token accepted; ours are far shorter.
MAX_PAGE_TOKEN_CHARS = 4096


def encode_cursor(kind: str, *values: CursorValue) -> str:
    """An opaque page token for the list `kind`, after the row `values` name (its keyset position)."""
    text = json.dumps([kind, *values], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(
    token: str, kind: str, shape: tuple[type[str] | type[int], ...], field: str = "page_token"
) -> tuple[CursorValue, ...]:
    """The values in a token `encode_cursor(kind, ...)` made, checked against `shape` (their types).

    Everything else is INVALID_ARGUMENT naming `field`: bytes that are not such a token, a token of
    another list, values of the wrong type or out of range. A client can forge a well-formed token,
    but it only moves its own position in its own tenant's list.
    """
    refused = InvalidArgument.for_field(field, "is not a token returned by a previous call of this list; omit it")
    if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
        raise refused
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:  # binascii.Error, UnicodeDecodeError and JSONDecodeError included
        raise refused from exc
    if not isinstance(data, list) or len(data) != len(shape) + 1 or data[0] != kind:
        raise refused
    for value, expected in zip(data[1:], shape, strict=True):
        if expected is int:
            if type(value) is not int or not 0 <= value <= MAX_CURSOR_INT:
                raise refused
        elif type(value) is not str or "\0" in value or len(value) > 1024:
            raise refused
    return tuple(data[1:])


def encode_page_token(created_at: datetime, row_id: str, kind: str = "newest") -> str:
    """Opaque keyset cursor after the row (`created_at`, `id`) in newest-first order."""
    return encode_cursor(kind, created_at.astimezone(UTC).isoformat(), row_id)


def decode_page_token(token: str, field: str = "page_token", kind: str = "newest") -> tuple[datetime, str] | None:
    """The cursor in `token`, None for the first page; INVALID_ARGUMENT naming `field` if we did not make it."""
    if not token:
        return None
    created, row_id = decode_cursor(token, kind, (str, str), field)
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError as exc:
        raise InvalidArgument.for_field(field, "is not a token returned by a previous call of this list") from exc
    if when.tzinfo is None:  # ours always carry UTC; a naive time cannot be compared with stored ones
        raise InvalidArgument.for_field(
            field, "is not a token returned by a previous call of this list (no UTC offset)"
        )
    try:
        return when.astimezone(UTC), str(row_id)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise InvalidArgument.for_field(field, "is not a token returned by a previous call of this list") from exc


def page_size_of(requested: int, field: str = "page_size", default: int = 100, maximum: int = 1000) -> int:
    """The page size to use: `default` for 0, INVALID_ARGUMENT outside 0..maximum."""
    if requested < 0 or requested > maximum:
        raise InvalidArgument.for_field(field, f"must be between 0 and {maximum} (0 means {default})")
    return requested or default


def tenant_row(session: Any, table: type[T], tenant: str, resource_id: str, field: str, prefix: str, what: str) -> T:
    """The row `resource_id` of `table` when it is `tenant`'s; INVALID_ARGUMENT naming `field` for a malformed
    id, NOT_FOUND otherwise: another tenant's resource looks exactly like a missing one."""
    check_resource_id(resource_id, field, prefix)
    row = session.get(table, resource_id)
    if row is None or row.tenant != tenant:
        raise NotFound(what, resource_id)
    return row


def newest_first_page(
    session: Session, query: Select[Any], table: Any, page_size: int, page_token: str
) -> tuple[list[Any], str]:
    """One page of `query` over `table` (which has `created_at` and `id`), newest first, by keyset.

    Returns the rows and the token of the next page ('' on the last page). Rows created while a
    client pages never shift the pages it has not read yet.
    """
    size = page_size_of(page_size)
    kind = f"newest:{table.__tablename__}"  # a token of one list is refused by another
    cursor = decode_page_token(page_token, kind=kind)
    if cursor is not None:
        created, row_id = cursor
        query = query.where(or_(table.created_at < created, and_(table.created_at == created, table.id < row_id)))
    rows = list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(size + 1)))
    token = encode_page_token(rows[size - 1].created_at, rows[size - 1].id, kind) if len(rows) > size else ""
    return rows[:size], token


def find_idempotent(session: Session, table: Any, tenant: str, key: str, request_hash: str, what: str) -> Any:
    """The row an earlier create with this idempotency key made, or None.

    FAILED_PRECONDITION when that earlier create asked for something else: a key names one request.
    """
    if not key:
        return None
    row = session.scalars(select(table).where(table.tenant == tenant, table.idempotency_key == key)).one_or_none()
    if row is not None and row.request_hash != request_hash:
        raise FailedPrecondition(
            f"idempotency_key {key!r} was already used for a different {what} ({row.id}); use a new key"
        )
    return row
