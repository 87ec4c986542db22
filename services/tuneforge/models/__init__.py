"""Model resolution: hub ids and local paths as transformers resolves them, plus embedded models."""

from tuneforge.models.resolver import EMBEDDED_MODELS, ModelResolver, ResolvedModel, template_hash

__all__ = ["EMBEDDED_MODELS", "ModelResolver", "ResolvedModel", "template_hash"]
