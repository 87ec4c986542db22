"""Dataset versions: validated create requests, content addressing, background builds, reads.

A version is built in a separate worker process (`tuneforge.curation.worker`), so the CPU-heavy
pipeline never competes with the gRPC event loop; the worker reads its instructions from the
metadata row and publishes its files with one directory rename. The BuildRunner supervises the
builds: versions still PROCESSING when a service restarts are adopted (their worker still runs) or
built again, so none is lost and none is built twice; a build can be cancelled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
from sqlalchemy import select

from tuneforge.catalog.suites import SuiteCatalog
from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from tuneforge.common.names import check_idempotency_key, check_resource_id, check_resource_name
from tuneforge.curation.files import FileCatalog
from tuneforge.curation.formats import FORMATS
from tuneforge.curation.pipeline import CurationOptions, InputFile, version_id
from tuneforge.models import ModelResolver, template_hash
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.idempotency import create_idempotent
from tuneforge.store.metadata import (
    MetadataStore,
    decode_cursor,
    encode_cursor,
    find_idempotent,
    newest_first_page,
    page_size_of,
)
from tuneforge.store.tables import DatasetVersionRow, utcnow

PROCESSING, READY, FAILED, CANCELLED = "processing", "ready", "failed", "cancelled"


def leakage_options(leakage: dict[str, str]) -> dict[str, str]:
    """The keys a version's stored options carry for its leakage suite (none without one)."""
    return {"leakage_suite_id": leakage["id"], "leakage_suite_sha256": leakage["sha256"]} if leakage else {}


@dataclass(frozen=True)
class VersionSpec:
    """What a client asks to build."""

    dataset: str
    file_ids: tuple[str, ...]
    source_uri: str
    data_format: str
    base_model: str
    options: CurationOptions
    leakage_suite_id: str = ""
    #: Problems with the request's settings found while reading them (`parse_options`).
    option_problems: tuple[FieldViolation, ...] = ()

    def request_hash(self) -> str:
        payload = {**asdict(self), "options": self.options.canonical()}
        payload.pop("option_problems")
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    """A dataset version as the domain reports it."""

    id: str
    dataset: str
    state: str
    base_model: str
    data_format: str
    inputs: list[dict[str, str]]
    options: dict[str, Any]
    counts: dict[str, Any]
    template_hash: str
    failure_reason: str
    bytes_total: int
    bytes_processed: int
    created_at: datetime
    updated_at: datetime


def _info(row: DatasetVersionRow) -> VersionInfo:
    return VersionInfo(
        row.id,
        row.dataset,
        row.state,
        row.base_model,
        row.data_format,
        json.loads(row.inputs_json),
        json.loads(row.options_json),
        json.loads(row.counts_json),
        row.template_hash,
        row.failure_reason,
        row.bytes_total,
        row.bytes_processed,
        row.created_at,
        row.updated_at,
    )


def validate_spec(spec: VersionSpec, idempotency_key: str) -> None:
    """Checks every field at once; one InvalidArgument lists all problems."""
    problems: list[FieldViolation] = []

    def check(condition: bool, field: str, description: str) -> None:
        if not condition:
            problems.append(FieldViolation(field, description))

    for validator, value, field in (
        (check_resource_name, spec.dataset, "dataset"),
        (check_idempotency_key, idempotency_key, "idempotency_key"),
    ):
        try:
            validator(value, field)
        except InvalidArgument as exc:
            problems += exc.violations
    check(bool(spec.file_ids) or bool(spec.source_uri), "file_ids", "give at least one file id or a source_uri")
    for index, file_id in enumerate(spec.file_ids):
        try:
            check_resource_id(file_id, f"file_ids[{index}]", "file")
        except InvalidArgument as exc:
            problems += exc.violations
    check(len(set(spec.file_ids)) == len(spec.file_ids), "file_ids", "lists a file more than once")
    check(spec.data_format in ("auto", *FORMATS), "format", f"unknown format {spec.data_format!r}")
    check(bool(spec.base_model), "settings.base_model", "name the base model whose chat template renders the data")
    problems += spec.option_problems  # ranges and choices live in CurationOptions
    if problems:
        raise InvalidArgument(
            "invalid dataset version request: " + "; ".join(f"{p.field}: {p.description}" for p in problems), problems
        )


