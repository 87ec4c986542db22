"""Creates that an idempotency key makes safe to retry, also when the retries race each other.

A client that timed out retries with the same key while its first call may still be running. Both
find no row, both insert, and the unique `(tenant, idempotency_key)` constraint (or a content
address as primary key) refuses one of them: that loser starts a new transaction, in which the
winner's row is committed and found. So N concurrent creates with one key return one resource on
SQLite and PostgreSQL alike, and a key reused for a different request is FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneforge.common.logging import get_logger
from tuneforge.store.metadata import MetadataStore, find_idempotent

log = get_logger(__name__)

T = TypeVar("T")

#: Transactions one create may take: a lost race is followed by one that finds the winner's row; a
#: third covers a content-addressed row and a key row won by two different creates.
ATTEMPTS = 3


def create_idempotent(
    metadata: MetadataStore,
    table: Any,
    tenant: str,
    key: str,
    request_hash: str,
    what: str,
    create: Callable[[Session], T],
    found: Callable[[Any], T],
) -> T:
    """`found(row)` for the row an earlier create with `key` made, else `create(session)` in one transaction.

    Args:
        table: the mapped table, with `tenant`, `idempotency_key` and `request_hash` columns.
        what: the resource, for the FAILED_PRECONDITION a reused key gets ("job", "run", ...).
        create: adds the new row in `session` (or finds an equal one, for content-addressed rows) and
            returns the result; it runs again, in a new transaction, when its insert loses a race.
        found: the result for an existing row.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with metadata.session() as session:
                row = find_idempotent(session, table, tenant, key, request_hash, what)
                if row is not None:
                    return found(row)
                return create(session)  # committed when the block ends; a lost race raises there
        except IntegrityError:
            if attempt == ATTEMPTS:
                raise
            log.info("idempotent_create_retried", table=table.__tablename__, attempt=attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
