"""The inference engine as a Ray Serve application (one deployment per base model).

Each replica loads the base model once and holds an Engine (adapter slots, batching). Adapters are
Serve-multiplexed models keyed by their immutable version key, `tenant/adapter:version`: Serve
routes a request to a replica that already holds its adapter and keeps at most
`max_num_models_per_replica` per replica, unloading the least recently used (the engine's slot is
freed when Serve drops it). Requests arrive through a DeploymentHandle — from the platform's gRPC
and HTTP fronts, which authenticate the caller and resolve `model` in its tenant first — as
`handle.options(multiplexed_model_id=key, stream=True).generate.remote(payload)`, and stream back
the engine's events as dicts.

    serve run tuneforge.inference.serve_app:app   # settings from TUNEFORGE_* / TUNEFORGE_CONFIG
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from ray import serve

from tuneforge.common.logging import get_logger
from tuneforge.common.settings import load_settings
from tuneforge.inference.base_model import load_base_model
from tuneforge.inference.engine import Engine, Sampling
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.training.registry import AdapterRegistry

log = get_logger(__name__)

#: Adapters Serve keeps per replica (its multiplexing LRU), fixed when the deployment is defined: set
#: `TUNEFORGE_INFERENCE__MAX_ADAPTERS` in the replicas' environment (the RayService's runtime_env).
MAX_ADAPTERS = int(os.environ.get("TUNEFORGE_INFERENCE__MAX_ADAPTERS", "8"))


class _Resident:
    """What Serve's multiplexing LRU holds for one adapter; dropping it frees the engine's slot."""

    def __init__(self, engine: Engine, target: Target) -> None:
        self.engine = engine
        self.target = target

    def __del__(self) -> None:
        if self.target.adapter_key is not None:
            self.engine.evict(self.target.adapter_key)


@serve.deployment(name="tuneforge-inference", max_ongoing_requests=256, health_check_period_s=10)
class InferenceReplica:
    """One base model, many adapters; generation streams engine events."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        config = load_settings(None, **(settings or {}))
        inference = config.inference
        assert config.database_url is not None and config.artifact_root is not None
        resolver = ModelResolver(config.models.cache_dir, config.models.trust_remote_code)
        base = load_base_model(resolver, inference.base_model, inference.dtype, inference.device)
        self.engine = Engine(
            base.model,
            base.tokenizer,
            max_adapters=inference.max_adapters,
            max_rank=inference.max_rank,
            max_batch_size=inference.max_batch_size,
            batch_wait_s=inference.batch_wait_ms / 1000,
        )
        artifacts = ArtifactStore(config.artifact_root)
        self.frontend = InferenceFrontend(
            self.engine,
            base.name,
            base.template_hash,
            AdapterRegistry(MetadataStore(config.database_url), artifacts),
            artifacts,
            Limits(inference.max_prompt_tokens, inference.max_new_tokens, inference.max_concurrent_per_tenant),
        )
        log.info("serve_replica_ready", base_model=base.name)

    @serve.multiplexed(max_num_models_per_replica=MAX_ADAPTERS)
    async def adapter(self, key: str) -> _Resident:
        """Loads `tenant/adapter:version` (validated and hash-checked) into an engine slot."""
        tenant, _, ref = key.partition("/")
        target = await self.frontend.resolve(tenant, ref)
        if target.adapter_key is not None:
            await asyncio.to_thread(self.engine.load_adapter, target.adapter_key, target.directory)
        return _Resident(self.engine, target)

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streams the events of one request: `{tenant, prompt_ids, sampling}`, adapter from the model id."""
        key = serve.get_multiplexed_model_id()
        target = (await self.adapter(key)).target if key else Target(self.frontend.base_name, None, None)
        sampling = Sampling(
            **{**payload.get("sampling", {}), "stop": tuple(payload.get("sampling", {}).get("stop", ()))}
        )
        async for event in self.frontend.stream(payload["tenant"], target, list(payload["prompt_ids"]), sampling):
            yield {**asdict(event), "model": target.name}

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the generation thread died")


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`serve run tuneforge.inference.serve_app:app_builder settings='{…}'`, or the RayService config."""
    return InferenceReplica.bind(args.get("settings"))


app = InferenceReplica.bind()
