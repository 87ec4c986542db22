"""The ORM tables and the Alembic migrations describe one schema: a model change without its migration fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import Base


def _default_text(default: str | None) -> str | None:
    """A server default as SQL text without the quotes, parentheses and casts a dialect's reflection adds."""
    return None if default is None else re.sub(r"::[\w ]+$", "", default.strip("()")).strip("'\"")


def _defaults_differ(context, inspected_column, metadata_column, inspected, metadata, rendered) -> bool:
    # `server_default=""` comes back as `''` (SQLite) or `''::text` (PostgreSQL): the same default, which
    # Alembic's own comparison calls changed
    return _default_text(inspected) != _default_text(rendered)


def _differences(url: str) -> list:
    store = MetadataStore(url)
    try:
        assert store.migrate() == store.head_revision()
        with store.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": _defaults_differ}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        store.close()


def test_migrating_an_empty_sqlite_database_to_head_gives_exactly_the_orm_tables(tmp_path: Path) -> None:
    assert _differences(f"sqlite:///{tmp_path / 'metadata.db'}") == []


@pytest.mark.postgres
def test_migrating_an_empty_postgresql_schema_to_head_gives_exactly_the_orm_tables(postgres_url: str) -> None:
    assert _differences(postgres_url) == []
