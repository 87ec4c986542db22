"""The gRPC/HTTP fronts in cluster mode: the same InferenceFrontend, with generation on Ray Serve.

With `inference.serve_app` set, the inference service loads no model itself: it renders prompts with
the base model's tokenizer, resolves `model` in the caller's tenant (NOT_FOUND, lineage checks and
limits exactly as in one process), and sends the request through the Serve application's
DeploymentHandle with the resolved version key as `multiplexed_model_id`, so Serve routes it to a
replica that already holds that adapter. The replica checks the adapter's files when it loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from typing import Any

from tuneforge.common.settings import Settings
from tuneforge.inference.engine import Event, Sampling
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target
from tuneforge.models import ModelResolver, template_hash
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.training.registry import AdapterRegistry

_EVENT_FIELDS = {f.name for f in fields(Event)}


class _RemoteEngine:
    """What the frontend needs of an engine when the engine runs in Serve replicas."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def has_adapter(self, key: str) -> bool:
        return True  # loading (and checking files) happens in the replica that gets the request

    def loaded(self) -> list[str]:
        return []


class ServeFrontend(InferenceFrontend):
    """InferenceFrontend whose requests run on a Ray Serve application."""

    def __init__(
        self,
        handle: Any,
        tokenizer: Any,
        base_name: str,
        registry: AdapterRegistry,
        artifacts: ArtifactStore,
        limits: Limits,
    ) -> None:
        super().__init__(_RemoteEngine(tokenizer), base_name, template_hash(tokenizer), registry, artifacts, limits)
        self.handle = handle

    async def stream(
        self, tenant: str, target: Target, prompt_ids: list[int], sampling: Sampling
    ) -> AsyncIterator[Event]:
        with self._slot_for(tenant):
            payload = {"tenant": tenant, "prompt_ids": prompt_ids, "sampling": asdict(sampling)}
            key = f"{tenant}/{target.name}" if target.adapter_key is not None else ""
            responses = self.handle.options(multiplexed_model_id=key, stream=True).generate.remote(payload)
            async for item in responses:
                event = Event(**{k: v for k, v in item.items() if k in _EVENT_FIELDS})
                yield event
                if event.finish_reason:
                    return

    async def sweep_deleted(self) -> int:
        return 0  # replicas drop adapters through Serve's multiplexing LRU


async def connect(
    settings: Settings, resolver: ModelResolver, registry: AdapterRegistry, artifacts: ArtifactStore
) -> ServeFrontend:
    """Joins the Ray cluster (unless this process already has) and returns the front for the Serve app."""
    import ray
    from ray import serve

    inference = settings.inference
    if not ray.is_initialized():
        await asyncio.to_thread(ray.init, address=inference.ray_address or "auto", log_to_driver=False)
    handle = await asyncio.to_thread(serve.get_app_handle, inference.serve_app)
    resolved = resolver.resolve(inference.base_model, field="inference.base_model")
    tokenizer = await asyncio.to_thread(resolver.load_tokenizer, resolved)
    limits = Limits(inference.max_prompt_tokens, inference.max_new_tokens, inference.max_concurrent_per_tenant)
    return ServeFrontend(handle, tokenizer, resolved.name, registry, artifacts, limits)
