"""The base model a replica serves, loaded once and shared by every request; model versions load the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.catalog.adapters import AdapterRegistry, AdapterVersionInfo
from tuneforge.common.errors import FailedPrecondition
from tuneforge.models import ModelResolver, ResolvedModel, template_hash
from tuneforge.store.artifacts import file_digest


@dataclass
class LoadedBaseModel:
    """A base model in memory with its tokenizer and the hash adapters are checked against."""

    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    template_hash: str

    @property
    def name(self) -> str:
        return self.resolved.name


def load_base_model(resolver: ModelResolver, name: str, dtype: str = "auto", device: str = "auto") -> LoadedBaseModel:
    """Resolves and loads `name` (blocking: call it from a worker thread)."""
    resolved = resolver.resolve(name, field="inference.base_model")
    tokenizer = resolver.load_tokenizer(resolved)
    model = resolver.load_model(resolved, dtype=dtype, device=device)
    return LoadedBaseModel(resolved, model, tokenizer, template_hash(tokenizer))


def load_model_version(
    resolver: ModelResolver, ref: str, directory: Path, dtype: str = "auto", device: str = "auto"
) -> LoadedBaseModel:
    """Loads a registered model version (full fine-tune, merged) from its stored directory (blocking).

    Its files were checked against the registry's hashes before this is called; a directory that
    still does not load (a truncated shard, a config transformers refuses) is FAILED_PRECONDITION
    naming the version, so the request fails and the replica goes on serving everything else.
    """
    resolved = ResolvedModel(ref, str(directory), True, False)  # registered models never run their own code
    try:
        tokenizer = resolver.load_tokenizer(resolved)
        model = resolver.load_model(resolved, dtype=dtype, device=device)
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"model version {ref} could not be loaded: {exc.message}") from exc
    except Exception as exc:  # safetensors and config errors come in many types
        raise FailedPrecondition(
            f"model version {ref} could not be loaded ({type(exc).__name__}: {str(exc)[:300]}); its stored files "
            "are damaged: register it again"
        ) from exc
    return LoadedBaseModel(resolved, model, tokenizer, template_hash(tokenizer))


def verify_files(version: AdapterVersionInfo, directory: Path) -> None:
    """FAILED_PRECONDITION unless every file of `version` is in `directory` with the hash the registry recorded."""
    what = "adapter" if not version.is_model else "model version"
    for entry in version.files:
        path = directory / entry["name"]
        if not path.is_file():
            raise FailedPrecondition(f"{version.ref}: file {entry['name']} is missing from the artifact store")
        if file_digest(path).sha256 != entry["sha256"]:
            raise FailedPrecondition(
                f"{version.ref}: file {entry['name']} does not match the hash the registry recorded "
                f"(corrupted); register the {what} again"
            )


def load_registered_model(
    registry: AdapterRegistry, resolver: ModelResolver, key: str, dtype: str = "auto", device: str = "auto"
) -> tuple[AdapterVersionInfo, LoadedBaseModel]:
    """The model version `tenant/name:version` from the registry, files checked, loaded (blocking).

    What a Serve replica of a model version's own application loads instead of the base model.
    """
    tenant, _, ref = key.partition("/")
    if not tenant or not ref:
        raise FailedPrecondition(f"inference.serve_model must be tenant/name:version, not {key!r}")
    version = registry.resolve(tenant, ref, "inference.serve_model")
    if not version.is_model:
        raise FailedPrecondition(f"{key} is an adapter, not a model version: it is served on its base model")
    directory = registry.artifacts.for_tenant(tenant).path(version.artifact_key)
    verify_files(version, directory)
    return version, load_model_version(resolver, version.ref, directory, dtype, device)
