"""The base model a replica serves, loaded once and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.models import ModelResolver, ResolvedModel, template_hash


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
