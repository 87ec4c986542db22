"""The registry: tenant-scoped names, immutable numbered versions with lineage, movable aliases.

One mechanism for every kind of version a tenant can serve: a line (`name`) holds LoRA adapters
(`register`), whole models from full fine-tuning jobs (`register_model`) or models merged from an
adapter version (`register_merged`); all versions of a line are of one kind and one base model.
A version's files are copied into the artifact store (`adapters/<name>/<version>/`) with their
SHA-256, so serving can verify what it loads. Aliases (e.g. `prod`) move atomically in one row
update; a version an alias points to cannot be deleted. `resolve("name[:version|alias]")` is what
serving calls for every request.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneforge.common.names import check_resource_name
from tuneforge.models.merge import MODEL_FILE_SUFFIXES
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore, decode_cursor, encode_cursor, page_size_of
from tuneforge.store.tables import AdapterAliasRow, AdapterRow, AdapterVersionRow, utcnow

READY, DELETED = "ready", "deleted"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RESERVED_ALIASES = {"latest"}

#: Kinds of registry lines: a LoRA adapter (served on its base model), a whole model from a full
#: fine-tuning job, a whole model merged from an adapter version (both served by an engine of their own).
ADAPTER, FULL_FINE_TUNE, MERGED = "adapter", "full_fine_tune", "merged"
KINDS = (ADAPTER, FULL_FINE_TUNE, MERGED)
MODEL_KINDS = (FULL_FINE_TUNE, MERGED)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    base_model: str
    latest_version: int
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime
    #: When each alias last moved (a gated move's lineage record carries the same time).
    alias_moved_at: dict[str, datetime] = field(default_factory=dict)
    #: `adapter`, `full_fine_tune` or `merged` (every version of the line is of this kind).
    kind: str = ADAPTER


@dataclass(frozen=True)
class AdapterVersionInfo:
    adapter: str
    version: int
    state: str
    rank: int
    target_modules: list[str]
    lineage: dict[str, Any]
    metrics: dict[str, float]
    files: list[dict[str, Any]]
    artifact_key: str
    created_at: datetime
    updated_at: datetime
    #: `adapter`, `full_fine_tune` or `merged`: a model version (not an adapter) is a whole model.
    kind: str = ADAPTER

    @property
    def ref(self) -> str:
        return f"{self.adapter}:{self.version}"

    @property
    def is_model(self) -> bool:
        """A whole model (full fine-tune or merged), served by an engine of its own rather than in a slot."""
        return self.kind in MODEL_KINDS


def _version(row: AdapterVersionRow, kind: str = ADAPTER) -> AdapterVersionInfo:
    return AdapterVersionInfo(
        row.adapter,
        row.version,
        row.state,
        row.rank,
        json.loads(row.target_modules_json),
        json.loads(row.lineage_json),
        json.loads(row.metrics_json),
        json.loads(row.files_json),
        row.artifact_key,
        row.created_at,
        row.updated_at,
        kind,
    )


def _copy_hashed(source: Path, target: Path) -> dict[str, Any]:
    """Copies one file, hashing it on the way (model weights may be gigabytes: read once, in chunks)."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as reader, target.open("wb") as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    return {"name": source.name, "sha256": digest.hexdigest(), "size_bytes": size}


