"""What one Tuneforge process shares between the services it hosts: settings, stores, models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore, use_private_umask
from tuneforge.store.metadata import MetadataStore

log = get_logger(__name__)


class Platform:
    """Opened once per process (migrations run, stale temp files swept), then shared by components."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.database_url is not None and settings.artifact_root is not None
        use_private_umask()  # before any store file, worker or Ray head exists: all of them owner-only
        self.metadata = MetadataStore(settings.database_url)
        self.artifacts = ArtifactStore(settings.artifact_root)
        self.models = ModelResolver(
            settings.models.cache_dir,
            settings.models.trust_remote_code,
            hub_timeout_s=settings.models.hub_timeout_s,
            hub_concurrency=settings.models.hub_concurrency,
        )
        #: The inference frontend this process serves, once it is serving (None in a process without
        #: one): what the evaluation service generates through when no inference address is set.
        #: Components reach each other's collaborators here, never through imports of each other.
        self.local_inference: Any = None
        self._opened = False
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Migrates the metadata schema and sweeps abandoned temp files; idempotent."""
        async with self._lock:
            if self._opened:
                return
            revision = await asyncio.to_thread(self.metadata.migrate)
            swept = await asyncio.to_thread(self.artifacts.sweep_temp)
            log.info(
                "platform_open",
                database=self.metadata.safe_url,
                schema_revision=revision,
                artifact_root=str(self.artifacts.root),
                swept_temp_files=swept,
            )
            self._opened = True

    def close(self) -> None:
        self.metadata.close()


class PlatformComponent:
    """Base of the service components: holds the shared Platform and opens it on start.

    Subclasses name their gRPC services in `service_names` and add their servicers in `register()`;
    those that load more (models) extend `start()`.
    """

    service_names: tuple[str, ...] = ()

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def register(self, server: object) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self.platform.open()

    async def stop(self) -> None:
        return None

    def health_updates(self) -> AsyncIterator[bool] | None:
        """Serving as soon as `start()` returns, unless a subclass follows a backend it depends on."""
        return None
