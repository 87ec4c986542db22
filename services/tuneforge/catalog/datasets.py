"""Dataset versions as the services that consume them see them (curation owns and writes them).

Training checks a job's dataset version and mounts its directory; evaluation's leakage guard reads
its training prompts. Both go through `DatasetCatalog` instead of curation's rows and file layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow


@dataclass(frozen=True)
class DatasetVersionFacts:
    """What a consumer needs to know of a dataset version."""

    tenant: str
    id: str
    #: processing, ready, failed, cancelled.
    state: str
    #: The model whose chat template rendered it.
    base_model: str
    template_hash: str
    #: Longest sample, in tokens: rows of a job on it must hold at least this many.
    max_seq_len: int


class DatasetCatalog:
    """Read-only access to dataset versions for training and evaluation."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def get(self, tenant: str, version_id: str) -> DatasetVersionFacts | None:
        """The tenant's version `version_id`, or None (another tenant's versions do not exist here)."""
        with self.metadata.session() as session:
            row = session.get(DatasetVersionRow, (tenant, version_id))
            if row is None:
                return None
            return DatasetVersionFacts(
                tenant=row.tenant,
                id=row.id,
                state=row.state,
                base_model=row.base_model,
                template_hash=row.template_hash,
                max_seq_len=int(json.loads(row.options_json)["max_seq_len"]),
            )

    def directory(self, tenant: str, version_id: str) -> Path:
        """Where a READY version's shards are (what a training job reads)."""
        return self.artifacts.for_tenant(tenant).path(f"datasets/{version_id}")

    def training_conversations(self, tenant: str, version_id: str) -> Iterator[list[dict[str, str]]]:
        """The messages of every record in the version's training split."""
        import pyarrow.parquet as pq

        for shard in sorted(self.directory(tenant, version_id).glob("train-*.parquet")):
            for value in pq.read_table(shard, columns=["messages"]).column("messages").to_pylist():
                yield json.loads(value)
