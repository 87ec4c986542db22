"""The inference engine as a Ray Serve application (one per base model or model version), reached over HTTP.

Each replica loads the base model once and holds an Engine (adapter slots, batching). Adapters are
Serve-multiplexed models keyed by their immutable version key, `tenant/adapter:version`: Serve's
proxy routes a request to a replica that already holds its adapter (the `serve_multiplexed_model_id`
header) and each replica keeps at most `inference.max_adapters`, unloading the least recently used
(the engine's slot is freed when Serve drops it).

The application's ingress is plain HTTP on Serve's own proxy (`wire.py` has the format): the
platform's gRPC and OpenAI fronts authenticate the caller, resolve `model` in its tenant and POST
`{tenant, prompt_ids, sampling, response_format?}` to `/generate` (the replica compiles a response format
into its engine's constraint); the answer streams back as NDJSON events. A replica
with `inference.serve_token` refuses requests without that bearer token, since Serve's proxy itself
authenticates nobody.

A model version (full fine-tune, merged model) the chart deploys gets an application of its own
(`inference.serve_model: tenant/name:version`): its replicas load that version from the registry
(files hash-checked) as their engine's base and serve its tenant only; adapters trained on the
original base are refused there (FAILED_PRECONDITION, as on any replica of another base).

Settings arrive as the application's args, so `serve deploy` of a changed config rolls the replicas
in place (secrets such as the database URL and the serve token stay in the pods' environment):

    serve run tuneforge.inference.serve_app:app_builder settings='{"inference": {"base_model": "…"}}'
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.common.errors import InvalidArgument, NotFound, TuneforgeError, Unauthenticated
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings, load_settings
from tuneforge.inference import wire
from tuneforge.inference.base_model import load_base_model, load_registered_model
from tuneforge.inference.engine import Engine, Event
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target, run_in
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore

log = get_logger(__name__)


class _Resident:
    """What Serve's multiplexing LRU holds for one adapter; dropping it frees the engine's slot."""

    def __init__(self, engine: Engine, target: Target) -> None:
        self.engine = engine
        self.target = target

    def __del__(self) -> None:
        if self.target.adapter_key is not None:
            self.engine.evict(self.target.adapter_key)


def _error(exc: TuneforgeError) -> JSONResponse:
    return JSONResponse(wire.error_body(exc), status_code=wire.HTTP_STATUS.get(exc.status, 500))


@serve.deployment(name="tuneforge-inference", max_ongoing_requests=256, health_check_period_s=10)
class InferenceReplica:
    """One base model, many adapters; `/generate` streams engine events, `/ready` says what it serves."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        config = load_settings(None, **(settings or {}))
        inference = config.inference
        assert config.database_url is not None and config.artifact_root is not None
        resolver = ModelResolver(config.models.cache_dir, config.models.trust_remote_code)
        artifacts = ArtifactStore(config.artifact_root)
        registry = AdapterRegistry(MetadataStore(config.database_url), artifacts)
        #: The tenant of the model version this replica serves (None: the base model, every tenant).
        self._model_tenant: str | None = None
        if inference.serve_model:
            _, base = load_registered_model(
                registry, resolver, inference.serve_model, inference.dtype, inference.device
            )
            self._model_tenant = inference.serve_model.partition("/")[0]
        else:
            base = load_base_model(resolver, inference.base_model, inference.dtype, inference.device)
        self.engine = Engine(
            base.model,
            base.tokenizer,
            max_adapters=inference.max_adapters,
            max_rank=inference.max_rank,
            targets=tuple(inference.lora_targets),
            max_batch_size=inference.max_batch_size,
            batch_wait_s=inference.batch_wait_ms / 1000,
            max_step_tokens=inference.max_step_tokens,
            kv_cache_tokens=inference.kv_cache_tokens or None,
            kv_memory_fraction=inference.kv_memory_fraction,
            host_cache_bytes=inference.adapter_host_cache_mb * 2**20,
        )
        self.frontend = InferenceFrontend(
            self.engine,
            base.name,
            base.template_hash,
            registry,
            artifacts,
            Limits(inference.max_prompt_tokens, inference.max_new_tokens, inference.max_concurrent_per_tenant),
        )
        token = inference.serve_token
        self._token = token.get_secret_value().encode() if token is not None else None
        if self._token is None:
            log.warning("serve_replica_unauthenticated", detail="inference.serve_token is unset: any caller is served")
        self._describe = {
            "base_model": base.name,
            "template_hash": base.template_hash,
            "model_version": inference.serve_model or "",
            "max_adapters": inference.max_adapters,
            "max_batch_size": inference.max_batch_size,
            "batch_wait_ms": inference.batch_wait_ms,
        }

        # Serve's multiplexing LRU, sized from the settings (a decorator on the class would fix it at import)
        async def load_adapter(key: str) -> _Resident:
            return await self._load_adapter(key)

        self.adapter = serve.multiplexed(max_num_models_per_replica=inference.max_adapters)(load_adapter)
        log.info("serve_replica_ready", base_model=base.name, max_adapters=inference.max_adapters)

    async def _load_adapter(self, key: str) -> _Resident:
        """Loads `tenant/adapter:version` (validated and hash-checked) into an engine slot."""
        tenant, _, ref = key.partition("/")
        target = await self.frontend.resolve(tenant, ref)
        if target.adapter_key is not None:
            await run_in(self.frontend.executors.loads, self.engine.load_adapter, target.adapter_key, target.directory)
        return _Resident(self.engine, target)

    def _check_token(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip().encode() if header.lower().startswith("bearer ") else b""
        if not hmac.compare_digest(given, self._token):
            raise Unauthenticated(
                "this Serve application needs `Authorization: Bearer <inference.serve_token>`; the request had "
                + ("another token" if given else "none")
            )

    async def __call__(self, request: Request) -> Response:
        """The HTTP ingress: `POST /generate` and `GET /ready` under the application's route prefix."""
        scope = request.scope
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        try:
            self._check_token(request)
            if path == wire.READY_PATH and request.method == "GET":
                return JSONResponse(self._describe)
            if path == wire.GENERATE_PATH and request.method == "POST":
                return await self._generate(request)
            raise NotFound("route", f"{request.method} {path}")
        except TuneforgeError as exc:
            return _error(exc)
        except Exception as exc:
            # ours, not the proxy's: the front does not retry it (a replica that died answers differently)
            log.exception("serve_request_failed", path=path)
            return _error(wire.ReplicaError("INTERNAL", f"the Serve replica failed the request: {type(exc).__name__}"))

    async def _generate(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument.for_field("body", f"is not JSON: {exc}") from exc
        tenant, prompt_ids, sampling = wire.parse_request(body)
        response_format = await run_in(self.frontend.executors.prompts, wire.response_format_of, body)
        if self._model_tenant is not None and tenant != self._model_tenant:
            raise NotFound("model", self.frontend.base_name)  # another tenant's model version
        key = serve.get_multiplexed_model_id()
        if key and key.partition("/")[0] != tenant:
            raise InvalidArgument.for_field(wire.MODEL_ID_HEADER, f"names another tenant's adapter than {tenant!r}")
        target = (await self.adapter(key)).target if key else Target(self.frontend.base_name, None, None)
        events = self.frontend.stream(tenant, target, prompt_ids, sampling, response_format)
        # the first event is awaited before the response starts, so every failure up to the first token
        # reaches the front as an HTTP status it can act on (and a request it may safely retry)
        first = await anext(events)
        return StreamingResponse(self._lines(first, events, target.name), media_type=wire.NDJSON)

    async def _lines(self, first: Event, events: AsyncIterator[Event], model: str) -> AsyncIterator[bytes]:
        yield wire.event_line(first, model)
        if first.finish_reason:
            return
        try:
            async for event in events:
                yield wire.event_line(event, model)
                if event.finish_reason:
                    return
        except TuneforgeError as exc:
            yield (json.dumps(wire.error_body(exc)) + "\n").encode()
        except Exception as exc:
            log.exception("serve_generation_failed", model=model)
            failure = wire.ReplicaError("INTERNAL", f"generation failed in the Serve replica: {type(exc).__name__}")
            yield (json.dumps(wire.error_body(failure)) + "\n").encode()

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the generation thread died")


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The application from its Serve args: `{"settings": {...}}`, the replicas' settings (the chart renders them).

    The settings are validated here, so a bad config fails `serve deploy` with the reason instead of
    every replica; the replicas get them as init args, so a changed config rolls them in place.
    """
    settings = args.get("settings") or {}
    if isinstance(settings, str):  # `serve run … settings='{…}'` passes its args as strings
        try:
            settings = json.loads(settings)
        except ValueError as exc:
            raise ValueError(f"the Serve application's args.settings is not JSON: {exc}") from exc
    if not isinstance(settings, dict):
        raise ValueError(f"the Serve application's args.settings must be a mapping of settings, not {settings!r}")
    validated: Settings = load_settings(None, **settings)
    log.info("serve_app_built", base_model=validated.inference.base_model)
    return InferenceReplica.bind(settings)
