"""What the gRPC and HTTP APIs share: tenant-scoped model names, checks, limits, and the engine call.

A request names `adapter`, `adapter:<version>`, `adapter:<alias>` or the base model. The name is
resolved in the caller's tenant only (another tenant's adapter is NOT_FOUND, like a missing one)
when the request starts — so moving an alias takes effect for the next request, and a request in
flight keeps the version it resolved. Before an adapter touches the engine its lineage must match
the replica (same base model, same chat-template hash: else FAILED_PRECONDITION) and its files must
match the registry's SHA-256 (a corrupted or missing file is FAILED_PRECONDITION for that adapter
only; the replica keeps serving the others). Prompts are rendered with the same ChatRenderer as
training data. Per-tenant limits — prompt tokens, `max_tokens`, requests in flight — answer
RESOURCE_EXHAUSTED.

A model version (a full fine-tune or a merged model: a whole model, not an adapter) is served by an
engine of its own, loaded on demand into a bounded set (`model_engines.py`) after its files match
the registry's hashes; a corrupt directory is FAILED_PRECONDITION for that version only. Its prompts
are rendered with its own tokenizer and chat template. In a cluster each deployed model version has
a Serve application of its own and the front sends its requests there (`remote.py`).

Nothing blocking runs on the event loop: a prompt is measured in bytes first (one far over what
`max_prompt_tokens` could hold is INVALID_ARGUMENT before any tokenization), then rendered and
tokenized on a thread. Blocking work goes to bounded pools of its own kind (`FrontendExecutors`) so
that slow adapter loads or file hashing never take the threads registry reads need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from tuneforge.catalog.adapters import ADAPTER, MODEL_KINDS, AdapterRegistry, AdapterVersionInfo
from tuneforge.chat import ChatRenderer
from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tuneforge.common.logging import get_logger
from tuneforge.inference.base_model import verify_files
from tuneforge.inference.engine import Engine, Event, Request, Sampling
from tuneforge.inference.model_engines import ModelEngines, ServedModel
from tuneforge.inference.structured import (
    GRAMMARS,
    TEXT,
    JsonConstraint,
    ResponseFormat,
    response_format,
    stop_token_ids,
)
from tuneforge.store.artifacts import ArtifactStore

log = get_logger(__name__)

T = TypeVar("T")
ROLES = ("system", "user", "assistant")
#: Bytes of message text one prompt token may stand for, at most, in the cheap size check that runs
#: before tokenization: real text averages 3-5 bytes a token, so only a prompt that could never fit
#: is refused unread.
BYTES_PER_TOKEN_BOUND = 16


def _same_time(stamp: str, moved: datetime) -> bool:
    """Whether an ISO time written into a lineage record is `moved` (as the store read it back)."""
    try:
        return abs((datetime.fromisoformat(stamp) - moved).total_seconds()) < 0.001
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class ModelEntry:
    """One model a tenant can name: the base model, a line's latest version (adapter or model) or an alias."""

    name: str
    is_base: bool
    version: int = 0  # an alias's version; 0 for the others
    promotion: dict[str, Any] | None = None  # the newest gated move of the alias to `version` (lineage record)
    kind: str = ""  # `adapter`, `full_fine_tune`, `merged`; "" for the base model
    loaded: bool = False  # held in memory now (the base model always is)
    base_model: str = ""  # the model it runs on or was tuned from; "" means this replica's base


@dataclass(frozen=True)
class Limits:
    """Per-request and per-tenant limits of a replica."""

    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    max_concurrent_per_tenant: int = 16
    max_messages: int = 256

    @property
    def max_prompt_bytes(self) -> int:
        """Bytes of message text above which a prompt is refused before it is tokenized."""
        return self.max_prompt_tokens * BYTES_PER_TOKEN_BOUND


def _pool(threads: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"tuneforge-inference-{name}")


@dataclass
class FrontendExecutors:
    """Bounded thread pools, one per kind of blocking work, so no kind can starve another.

    `metadata`: registry reads (quick, many); `prompts`: chat rendering and tokenization; `files`:
    hashing adapter files; `loads`: reading adapters and copying them to the device; `model_loads`:
    whole model versions (hashing gigabytes, then loading), one at a time, so a cold model version
    never holds up an adapter's load.
    """

    metadata: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(8, "metadata"))
    prompts: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "prompts"))
    files: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(2, "files"))
    loads: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(2, "loads"))
    model_loads: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(1, "model-loads"))

    def shutdown(self) -> None:
        for pool in (self.metadata, self.prompts, self.files, self.loads, self.model_loads):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_in(pool: concurrent.futures.Executor, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on a thread of `pool`, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args))