def model_files(directory: Path) -> list[Path]:
    """The files of a model directory the registry stores; FAILED_PRECONDITION when it is not a whole model.

    A model is its `config.json`, its safetensors weights (one file or shards with their index), its
    tokenizer and chat template files; anything else (optimizer state, pickled weights) is left out.
    """
    if not directory.is_dir():
        raise FailedPrecondition(f"model directory {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
    names = {p.name for p in files}
    if "config.json" not in names or not any(p.suffix == ".safetensors" for p in files):
        raise FailedPrecondition(
            f"{directory} is not a model directory: it needs config.json and safetensors weights "
            f"(found {', '.join(sorted(names)) or 'nothing'})"
        )
    return files


def check_alias(alias: str, field: str = "alias") -> str:
    check_resource_name(alias, field)
    if alias in RESERVED_ALIASES or alias.isdigit():
        raise InvalidArgument.for_field(field, f"{alias!r} is reserved: use a name that is not a number or 'latest'")
    return alias


#: Largest adapter version a reference may name (versions are 64-bit integers in the store).
MAX_VERSION = 2**63 - 1


def parse_ref(ref: str, field: str = "model") -> tuple[str, int | None, str | None]:
    """`name`, `name:7` or `name:prod` → (name, version, alias); a bare name means `latest`."""
    name, _, selector = ref.partition(":")
    check_resource_name(name, field)
    if not selector or selector == "latest":
        return name, None, None
    if selector.isascii() and selector.isdigit():
        if len(selector) > 18 or int(selector) > MAX_VERSION:  # a 64-bit column; checked before int() of a huge one
            raise InvalidArgument.for_field(field, f"version {selector[:40]} is out of range (1..{MAX_VERSION})")
        return name, int(selector), None
    check_resource_name(selector, field)
    return name, None, selector


class AdapterRegistry:
    """The domain behind AdapterService, and what training registers results with."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def register(
        self, tenant: str, name: str, source: Path, lineage: dict[str, Any], metrics: dict[str, float] | None = None
    ) -> AdapterVersionInfo:
        """Copies a PEFT adapter directory into the store as the next version of `name`."""
        check_resource_name(name, "adapter_name")
        config = json.loads((source / "adapter_config.json").read_text())
        base_model = str(lineage.get("base_model") or config.get("base_model_name_or_path") or "")
        target_modules = config.get("target_modules") or []
        return self._store(
            tenant,
            name,
            ADAPTER,
            [source / file_name for file_name in ADAPTER_FILES],
            {**lineage, "base_model": base_model},
            metrics,
            rank=int(config.get("r", 0)),
            target_modules=sorted(target_modules) if isinstance(target_modules, list) else [target_modules],
        )

    def register_model(
        self,
        tenant: str,
        name: str,
        source: Path,
        lineage: dict[str, Any],
        metrics: dict[str, float] | None = None,
        *,
        kind: str = FULL_FINE_TUNE,
    ) -> AdapterVersionInfo:
        """Copies a whole model directory (config, safetensors, tokenizer) into the store as the next version of `name`.

        `lineage` is the adapter's (`base_model`, `base_model_revision`, `template_hash`,
        `dataset_version_id`, `job_id`, `spec`): `base_model` names the model it was tuned from.
        """
        check_resource_name(name, "model_name")
        if kind not in MODEL_KINDS:
            raise InvalidArgument.for_field("kind", f"must be one of {', '.join(MODEL_KINDS)}")
        if not lineage.get("base_model"):
            raise InvalidArgument.for_field("lineage.base_model", "names the model this one was tuned from")
        return self._store(tenant, name, kind, model_files(source), dict(lineage), metrics)

    def register_merged(
        self,
        tenant: str,
        name: str,
        source_adapter_version: AdapterVersionInfo,
        directory: Path,
        metrics: dict[str, float] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> AdapterVersionInfo:
        """Registers `directory` (the adapter merged into its base) as the next version of model `name`.

        The version inherits the adapter version's lineage (base, template hash, dataset, job, spec)
        and records `source_adapter_version` (`adapter:version`); `lineage` adds keys of the merge's own
        (e.g. `dtype`). `metrics` default to the adapter's.
        """
        if source_adapter_version.kind != ADAPTER:
            raise FailedPrecondition(
                f"{source_adapter_version.ref} is a {source_adapter_version.kind} model, not an adapter"
            )
        inherited = {k: v for k, v in source_adapter_version.lineage.items() if k != "promotions"}
        record = {**inherited, **(lineage or {}), "source_adapter_version": source_adapter_version.ref}
        return self.register_model(
            tenant,
            name,
            directory,
            record,
            source_adapter_version.metrics if metrics is None else metrics,
            kind=MERGED,
        )

    def _store(
        self,
        tenant: str,
        name: str,
        kind: str,
        sources: list[Path],
        lineage: dict[str, Any],
        metrics: dict[str, float] | None,
        rank: int = 0,
        target_modules: list[str] | None = None,
    ) -> AdapterVersionInfo:
        """Copies `sources` into a new version of line `name` (created with `kind` when new) in one transaction."""
        base_model = str(lineage.get("base_model") or "")
        staging = self.artifacts.make_temp_dir(f"{kind}-{name}")
        try:
            files = [_copy_hashed(path, staging / path.name) for path in sources]
            now = utcnow()
            with self.metadata.session() as session:
                line = session.get(AdapterRow, (tenant, name), with_for_update=True)
                if line is None:
                    line = AdapterRow(
                        tenant=tenant,
                        name=name,
                        base_model=base_model,
                        kind=kind,
                        latest_version=0,
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(line)
                elif line.kind != kind:
                    raise FailedPrecondition(
                        f"{name!r} holds {line.kind} versions, not {kind} ones; register it under another name"
                    )
                elif line.base_model != base_model:
                    raise FailedPrecondition(
                        f"{name!r} holds versions for base model {line.base_model!r}, not {base_model!r}; "
                        "register it under another name"
                    )
                version = line.latest_version + 1
                key = f"adapters/{name}/{version}"
                self.artifacts.for_tenant(tenant).publish_dir(key, staging)
                line.latest_version, line.updated_at = version, now
                row = AdapterVersionRow(
                    tenant=tenant,
                    adapter=name,
                    version=version,
                    state=READY,
                    rank=rank,
                    target_modules_json=json.dumps(target_modules or []),
                    lineage_json=json.dumps(lineage, sort_keys=True),
                    metrics_json=json.dumps(metrics or {}),
                    files_json=json.dumps(files),
                    artifact_key=key,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                return _version(row, kind)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _adapter(self, session: Any, tenant: str, name: str) -> AdapterRow:
        check_resource_name(name, "adapter")
        row = session.get(AdapterRow, (tenant, name))
        if row is None:
            raise NotFound("adapter", name)
        return row

    def _info(self, session: Any, row: AdapterRow) -> AdapterInfo:
        rows = list(
            session.scalars(
                select(AdapterAliasRow).where(AdapterAliasRow.tenant == row.tenant, AdapterAliasRow.adapter == row.name)
            )
        )
        return AdapterInfo(
            row.name,
            row.base_model,
            row.latest_version,
            {a.alias: a.version for a in rows},
            row.created_at,
            row.updated_at,
            {a.alias: a.updated_at for a in rows},
            row.kind,
        )

    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        with self.metadata.session() as session:
            return self._info(session, self._adapter(session, tenant, name))

    def list_adapters(
        self, tenant: str, page_size: int = 0, page_token: str = "", kinds: tuple[str, ...] = (ADAPTER,)
    ) -> tuple[list[AdapterInfo], str]:
        """The tenant's lines of the given kinds (adapters only by default), by name."""
        size = page_size_of(page_size)
        query = select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.kind.in_(kinds))
        if page_token:
            query = query.where(AdapterRow.name > decode_cursor(page_token, "adapters", (str,))[0])
        with self.metadata.session() as session:
            rows = list(session.scalars(query.order_by(AdapterRow.name).limit(size + 1)))
            infos = [self._info(session, r) for r in rows[:size]]
        return infos, encode_cursor("adapters", rows[size - 1].name) if len(rows) > size else ""

    def get_version(
        self, tenant: str, name: str, version: int | None = None, alias: str | None = None
    ) -> AdapterVersionInfo:
        """A version by number, by alias, or the newest servable one."""
        with self.metadata.session() as session:
            adapter = self._adapter(session, tenant, name)
            if alias is not None:
                row = session.get(AdapterAliasRow, (tenant, name, alias))
                if row is None:
                    raise NotFound("adapter alias", f"{name}:{alias}")
                version = row.version
            if version is None:
                version = session.scalar(
                    select(func.max(AdapterVersionRow.version)).where(
                        AdapterVersionRow.tenant == tenant,
                        AdapterVersionRow.adapter == name,
                        AdapterVersionRow.state == READY,
                    )
                )
                if version is None:
                    raise NotFound("adapter version", f"{adapter.name}:latest")
            found = session.get(AdapterVersionRow, (tenant, name, version))
            if found is None or found.state != READY:
                raise NotFound("adapter version", f"{name}:{version}")
            return _version(found, adapter.kind)

    def find_by_job(self, tenant: str, name: str, job_id: str) -> AdapterVersionInfo | None:
        """The version a job registered, if it did (so a retried registration does not add another)."""
        return self.find_by_lineage(tenant, name, "job_id", job_id)

    def find_by_lineage(self, tenant: str, name: str, key: str, value: str) -> AdapterVersionInfo | None:
        """The version of `name` whose lineage has `key` = `value` (the job or export that registered it)."""
        with self.metadata.session() as session:
            line = session.get(AdapterRow, (tenant, name))
            rows = session.scalars(
                select(AdapterVersionRow).where(AdapterVersionRow.tenant == tenant, AdapterVersionRow.adapter == name)
            )
            for row in rows:
                if json.loads(row.lineage_json).get(key) == value:
                    return _version(row, line.kind if line is not None else ADAPTER)
        return None

    def resolve(self, tenant: str, ref: str, field: str = "model") -> AdapterVersionInfo:
        """`name[:version|alias]` → the version it names right now."""
        name, version, alias = parse_ref(ref, field)
        return self.get_version(tenant, name, version, alias)

    def list_versions(
        self, tenant: str, name: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AdapterVersionInfo], str]:
        size = page_size_of(page_size)
        query = select(AdapterVersionRow).where(
            AdapterVersionRow.tenant == tenant, AdapterVersionRow.adapter == name, AdapterVersionRow.state == READY
        )
        if page_token:
            (before,) = decode_cursor(page_token, "adapter-versions", (int,))
            query = query.where(AdapterVersionRow.version < before)
        with self.metadata.session() as session:
            kind = self._adapter(session, tenant, name).kind
            rows = list(session.scalars(query.order_by(AdapterVersionRow.version.desc()).limit(size + 1)))
        return [_version(r, kind) for r in rows[:size]], encode_cursor(
            "adapter-versions", rows[size - 1].version
        ) if len(rows) > size else ""

    def set_alias(
        self, tenant: str, name: str, alias: str, version: int, promotion: dict[str, Any] | None = None
    ) -> AdapterInfo:
        """Points `alias` at `version` in one update: new requests see the new version at once.

        `promotion` (a promotion gate's verdict, see `training/promotion.py`) is appended to the
        version's lineage under `promotions` in the same transaction, stamped `at` the alias's move.
        """
        check_alias(alias)
        now = utcnow()
        with self.metadata.session() as session:
            adapter = self._adapter(session, tenant, name)
            target = session.get(AdapterVersionRow, (tenant, name, version), with_for_update=promotion is not None)
            if target is None or target.state != READY:
                raise NotFound("adapter version", f"{name}:{version}")
            if promotion is not None:
                lineage = json.loads(target.lineage_json)
                lineage.setdefault("promotions", []).append({**promotion, "at": now.isoformat()})
                target.lineage_json = json.dumps(lineage, sort_keys=True)
            row = session.get(AdapterAliasRow, (tenant, name, alias))
            if row is None:
                session.add(AdapterAliasRow(tenant=tenant, adapter=name, alias=alias, version=version, updated_at=now))
            else:
                row.version, row.updated_at = version, now
            session.flush()
            return self._info(session, adapter)

    def delete_version(self, tenant: str, name: str, version: int) -> None:
        """Marks a version deleted and removes its files; refused while an alias points to it."""
        with self.metadata.session() as session:
            self._adapter(session, tenant, name)
            row = session.get(AdapterVersionRow, (tenant, name, version))
            if row is None or row.state != READY:
                raise NotFound("adapter version", f"{name}:{version}")
            pointing = [
                a.alias
                for a in session.scalars(
                    select(AdapterAliasRow).where(
                        AdapterAliasRow.tenant == tenant,
                        AdapterAliasRow.adapter == name,
                        AdapterAliasRow.version == version,
                    )
                )
            ]
            if pointing:
                raise FailedPrecondition(
                    f"{name}:{version} is what {', '.join(sorted(pointing))} point(s) to; move the alias first"
                )
            row.state, row.updated_at = DELETED, utcnow()
            key = row.artifact_key
        self.artifacts.for_tenant(tenant).delete_tree(key)
