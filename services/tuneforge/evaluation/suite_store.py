"""Suites per tenant (JSONL in the artifact store, a row in the metadata store) and the built-in ones.

Built-in suites ship with the catalog (`catalog/builtin_suites/*.jsonl`) and are readable by every
tenant as `builtin/<name>`; a tenant's own suites are `suite-…` and invisible to other tenants.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from tuneforge.catalog.suites import BUILTIN_DIR, BUILTIN_EPOCH, BUILTIN_PREFIX, SuiteCatalog, builtin_names
from tuneforge.common.errors import InvalidArgument
from tuneforge.common.names import check_idempotency_key, check_resource_name, new_id
from tuneforge.evaluation.suites import Suite, parse_suite
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore, find_idempotent, newest_first_page
from tuneforge.store.tables import EvalSuiteRow, utcnow

MAX_SUITE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SuiteInfo:
    id: str
    name: str
    num_items: int
    category_counts: dict[str, int]
    builtin: bool
    sha256: str
    size_bytes: int
    created_at: datetime
    updated_at: datetime


def _builtin(name: str) -> tuple[SuiteInfo, Suite]:
    data = (BUILTIN_DIR / f"{name}.jsonl").read_bytes()
    suite = parse_suite(name, data)
    digest = hashlib.sha256(data).hexdigest()
    info = SuiteInfo(
        f"{BUILTIN_PREFIX}{name}", name, len(suite.items), suite.category_counts(), True, digest, len(data),
        BUILTIN_EPOCH, BUILTIN_EPOCH,
    )  # fmt: skip
    return info, suite


def _info(row: EvalSuiteRow) -> SuiteInfo:
    return SuiteInfo(
        row.id,
        row.name,
        row.num_items,
        json.loads(row.category_counts_json),
        False,
        row.sha256,
        row.size_bytes,
        row.created_at,
        row.updated_at,
    )


class SuiteStore:
    """Create, read and list suites for a tenant."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def create(self, tenant: str, name: str, data: bytes, idempotency_key: str = "") -> SuiteInfo:
        """Validates the whole JSONL (every bad line reported) and stores it; nothing is stored if any line is bad."""
        check_resource_name(name, "name")
        check_idempotency_key(idempotency_key)
        if len(data) > MAX_SUITE_BYTES:
            raise InvalidArgument.for_field("jsonl", f"is {len(data)} bytes; at most {MAX_SUITE_BYTES}")
        digest = hashlib.sha256(data).hexdigest()
        request_hash = hashlib.sha256(f"{name}\0{digest}".encode()).hexdigest()
        with self.metadata.session() as session:
            existing = find_idempotent(session, EvalSuiteRow, tenant, idempotency_key, request_hash, "suite")
            if existing is not None:
                return _info(existing)
        suite = parse_suite(name, data)
        suite_id = new_id("suite")
        key = f"suites/{suite_id}.jsonl"
        self.artifacts.for_tenant(tenant).write_bytes(key, data)
        now = utcnow()
        row = EvalSuiteRow(
            id=suite_id,
            tenant=tenant,
            name=name,
            num_items=len(suite.items),
            category_counts_json=json.dumps(suite.category_counts(), sort_keys=True),
            sha256=digest,
            size_bytes=len(data),
            artifact_key=key,
            idempotency_key=idempotency_key or None,
            request_hash=request_hash,
            created_at=now,
            updated_at=now,
        )
        with self.metadata.session() as session:
            session.add(row)
            session.flush()
            return _info(row)

    def get(self, tenant: str, suite_id: str) -> tuple[SuiteInfo, Suite]:
        """A built-in suite, or one of the caller's (NOT_FOUND for anyone else's)."""
        stored = SuiteCatalog(self.metadata, self.artifacts).stored(tenant, suite_id)
        if stored.row is None:
            return _builtin(stored.name)
        return _info(stored.row), parse_suite(stored.name, stored.data)

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[SuiteInfo], str]:
        """Built-in suites first (on the first page), then the caller's, newest first."""
        builtins = [] if page_token else [_builtin(name)[0] for name in builtin_names()]
        with self.metadata.session() as session:
            rows, token = newest_first_page(
                session, select(EvalSuiteRow).where(EvalSuiteRow.tenant == tenant), EvalSuiteRow, page_size, page_token
            )
            return builtins + [_info(r) for r in rows], token
