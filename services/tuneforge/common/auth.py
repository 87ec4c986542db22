"""API keys → tenant and role.

The keys file is YAML (mounted from a Kubernetes Secret in clusters); store SHA-256 digests of keys
rather than the keys themselves (`tuneforge keys hash` prints one):

    keys:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        tenant: acme
        role: member        # member | admin
        name: ci-pipeline   # shown in logs, never the key
      - sha256: 4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a
        role: service       # another Tuneforge service; acts for the tenant it names per call
        name: evaluation

A `service` key belongs to no tenant: each call names the tenant it acts for in the
`x-tuneforge-tenant` metadata, and only the methods a service-to-service path needs accept it
(evaluation pods generating through the inference service). Tenants never get such keys.

The file is re-read when its content changes (a hash of it is compared at least once a second), so
rotated or revoked keys take effect without a restart. A file that becomes unreadable or invalid
fails closed: every key is refused, the log says why, and the server's health turns NOT_SERVING
until the file is fixed. At start an invalid file is refused outright.
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tuneforge.common.errors import PermissionDenied, Unauthenticated
from tuneforge.common.logging import get_logger
from tuneforge.common.names import RESOURCE_NAME

log = get_logger(__name__)

Role = Literal["member", "admin", "service"]

#: Metadata naming the tenant a `service` key acts for.
ON_BEHALF_HEADER = "x-tuneforge-tenant"
#: Methods a `service` key may call: the service-to-service paths of the design.
SERVICE_METHOD_PREFIXES = ("/tuneforge.v1.InferenceService/",)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every resource is scoped to, and the role."""

    tenant: str
    role: Role
    key_name: str


_current: ContextVar[Principal | None] = ContextVar("tuneforge_principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served (set by the auth interceptor)."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller in this context")
    return principal


def bind_principal(principal: Principal) -> object:
    """Makes `principal` the current caller; returns a token for `reset_principal`."""
    return _current.set(principal)


def reset_principal(token: object) -> None:
    """Restores the caller that was current before `bind_principal`."""
    _current.reset(token)  # type: ignore[arg-type]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored in the keys file."""
    return hashlib.sha256(key.encode()).hexdigest()


class _KeyEntry(BaseModel):
    model_config = {"extra": "forbid"}

    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    key: str | None = Field(default=None, min_length=16)
    tenant: str | None = Field(default=None, pattern=f"^{RESOURCE_NAME.pattern}$")
    role: Role = "member"
    name: str = ""

    @model_validator(mode="after")
    def _one_secret(self) -> _KeyEntry:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of 'sha256' (preferred) or 'key'")
        if (self.tenant is None) != (self.role == "service"):
            raise ValueError("a member or admin key names its 'tenant'; a service key names none")
        return self

    def digest(self) -> str:
        return self.sha256 or hash_key(self.key or "")


class _KeysFile(BaseModel):
    model_config = {"extra": "forbid"}

    keys: list[_KeyEntry]


class KeyResolver:
    """Maps a presented key to a Principal."""

    def resolve(self, key: str | None) -> Principal:  # pragma: no cover - interface
        raise NotImplementedError

    def refresh(self) -> str | None:
        """Re-checks the key source; returns why no key can be accepted now, or None when keys work."""
        return None


class LocalResolver(KeyResolver):
    """Single-tenant embedded mode: every caller is `tenant` with the admin role, key or not."""

    def __init__(self, tenant: str) -> None:
        self.principal = Principal(tenant=tenant, role="admin", key_name="local-mode")

    def resolve(self, key: str | None) -> Principal:
        return self.principal


class ApiKeyFile(KeyResolver):
    """Keys from a YAML file, re-read whenever its content changes; a broken file refuses every key."""

    #: Longest time between two reads of the file (its content is hashed: an edit that keeps the size and
    #: puts the modification time back is still seen).
    recheck_s = 1.0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._content_digest: str | None = None
        self._checked = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Principal] = {}
        #: Why no key is accepted now (file missing or invalid), or None.
        self.problem: str | None = None
        self._load()
        if self.problem is not None:
            raise ValueError(self.problem)  # at start: refuse to serve with a broken file

    def refresh(self) -> str | None:
        with self._lock:
            self._load()
            return self.problem

    def _load(self) -> None:
        """Reads and hashes the file; re-parses it only when its content changed. Called under the lock."""
        self._checked = time.monotonic()
        self._stamp = self._stat()
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            self._fail(None, f"API keys file {self.path} cannot be read: {exc.strerror}")
            return
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._content_digest:
            return
        try:
            table = self._parse(content)
        except ValueError as exc:
            self._fail(digest, str(exc))
            return
        self._by_digest, self._content_digest = table, digest
        if self.problem is not None:
            log.warning("api_keys_file_fixed", keys_file=str(self.path), keys=len(table))
        else:
            log.info("api_keys_file_loaded", keys_file=str(self.path), keys=len(table))
        self.problem = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _fail(self, digest: str | None, problem: str) -> None:
        """Fails closed: no key is accepted until the file is readable and valid again."""
        if problem != self.problem:
            log.error("api_keys_file_broken", problem=problem, detail="every API key is refused until it is fixed")
        self._by_digest, self._content_digest, self.problem = {}, digest, problem

    def _parse(self, content: bytes) -> dict[str, Principal]:
        try:
            raw = yaml.safe_load(content) or {}
            parsed = _KeysFile.model_validate(raw)
        except (yaml.YAMLError, ValidationError, UnicodeDecodeError) as exc:
            raise ValueError(f"API keys file {self.path} is invalid: {exc}") from exc
        table: dict[str, Principal] = {}
        for index, entry in enumerate(parsed.keys):
            digest = entry.digest()
            if digest in table:
                raise ValueError(f"API keys file {self.path}: keys[{index}] repeats an earlier key")
            table[digest] = Principal(entry.tenant or "", entry.role, entry.name or f"keys[{index}]")
        return table

    def resolve(self, key: str | None) -> Principal:
        if not key:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        if self._stat() != self._stamp or time.monotonic() - self._checked >= self.recheck_s:
            self.refresh()  # at once when the file visibly changed, else by content at least once a recheck_s
        if self.problem is not None:
            raise Unauthenticated("API keys cannot be checked now: the server's keys file is broken (see its log)")
        principal = self._by_digest.get(hash_key(key))
        if principal is None:
            raise Unauthenticated("unknown API key")
        return principal


def acting_principal(
    principal: Principal, method: str, metadata: tuple[tuple[str, str | bytes], ...] | None
) -> Principal:
    """The caller a call acts as: a `service` key becomes a member of the tenant its call names.

    Raises PermissionDenied for a service key outside the service-to-service methods or without a
    valid tenant, so a leaked service key cannot list or change anything.
    """
    if principal.role != "service":
        return principal
    if not method.startswith(SERVICE_METHOD_PREFIXES):
        raise PermissionDenied(f"service key {principal.key_name!r} may not call {method}")
    tenant = ""
    for name, value in metadata or ():
        if name.lower() == ON_BEHALF_HEADER:
            tenant = value.decode() if isinstance(value, bytes) else value
    if not RESOURCE_NAME.fullmatch(tenant):
        raise PermissionDenied(
            f"service key {principal.key_name!r} must name the tenant it acts for in '{ON_BEHALF_HEADER}' metadata"
        )
    return Principal(tenant=tenant, role="member", key_name=f"{principal.key_name} for {tenant}")


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The key from `authorization: Bearer <key>` metadata, or None."""
    for name, value in metadata or ():
        if name.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
