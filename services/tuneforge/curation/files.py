"""Uploaded raw files: tenant-scoped, content-hashed, idempotent, never visible half-written.

Each upload attempt writes to its own artifact key (`files/<file id>/<attempt>`) and only a finished
attempt that is still the current one for its row becomes the file's content, so concurrent or
restarted uploads with the same idempotency key cannot interleave their bytes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tuneforge.common.errors import FailedPrecondition, InvalidArgument
from tuneforge.common.names import check_idempotency_key, check_path_segment, new_id
from tuneforge.store.artifacts import ArtifactStore, ArtifactWriter
from tuneforge.store.metadata import MetadataStore, find_idempotent, newest_first_page, tenant_row
from tuneforge.store.tables import FileRow, utcnow

DATA_FORMATS = ("auto", "alpaca", "sharegpt", "openai_chat")
UPLOADING, READY = "uploading", "ready"


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file as the domain sees it."""

    id: str
    filename: str
    state: str
    data_format: str
    sha256: str | None
    size_bytes: int | None
    created_at: datetime
    updated_at: datetime


def _stored(row: FileRow) -> StoredFile:
    return StoredFile(
        row.id, row.filename, row.state, row.data_format, row.sha256, row.size_bytes, row.created_at, row.updated_at
    )


class Upload:
    """One upload attempt in progress; `finish()` makes it the file's content, `abort()` drops it."""

    def __init__(
        self,
        catalog: FileCatalog,
        tenant: str,
        file_id: str,
        attempt: str,
        writer: ArtifactWriter,
        keep_row_on_abort: bool,
    ) -> None:
        self.catalog = catalog
        self.tenant = tenant
        self.file_id = file_id
        self.attempt = attempt
        self.writer = writer
        self.keep_row_on_abort = keep_row_on_abort

    def write(self, chunk: bytes) -> None:
        self.writer.write(chunk)

    def finish(self) -> StoredFile:
        return self.catalog._finish(self)

    def abort(self) -> None:
        self.catalog._abort(self)


class FileCatalog:
    """The domain behind UploadFile / GetFile / ListFiles / DeleteFile."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore, max_upload_bytes: int) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.max_upload_bytes = max_upload_bytes

    def begin_upload(
        self,
        tenant: str,
        filename: str,
        data_format: str = "auto",
        idempotency_key: str = "",
        expected_sha256: str = "",
    ) -> StoredFile | Upload:
        """Validates the header; returns the stored file for a finished idempotent repeat, else an Upload."""
        check_path_segment(filename, "header.filename")
        check_idempotency_key(idempotency_key, "header.idempotency_key")
        if expected_sha256 and not _is_sha256(expected_sha256):
            raise InvalidArgument.for_field("header.expected_sha256", "must be 64 lower-case hex digits")
        request_hash = hashlib.sha256(json.dumps([filename, data_format, expected_sha256.lower()]).encode()).hexdigest()
        attempt = secrets.token_hex(8)
        now = utcnow()
        for _ in range(2):  # a concurrent insert with the same key loses the race once, then finds the row
            try:
                with self.metadata.session() as session:
                    row = find_idempotent(session, FileRow, tenant, idempotency_key, request_hash, "upload")
                    if row is not None:
                        if row.state == READY:
                            return _stored(row)
                        row.attempt, row.updated_at = attempt, now  # restart: this attempt supersedes the last
                        file_id = row.id
                    else:
                        file_id = new_id("file")
                        session.add(
                            FileRow(
                                id=file_id,
                                tenant=tenant,
                                filename=filename,
                                state=UPLOADING,
                                data_format=data_format,
                                artifact_key=f"files/{file_id}/{attempt}",
                                idempotency_key=idempotency_key or None,
                                request_hash=request_hash,
                                attempt=attempt,
                                created_at=now,
                                updated_at=now,
                            )
                        )
                break
            except IntegrityError:
                continue
        else:  # pragma: no cover - needs two lost races in a row
            raise FailedPrecondition(f"idempotency_key {idempotency_key!r} is being used by a concurrent upload")
        writer = self.artifacts.for_tenant(tenant).writer(
            f"files/{file_id}/{attempt}", max_bytes=self.max_upload_bytes, expected_sha256=expected_sha256 or None
        )
        return Upload(self, tenant, file_id, attempt, writer, keep_row_on_abort=bool(idempotency_key))

    def _finish(self, upload: Upload) -> StoredFile:
        digest = upload.writer.commit()
        key = f"files/{upload.file_id}/{upload.attempt}"
        with self.metadata.session() as session:
            row = session.get(FileRow, upload.file_id)
            if row is None or row.attempt != upload.attempt:
                superseded = True
            else:
                superseded = False
                row.state, row.sha256, row.size_bytes = READY, digest.sha256, digest.size_bytes
                row.artifact_key, row.updated_at = key, utcnow()
                stored = _stored(row)
        if superseded:
            self.artifacts.for_tenant(upload.tenant).delete(key)
            raise FailedPrecondition(
                f"upload of file {upload.file_id} was superseded by a newer upload with the same idempotency key"
            )
        return stored

    def _abort(self, upload: Upload) -> None:
        upload.writer.abort()
        if upload.keep_row_on_abort:
            return  # the client may restart with the same idempotency key
        with self.metadata.session() as session:
            row = session.get(FileRow, upload.file_id)
            if row is not None and row.attempt == upload.attempt and row.state == UPLOADING:
                session.delete(row)

    def _row(self, session, tenant: str, file_id: str, field: str = "file_id") -> FileRow:
        return tenant_row(session, FileRow, tenant, file_id, field, "file", "file")

    def get(self, tenant: str, file_id: str) -> StoredFile:
        with self.metadata.session() as session:
            return _stored(self._row(session, tenant, file_id))

    def local_path(self, tenant: str, file_id: str, field: str = "file_id") -> tuple[StoredFile, Path]:
        """A READY file and the path of its bytes (for the pipeline, which streams them)."""
        with self.metadata.session() as session:
            row = self._row(session, tenant, file_id, field)
            if row.state != READY:
                raise FailedPrecondition(f"{field}: file {file_id} is still uploading")
            return _stored(row), self.artifacts.for_tenant(tenant).path(row.artifact_key)

    def read(self, tenant: str, file_id: str) -> bytes:
        """The file's bytes, verified against its recorded hash."""
        with self.metadata.session() as session:
            row = self._row(session, tenant, file_id)
            if row.state != READY:
                raise FailedPrecondition(f"file {file_id} is still uploading")
            key, sha = row.artifact_key, row.sha256
        return self.artifacts.for_tenant(tenant).read_bytes(key, expected_sha256=sha)

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[StoredFile], str]:
        """One page of the tenant's files, newest first, and the token of the next page ('' at the end)."""
        with self.metadata.session() as session:
            rows, token = newest_first_page(
                session, select(FileRow).where(FileRow.tenant == tenant), FileRow, page_size, page_token
            )
            return [_stored(row) for row in rows], token

    def delete(self, tenant: str, file_id: str) -> None:
        with self.metadata.session() as session:
            row = self._row(session, tenant, file_id)
            key = row.artifact_key
            session.delete(row)
        self.artifacts.for_tenant(tenant).delete(key)


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())
