"""Evaluation suites as the catalog holds them: built-in ones shipped here, a tenant's own stored
by the evaluation service (which validates and writes them) as JSONL artifacts.

Evaluation parses suites into items with checks; curation needs only a suite's prompts, to keep
them out of a dataset version's training data. Both read the stored bytes through `SuiteCatalog`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.common.errors import NotFound
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import EvalSuiteRow

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_suites"
BUILTIN_PREFIX = "builtin/"
#: created_at / updated_at of the built-in suites.
BUILTIN_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class StoredSuite:
    """One suite's identity and its JSONL, as stored."""

    id: str
    name: str
    builtin: bool
    sha256: str
    data: bytes
    #: None for a built-in suite.
    row: EvalSuiteRow | None = None


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))


class SuiteCatalog:
    """Reads suites: the built-in ones for every tenant, a tenant's own for that tenant only."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def stored(self, tenant: str, suite_id: str) -> StoredSuite:
        """The suite's JSONL (hash-checked) and identity; NOT_FOUND for anyone else's or no such suite."""
        if suite_id.startswith(BUILTIN_PREFIX):
            name = suite_id.removeprefix(BUILTIN_PREFIX)
            if name not in builtin_names():
                raise NotFound("suite", suite_id)
            data = (BUILTIN_DIR / f"{name}.jsonl").read_bytes()
            return StoredSuite(suite_id, name, True, hashlib.sha256(data).hexdigest(), data)
        with self.metadata.session() as session:
            row = session.get(EvalSuiteRow, suite_id)
            if row is None or row.tenant != tenant:
                raise NotFound("suite", suite_id)
            session.expunge(row)
        data = self.artifacts.for_tenant(tenant).read_bytes(row.artifact_key, expected_sha256=row.sha256)
        return StoredSuite(row.id, row.name, False, row.sha256, data, row)

    def prompts(self, tenant: str, suite_id: str, sha256: str = "") -> list[list[dict[str, str]]]:
        """Every item's messages (the suite was validated when it was stored); with `sha256`, the
        suite must still be the one that digest names."""
        suite = self.stored(tenant, suite_id)
        if sha256 and suite.sha256 != sha256:
            raise ValueError(f"evaluation suite {suite_id} changed since it was named (sha256 {suite.sha256[:12]}…)")
        return [json.loads(line)["messages"] for line in suite.data.decode("utf-8-sig").splitlines() if line.strip()]
