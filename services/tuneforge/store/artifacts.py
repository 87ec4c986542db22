"""The artifact store: files under one root directory, scoped per tenant, written atomically.

Layout: `<root>/tenants/<tenant>/<key>`, where `key` is a relative path of validated segments.
Writes go to `<root>/.tmp/` first and are renamed into place only once complete and fsynced, so a
reader never sees a partial artifact: an interrupted write (error, cancelled upload, killed process)
leaves at most a temp file, which `ArtifactStore.sweep_temp()` removes later.

Every artifact is the service user's alone: files 0600, directories 0700. A process that opens the
stores sets the umask once (`use_private_umask`), so its own writes, its curation workers and the
Ray head it starts (and so its training jobs) all create owner-only files; what is published into
the store is made owner-only as well, whatever created it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from tuneforge.common.logging import get_logger
from tuneforge.common.names import check_relative_path, check_resource_name

log = get_logger(__name__)

TEMP_DIR = ".tmp"
READ_CHUNK = 1 << 20
#: Permission bits no artifact has: group and others get nothing (files 0600, directories 0700).
PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def use_private_umask() -> None:
    """Sets this process's umask to PRIVATE_UMASK; children (workers, a local Ray head) inherit it."""
    os.umask(PRIVATE_UMASK)


def make_private(path: Path) -> None:
    """`path` and, for a directory, everything under it: files 0600 (0700 if executable), directories 0700."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        if item.is_dir():
            os.chmod(item, PRIVATE_DIR_MODE)
        else:
            executable = item.stat().st_mode & 0o100
            os.chmod(item, PRIVATE_DIR_MODE if executable else PRIVATE_FILE_MODE)


def private_dir(path: Path) -> Path:
    """`path` created if missing (with its parents) and made 0700.

    A directory this user does not own (a volume's mount point, say) keeps its mode, with a
    warning: what is created inside it is owner-only all the same.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, PRIVATE_DIR_MODE)
    except PermissionError:
        log.warning("artifact_dir_mode_kept", path=str(path), mode=oct(path.stat().st_mode & 0o777))
    return path


@dataclass(frozen=True)
class Digest:
    """SHA-256 and size of stored bytes."""

    sha256: str
    size_bytes: int


def file_digest(path: Path) -> Digest:
    """SHA-256 and size of a file, read in 1 MiB blocks (model weights may be gigabytes)."""
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
            size += len(block)
    return Digest(hasher.hexdigest(), size)