class DatasetVersions:
    """The domain behind the dataset-version calls of DatasetService."""

    def __init__(
        self,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        files: FileCatalog,
        models: ModelResolver,
        import_roots: list[Path],
        submit: Callable[[str, str], None],
        stop_build: Callable[[str, str], None] = lambda tenant, vid: None,
    ) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.files = files
        self.models = models
        self.import_roots = [Path(root).expanduser().resolve() for root in import_roots]
        self.submit = submit
        self.stop_build = stop_build
        self.tokenizer = lru_cache(maxsize=4)(self._load_tokenizer)
        self.template_hash = lru_cache(maxsize=4)(lambda base_model: template_hash(self.tokenizer(base_model)))

    def _load_tokenizer(self, base_model: str) -> Any:
        return self.models.load_tokenizer(self.models.resolve(base_model, field="settings.base_model"))

    def _source_path(self, uri: str) -> Path:
        if not self.import_roots:
            raise InvalidArgument.for_field(
                "source_uri", "this service reads no server-side paths (curation import_roots is empty); upload files"
            )
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file") or "\x00" in uri:
            raise InvalidArgument.for_field("source_uri", f"unsupported URI {uri!r}; use a path or file:// URI")
        raw = Path(parsed.path if parsed.scheme else uri)
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self.import_roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if any(resolved.is_relative_to(root) for root in self.import_roots) and resolved.is_file():
                return resolved
        raise InvalidArgument.for_field(
            "source_uri", f"{uri!r} is not a readable file under the configured import roots"
        )

    def _inputs(self, tenant: str, spec: VersionSpec) -> list[InputFile]:
        inputs = []
        for index, file_id in enumerate(spec.file_ids):
            stored, path = self.files.local_path(tenant, file_id, f"file_ids[{index}]")
            # the request's format overrides every file's; else a file keeps the format it was uploaded as
            data_format = stored.data_format if spec.data_format == "auto" else spec.data_format
            inputs.append(InputFile(stored.filename, path, stored.sha256 or "", data_format))
        if spec.source_uri:
            path = self._source_path(spec.source_uri)
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            inputs.append(InputFile(path.name, path, digest.hexdigest(), spec.data_format))
        return inputs

    def create(self, tenant: str, spec: VersionSpec, idempotency_key: str = "") -> VersionInfo:
        """Validates, computes the content address, and queues a build unless the version exists."""
        validate_spec(spec, idempotency_key)
        leakage = self._leakage_suite(tenant, spec.leakage_suite_id)
        request_hash = spec.request_hash()
        with self.metadata.session() as session:
            earlier = find_idempotent(
                session, DatasetVersionRow, tenant, idempotency_key, request_hash, "dataset version request"
            )
            if earlier is not None:
                return _info(earlier)
        inputs = self._inputs(tenant, spec)
        hashed_template = self.template_hash(spec.base_model)
        new_id = version_id(inputs, spec.options, hashed_template, leakage.get("sha256", ""), spec.dataset)
        now = utcnow()

        def insert(session: Any) -> tuple[VersionInfo, bool]:
            row = session.get(DatasetVersionRow, (tenant, new_id))
            if row is not None:
                return _info(row), False  # same input, same settings: the same version, not built twice
            row = DatasetVersionRow(
                tenant=tenant,
                id=new_id,
                dataset=spec.dataset,
                state=PROCESSING,
                base_model=spec.base_model,
                data_format=spec.data_format,
                inputs_json=json.dumps(
                    [
                        {
                            "file_id": fid,
                            "name": f.name,
                            "sha256": f.sha256,
                            "path": str(f.path),
                            "format": f.data_format,
                        }
                        for fid, f in zip([*spec.file_ids, spec.source_uri][: len(inputs)], inputs, strict=True)
                    ]
                ),
                options_json=json.dumps(
                    spec.options.canonical() | {"batch_size": spec.options.batch_size} | leakage_options(leakage)
                ),
                counts_json="{}",
                template_hash=hashed_template,
                failure_reason="",
                bytes_total=sum(os.path.getsize(f.path) for f in inputs),
                bytes_processed=0,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            return _info(row), True

        info, inserted = create_idempotent(
            self.metadata,
            DatasetVersionRow,
            tenant,
            idempotency_key,
            request_hash,
            "dataset version request",
            insert,
            lambda row: (_info(row), False),
        )
        if inserted:  # concurrent creates of one version build it once
            self.submit(tenant, new_id)
        return info

    def _leakage_suite(self, tenant: str, suite_id: str) -> dict[str, str]:
        """The evaluation suite whose prompts the build removes from training data (`{}` for none)."""
        if not suite_id:
            return {}
        try:
            suite = SuiteCatalog(self.metadata, self.artifacts).stored(tenant, suite_id)
        except NotFound as exc:
            raise InvalidArgument.for_field(
                "settings.leakage_suite_id", f"no suite {suite_id!r}: name one of yours or a built-in one"
            ) from exc
        return {"id": suite.id, "sha256": suite.sha256}

    def _row(self, session: Any, tenant: str, vid: str) -> DatasetVersionRow:
        check_resource_id(vid, "dataset_version_id", "dsv")
        row = session.get(DatasetVersionRow, (tenant, vid))
        if row is None:
            raise NotFound("dataset version", vid)
        return row

    def get(self, tenant: str, vid: str) -> VersionInfo:
        with self.metadata.session() as session:
            return _info(self._row(session, tenant, vid))

    def list(
        self, tenant: str, dataset: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[VersionInfo], str]:
        query = select(DatasetVersionRow).where(DatasetVersionRow.tenant == tenant)
        if dataset:
            query = query.where(DatasetVersionRow.dataset == check_resource_name(dataset, "dataset"))
        with self.metadata.session() as session:
            rows, token = newest_first_page(session, query, DatasetVersionRow, page_size, page_token)
            return [_info(r) for r in rows], token

    def cancel(self, tenant: str, vid: str, who: str) -> VersionInfo:
        """Makes a PROCESSING version CANCELLED and stops its build (its staging removed); returns it.

        FAILED_PRECONDITION for a version that is no longer being built.
        """
        with self.metadata.session() as session:
            row = self._row(session, tenant, vid)
            if row.state != PROCESSING:
                raise FailedPrecondition(
                    f"dataset version {vid} is {row.state}; only a version being built can be cancelled"
                )
            row.state = CANCELLED
            row.failure_reason = f"cancelled by {who}"
            row.updated_at = utcnow()
        self.stop_build(tenant, vid)
        return self.get(tenant, vid)

    def delete(self, tenant: str, vid: str) -> None:
        with self.metadata.session() as session:
            row = self._row(session, tenant, vid)
            if row.state == PROCESSING:
                raise FailedPrecondition(f"dataset version {vid} is still being built; delete it when it is done")
            session.delete(row)
        self.artifacts.for_tenant(tenant).delete_tree(f"datasets/{vid}")

    def _finished(self, tenant: str, vid: str) -> VersionInfo:
        info = self.get(tenant, vid)
        if info.state == PROCESSING:
            raise FailedPrecondition(f"dataset version {vid} is still being built")
        if info.state == CANCELLED:
            raise FailedPrecondition(f"dataset version {vid} was {info.failure_reason}; it has no report or records")
        return info

    def report(self, tenant: str, vid: str) -> tuple[VersionInfo, dict[str, Any], str]:
        """The version, its JSON report and its Markdown report."""
        info = self._finished(tenant, vid)
        artifacts = self.artifacts.for_tenant(tenant)
        report = json.loads(artifacts.read_bytes(f"datasets/{vid}/report.json"))
        markdown = artifacts.read_bytes(f"datasets/{vid}/report.md").decode()
        return info, report, markdown

    def issues(
        self, tenant: str, vid: str, code: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """Issues in input order, paged by position in the issues file."""
        size = page_size_of(page_size)
        start = int(decode_cursor(page_token, "dataset-issues", (int,))[0]) if page_token else 0
        self._finished(tenant, vid)
        path = self.artifacts.for_tenant(tenant).path(f"datasets/{vid}/issues.jsonl")
        page: list[dict[str, Any]] = []
        with path.open("rb") as handle:
            handle.seek(max(start - 1, 0))
            if start and handle.read(1) != b"\n":  # a token always points at the start of a line
                raise InvalidArgument.for_field("page_token", "is not a token returned by a previous call of this list")
            while len(page) < size:
                line = handle.readline()
                if not line:
                    return page, ""
                issue = json.loads(line)
                if not code or issue["code"] == code:
                    page.append(issue)
            position = handle.tell()
            more = bool(handle.readline())
        token = encode_cursor("dataset-issues", position) if more else ""
        return page, token

    def preview(self, tenant: str, vid: str, split: str = "train", limit: int = 0) -> list[dict[str, Any]]:
        """The first records of a split as training sees them: messages, decoded tokens, counts."""
        if split not in ("train", "validation"):
            raise InvalidArgument.for_field("split", "must be train or validation")
        if not 0 <= limit <= 50:
            raise InvalidArgument.for_field("limit", "must be between 0 and 50 (0 means 5)")
        info = self._finished(tenant, vid)
        if info.state != READY:
            raise FailedPrecondition(f"dataset version {vid} failed: {info.failure_reason}")
        path = self.artifacts.for_tenant(tenant).path(f"datasets/{vid}/{split}-00000.parquet")
        if not path.exists():
            return []
        table = next(pq.ParquetFile(path).iter_batches(batch_size=limit or 5), None)
        if table is None:
            return []
        tokenizer = self.tokenizer(info.base_model)
        rows = table.to_pylist()
        return [
            {
                "origin": row["origin"],
                "messages": json.loads(row["messages"]),
                "text": tokenizer.decode(row["input_ids"]),
                "num_tokens": row["num_tokens"],
                "num_loss_tokens": row["num_loss_tokens"],
            }
            for row in rows
        ]