async def _pinned_result(load: concurrent.futures.Future[T], release: Callable[[], None]) -> T:
    """What a load that pins its result returns; a caller gone before it ends leaves nothing pinned:
    `release` runs once the load has succeeded."""
    try:
        return await asyncio.wrap_future(load)
    except asyncio.CancelledError:

        def unpin(done: concurrent.futures.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                release()

        load.add_done_callback(unpin)
        raise


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to."""

    name: str  # exact: `base` id, or `adapter:version`
    adapter_key: str | None
    version: AdapterVersionInfo | None
    directory: Path | None = None
    #: A model version's key (`tenant/name:version`): served by an engine of its own, not in a slot.
    model_key: str | None = None
    #: The model version's own chat template (None: the base model's).
    renderer: ChatRenderer | None = None
    #: Cluster mode: the URL of the Serve application that serves the model version.
    route: str = ""
    #: The adapter's files were hash-checked while resolving (a load right after need not check them again).
    verified: bool = False


class InferenceFrontend:
    """Tenancy, validation and limits in front of one Engine."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        template_hash: str,
        registry: AdapterRegistry,
        artifacts: ArtifactStore,
        limits: Limits | None = None,
        model_loader: Callable[[str, AdapterVersionInfo, Path], ServedModel] | None = None,
        max_model_engines: int = 2,
    ) -> None:
        self.engine = engine
        self.base_name = base_name
        self.template_hash = template_hash
        self.registry = registry
        self.artifacts = artifacts
        self.limits = limits or Limits()
        self.renderer = ChatRenderer(engine.tokenizer)
        self.executors = FrontendExecutors()
        self._in_flight: dict[str, int] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        #: Builds a model version's engine (blocking); None: this replica serves no model versions.
        self.model_loader = model_loader
        self.models = ModelEngines(max_model_engines) if model_loader is not None else None

    def close(self) -> None:
        """Stops the frontend's thread pools (work not yet started is dropped)."""
        self.executors.shutdown()

    def stop_models(self) -> None:
        """Stops the model version engines (blocking: joins their threads)."""
        if self.models is not None:
            self.models.stop()

    # -- models --------------------------------------------------------------------------------

    async def resolve(self, tenant: str, model: str, field: str = "model") -> Target:
        """The base model or the caller's adapter version `model` names, loaded and ready."""
        if not model or model == self.base_name:
            return Target(self.base_name, None, None)
        version = await run_in(self.executors.metadata, self.registry.resolve, tenant, model, field)
        directory = self.artifacts.for_tenant(tenant).path(version.artifact_key)
        if version.is_model:
            return await self.resolve_model(tenant, version, directory)
        self.check_lineage(version)
        key = f"{tenant}/{version.ref}"
        verified = False
        if not self.engine.decoded(key):  # resident, or decoded in host memory: its files were checked then
            lock = self._loading.setdefault(key, asyncio.Lock())
            async with lock:  # files checked once per load, however many requests wait for it
                if not self.engine.decoded(key):
                    await run_in(self.executors.files, self._verify_files, version, directory)
                    verified = True
        return Target(version.ref, key, version, directory, verified=verified)

    async def resolve_model(self, tenant: str, version: AdapterVersionInfo, directory: Path) -> Target:
        """A model version's target, its engine loaded (files hash-checked first) so a bad one fails here."""
        if self.models is None:
            raise FailedPrecondition(
                f"{version.ref} is a model version ({version.kind}); this replica serves {self.base_name!r} and its "
                "adapters only: a model version is served by an engine of its own"
            )
        target = Target(version.ref, None, version, directory, model_key=f"{tenant}/{version.ref}")
        served = await self._acquire_model(target)
        self.models.release(served.key)
        return Target(version.ref, None, version, directory, model_key=served.key, renderer=served.renderer)

    def _build_model(self, key: str, version: AdapterVersionInfo, directory: Path) -> ServedModel:
        assert self.model_loader is not None
        self._verify_files(version, directory)
        return self.model_loader(key, version, directory)

    async def _acquire_model(self, target: Target) -> ServedModel:
        """The target's model engine, loaded if needed and pinned until `models.release` (see `_pin`)."""
        assert self.models is not None and target.model_key is not None and target.version is not None
        models, key, version, directory = self.models, target.model_key, target.version, target.directory
        served = models.pin_if_loaded(key)
        if served is not None:
            return served
        assert directory is not None
        build = functools.partial(self._build_model, key, version, directory)
        load = self.executors.model_loads.submit(models.acquire, key, build)
        return await _pinned_result(load, functools.partial(models.release, key))

    def check_lineage(self, version: AdapterVersionInfo) -> None:
        """FAILED_PRECONDITION unless the adapter was trained on this replica's base model and template."""
        lineage = version.lineage
        if lineage.get("base_model") != self.base_name:
            raise FailedPrecondition(
                f"{version.ref} was trained on {lineage.get('base_model')!r}; this replica serves {self.base_name!r}"
            )
        if lineage.get("template_hash") and lineage["template_hash"] != self.template_hash:
            raise FailedPrecondition(
                f"{version.ref} was trained with another tokenizer or chat template than this replica's "
                f"{self.base_name!r}; retrain it on a dataset version rendered for this model"
            )

    @staticmethod
    def _verify_files(version: AdapterVersionInfo, directory: Path) -> None:
        verify_files(version, directory)

    async def model_entries(self, tenant: str) -> list[ModelEntry]:
        """What ListModels shows: the base model, each adapter and model version line (its latest version) and
        each alias, with its kind, whether it is loaded and, per alias, its version and how a gate let it move there.
        """
        entries = [ModelEntry(self.base_name, True, loaded=True)]
        for kinds in ((ADAPTER,), MODEL_KINDS):
            token = ""
            while True:
                page, token = await run_in(
                    self.executors.metadata, self.registry.list_adapters, tenant, 1000, token, kinds
                )
                for line in page:
                    entries += await self._line_entries(tenant, line)
                if not token:
                    break
        return entries

    async def _line_entries(self, tenant: str, line: Any) -> list[ModelEntry]:
        is_model = line.kind != ADAPTER
        if not is_model and line.base_model != self.base_name:
            return []  # an adapter of another base model: not servable here
        if is_model and not self.model_servable(f"{tenant}/{line.name}:{line.latest_version}"):
            return []

        def loaded(version: int) -> bool:
            key = f"{tenant}/{line.name}:{version}"
            return self.model_loaded(key) if is_model else self.adapter_loaded(key)

        base = line.base_model if is_model else ""
        entries = [ModelEntry(line.name, False, kind=line.kind, loaded=loaded(line.latest_version), base_model=base)]
        for alias in sorted(line.aliases):
            version = line.aliases[alias]
            try:
                info = await run_in(self.executors.metadata, self.registry.get_version, tenant, line.name, version)
            except NotFound:  # deleted since the listing: the alias moved meanwhile
                continue
            moved = line.alias_moved_at.get(alias)
            records = [  # only the record of the alias's latest move: a later ungated move has none
                p
                for p in info.lineage.get("promotions", [])
                if p.get("alias") == alias and moved is not None and _same_time(p.get("at", ""), moved)
            ]
            entries.append(
                ModelEntry(
                    f"{line.name}:{alias}",
                    False,
                    version,
                    records[-1] if records else None,
                    kind=line.kind,
                    loaded=loaded(version),
                    base_model=base,
                )
            )
        return entries

    def adapter_loaded(self, key: str) -> bool:
        """Whether adapter version `key` (`tenant/name:version`) sits in a slot of the engine now."""
        return self.engine.has_adapter(key)

    def model_servable(self, key: str) -> bool:
        """Whether this front can serve model version `key` (`tenant/name:version`) at all."""
        return self.models is not None

    def model_loaded(self, key: str) -> bool:
        """Whether model version `key` is held in an engine now."""
        return self.models is not None and key in self.models.loaded()

    async def sweep_deleted(self) -> int:
        """Evicts loaded adapter versions and model version engines that were deleted from the registry."""
        evicted = 0
        for key in self.models.loaded() if self.models is not None else []:
            tenant, _, ref = key.partition("/")
            try:
                await run_in(self.executors.metadata, self.registry.resolve, tenant, ref)
            except NotFound:
                if await run_in(self.executors.loads, self.models.evict, key):
                    evicted += 1
        for key in self.engine.loaded():
            tenant, _, ref = key.partition("/")
            try:
                await run_in(self.executors.metadata, self.registry.resolve, tenant, ref)
            except NotFound:
                if self.engine.evict(key):
                    evicted += 1
                    log.info("adapter_unloaded", adapter=key, reason="deleted")
        return evicted

    # -- requests ------------------------------------------------------------------------------

    async def render_prompt(
        self, messages: Sequence[tuple[str, str]], field: str = "messages", target: Target | None = None
    ) -> list[int]:
        """The prompt's token ids: checked on the loop (cheap), rendered and tokenized on a thread.

        With the chat template of `target`'s model version when it has one of its own, else the base model's.
        """
        self.check_messages(messages, field)
        renderer = target.renderer if target is not None and target.renderer is not None else self.renderer
        return await run_in(self.executors.prompts, self._tokenize, messages, field, renderer)

    def prompt_ids(self, messages: Sequence[tuple[str, str]], field: str = "messages") -> list[int]:
        """`render_prompt` in the caller's thread (benchmarks, scripts; never on an event loop)."""
        self.check_messages(messages, field)
        return self._tokenize(messages, field, self.renderer)

    def check_messages(self, messages: Sequence[tuple[str, str]], field: str = "messages") -> None:
        """INVALID_ARGUMENT for a malformed conversation or one too large to tokenize at all."""
        if not messages:
            raise InvalidArgument.for_field(field, "must hold at least one message")
        if len(messages) > self.limits.max_messages:
            raise InvalidArgument.for_field(field, f"at most {self.limits.max_messages} messages")
        for index, (role, content) in enumerate(messages):
            if role not in ROLES:
                raise InvalidArgument.for_field(f"{field}[{index}].role", f"must be one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise InvalidArgument.for_field(f"{field}[{index}].content", "must be text")
        if messages[-1][0] == "assistant":
            raise InvalidArgument.for_field(
                f"{field}[{len(messages) - 1}].role", "the last message must not be the assistant's"
            )
        # a character is at least one byte: only text short enough to pass is encoded to count exactly
        size = sum(len(content) for _, content in messages)
        if size <= self.limits.max_prompt_bytes:
            size = sum(len(content.encode("utf-8", "surrogatepass")) for _, content in messages)
        if size > self.limits.max_prompt_bytes:
            raise InvalidArgument.for_field(
                field,
                f"the messages hold at least {size} bytes of text, more than a prompt of at most "
                f"{self.limits.max_prompt_tokens} tokens can (limit {self.limits.max_prompt_bytes} bytes); "
                "shorten them",
            )

    def _tokenize(self, messages: Sequence[tuple[str, str]], field: str, renderer: ChatRenderer) -> list[int]:
        rendered = renderer.render([{"role": r, "content": c} for r, c in messages], add_generation_prompt=True)
        if len(rendered.input_ids) > self.limits.max_prompt_tokens:
            # a request that can never succeed as sent: INVALID_ARGUMENT (HTTP 400), not a rate limit to retry
            raise InvalidArgument.for_field(
                field,
                f"the prompt has {len(rendered.input_ids)} tokens; this service accepts at most "
                f"{self.limits.max_prompt_tokens}",
            )
        return rendered.input_ids

    def sampling(
        self,
        *,
        temperature: float = 0.0,
        top_p: float = 0.0,
        max_tokens: int = 0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        prefix: str = "sampling.",
    ) -> Sampling:
        # `not a <= x <= b` also refuses NaN; a tiny positive temperature is valid (greedy in the limit)
        if not 0 <= temperature <= 5:
            raise InvalidArgument.for_field(f"{prefix}temperature", "must be between 0 and 5")
        if not 0 <= top_p <= 1:
            raise InvalidArgument.for_field(f"{prefix}top_p", "must be in (0, 1]")
        if max_tokens < 0:
            raise InvalidArgument.for_field(f"{prefix}max_tokens", "must not be negative")
        if max_tokens > self.limits.max_new_tokens:
            raise InvalidArgument.for_field(
                f"{prefix}max_tokens", f"{max_tokens} is above this service's limit of {self.limits.max_new_tokens}"
            )
        if seed is not None and not 0 <= seed < 2**63:
            raise InvalidArgument.for_field(f"{prefix}seed", "must be between 0 and 2**63 - 1")
        if len(stop) > 8 or any(not s or len(s) > 64 for s in stop):
            raise InvalidArgument.for_field(f"{prefix}stop", "at most 8 non-empty strings of up to 64 characters")
        return Sampling(
            temperature=temperature,
            top_p=top_p or 1.0,
            max_tokens=max_tokens or min(256, self.limits.max_new_tokens),
            stop=tuple(stop),
            seed=seed,
        )

    @contextlib.contextmanager
    def _slot_for(self, tenant: str) -> Iterator[None]:
        """Holds one of the tenant's concurrent-request places (RESOURCE_EXHAUSTED when none is left)."""
        count = self._in_flight.get(tenant, 0)
        if count >= self.limits.max_concurrent_per_tenant:
            raise ResourceExhausted(
                f"{count} requests of this tenant are in flight (limit {self.limits.max_concurrent_per_tenant}); "
                "retry when one finishes"
            )
        self._in_flight[tenant] = count + 1
        try:
            yield
        finally:
            left = self._in_flight.get(tenant, 1) - 1
            if left > 0:
                self._in_flight[tenant] = left
            else:
                self._in_flight.pop(tenant, None)

    async def _pin(self, target: Target) -> int:
        """The adapter's slot, pinned until the request ends; loaded first if it was evicted since `resolve`.

        A resident adapter is pinned here on the loop (a dict lookup under a lock no thread holds for
        long), so requests for it never queue behind loads stuck in the loads pool. A load runs on
        that pool; if the caller goes away meanwhile, the slot the load pins is released when it ends.
        """
        assert target.adapter_key is not None
        slot = self.engine.pin_if_loaded(target.adapter_key)
        if slot is not None:
            return slot
        # if the engine reads its files (it dropped them from host memory since `resolve`), they are checked again
        verify = None if target.verified else functools.partial(self._verify_files, target.version, target.directory)
        load = self.executors.loads.submit(self.engine.acquire, target.adapter_key, target.directory, verify)
        return await _pinned_result(load, functools.partial(self.engine.release, target.adapter_key))

    async def check_response_format(
        self, kind: str, schema: Any, name: str, field: str, type_field: str
    ) -> ResponseFormat | None:
        """A request's checked `response_format` (None: free text); INVALID_ARGUMENT naming `field` for a
        schema the grammar library cannot enforce. On a thread: a large schema takes a while to check."""
        if kind == TEXT and schema in ("", None):
            return None
        return await run_in(
            self.executors.prompts,
            functools.partial(response_format, kind, schema, name, field=field, type_field=type_field),
        )

    async def constraint_for(self, engine: Any, response_format: ResponseFormat | None) -> JsonConstraint | None:
        """A fresh structured-output constraint for one request on `engine` (None: free text).

        Compiled for the engine's own tokenizer (a model version may have another) on a thread: the first
        request on a tokenizer prepares llguidance's view of it (a second or so for a 152k vocabulary).
        """
        if response_format is None or not response_format.constrained:
            return None
        stops = getattr(engine, "stop_ids", None) or stop_token_ids(engine.tokenizer)
        return await run_in(self.executors.prompts, GRAMMARS.constraint, response_format, engine.tokenizer, stops)

    async def stream(
        self,
        tenant: str,
        target: Target,
        prompt_ids: list[int],
        sampling: Sampling,
        response_format: ResponseFormat | None = None,
    ) -> AsyncIterator[Event]:
        """The request's events as the engine decodes it; the tenant's in-flight count is held meanwhile.

        With a constrained `response_format` the engine decodes the reply under its grammar (`structured.py`).
        """
        with self._slot_for(tenant):
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Event] = asyncio.Queue()
            request = Request(
                prompt_ids, target.adapter_key, sampling, lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
            )
            request.prefix_scope = tenant  # a tenant's prompts reuse its own cached prefixes, never another's
            served: ServedModel | None = None
            try:
                engine = self.engine
                if target.model_key is not None:  # reloaded here if it was unloaded since `resolve`
                    served = await self._acquire_model(target)
                    engine = served.engine
                request.constraint = await self.constraint_for(engine, response_format)
                if target.adapter_key is not None:
                    request.slot = await self._pin(target)
                engine.submit(request)
                while True:
                    event = await events.get()
                    yield event
                    if event.finish_reason:
                        return
            finally:
                request.cancelled.set()  # a client that went away frees its batch row at the next step
                if served is not None and self.models is not None:
                    self.models.release(served.key)