class ArtifactWriter:
    """One in-progress atomic write: `write()` chunks, then `commit()` or `abort()`."""

    def __init__(self, final_path: Path, temp_dir: Path, max_bytes: int | None, expected_sha256: str | None):
        self.final_path = final_path
        self.max_bytes = max_bytes
        self.expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        self._hash = hashlib.sha256()
        self._size = 0
        fd, temp_name = tempfile.mkstemp(dir=temp_dir, prefix="write-", suffix=".part")
        self.temp_path = Path(temp_name)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Appends bytes; RESOURCE_EXHAUSTED (and the write aborted) past `max_bytes`."""
        if self.max_bytes is not None and self._size + len(chunk) > self.max_bytes:
            self.abort()
            raise ResourceExhausted(f"artifact exceeds the limit of {self.max_bytes} bytes")
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self) -> Digest:
        """Makes the bytes visible under the final name, atomically; DATA_LOSS if the hash differs."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = Digest(self._hash.hexdigest(), self._size)
        if self.expected_sha256 and digest.sha256 != self.expected_sha256:
            self.abort()
            raise DataLoss(
                f"received {digest.size_bytes} bytes with sha256 {digest.sha256}, "
                f"but {self.expected_sha256} was expected; nothing was stored, upload again"
            )
        self.final_path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.temp_path, PRIVATE_FILE_MODE)  # mkstemp's mode already; said here, where it counts
        os.replace(self.temp_path, self.final_path)
        _fsync_dir(self.final_path.parent)
        self._done = True
        return digest

    def abort(self) -> None:
        """Discards the write; the final name is untouched."""
        if self._done:
            return
        self._done = True
        self._file.close()
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """The whole store; hand each request a `TenantArtifacts` from `for_tenant()`."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(Path(root).expanduser().resolve())
        self.temp_dir = private_dir(self.root / TEMP_DIR)

    def for_tenant(self, tenant: str) -> TenantArtifacts:
        """The part of the store that belongs to `tenant`; nothing outside it is reachable through it."""
        check_resource_name(tenant, "tenant")
        return TenantArtifacts(self, self.root / "tenants" / tenant)

    def make_temp_dir(self, prefix: str) -> Path:
        """A fresh directory under the store's temp area (same filesystem, so it can be published by rename)."""
        return Path(tempfile.mkdtemp(prefix=f"dir-{prefix}-", dir=self.temp_dir))

    def sweep_temp(self, older_than_s: float = 24 * 3600) -> int:
        """Removes temp files and directories of work that never finished (live work is younger)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in [*self.temp_dir.glob("write-*.part"), *self.temp_dir.glob("dir-*")]:
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class TenantArtifacts:
    """One tenant's artifacts. Keys are relative paths such as `files/file-ab12/data.jsonl`."""

    def __init__(self, store: ArtifactStore, base: Path) -> None:
        self._store = store
        self.base = base

    def path(self, key: str, field: str = "key") -> Path:
        """The absolute path of `key`; INVALID_ARGUMENT for any key that could leave the tenant's root."""
        check_relative_path(key, field)
        candidate = (self.base / key).resolve()
        if not candidate.is_relative_to(self.base.resolve()):
            raise InvalidArgument.for_field(field, f"{key!r} resolves outside the artifact root")
        return candidate

    def writer(self, key: str, *, max_bytes: int | None = None, expected_sha256: str | None = None) -> ArtifactWriter:
        """Starts an atomic write of `key` (replacing any previous content when committed)."""
        return ArtifactWriter(self.path(key), self._store.temp_dir, max_bytes, expected_sha256)

    def write_stream(self, key: str, chunks: Iterable[bytes], **limits: object) -> Digest:
        """Writes all `chunks` to `key` atomically and returns their digest."""
        with self.writer(key, **limits) as writer:  # type: ignore[arg-type]
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def write_bytes(self, key: str, data: bytes) -> Digest:
        """Writes `data` to `key` atomically."""
        return self.write_stream(key, [data])

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_chunks(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes of `key`, in chunks; NOT_FOUND if absent."""
        path = self.path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise NotFound("artifact", key) from exc
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def read_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        """The whole content of `key`; DATA_LOSS if it does not hash to `expected_sha256`."""
        data = b"".join(self.read_chunks(key))
        if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise DataLoss(f"artifact {key!r} does not match its recorded sha256; it was altered or damaged")
        return data

    def digest(self, key: str) -> Digest:
        """Hash and size of the stored bytes of `key`."""
        hasher = hashlib.sha256()
        size = 0
        for chunk in self.read_chunks(key):
            hasher.update(chunk)
            size += len(chunk)
        return Digest(hasher.hexdigest(), size)

    def publish_dir(self, key: str, directory: Path) -> None:
        """Moves a finished directory (from `make_temp_dir`) to `key` in one rename; replaces what was there."""
        target = self.path(key)
        target.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if target.exists():
            self.delete_tree(key)
        make_private(directory)
        for child in directory.rglob("*"):
            if child.is_file():
                with child.open("rb") as handle:
                    os.fsync(handle.fileno())
        os.replace(directory, target)
        _fsync_dir(target.parent)

    def delete_tree(self, key: str) -> bool:
        """Removes the directory `key` and everything in it; returns whether it existed."""
        target = self.path(key)
        if not target.is_dir():
            return False
        # rename first so a reader never sees a half-deleted directory under its real name
        doomed = Path(tempfile.mkdtemp(prefix="dir-deleting-", dir=self._store.temp_dir))
        os.replace(target, doomed / "gone")
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def delete(self, key: str) -> bool:
        """Removes `key`; returns whether it existed."""
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
