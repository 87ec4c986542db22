"""Leases in the metadata store: at most one replica drives a piece of background work at a time.

A training job or an evaluation run is reconciled by whichever replica holds its lease. A lease is
a row (`name`, `holder`, `expires_at`); the holder renews it while it works and releases it when it
stops, and any replica may take a lease whose holder let it expire — so when a pod dies, another
replica takes its work over within `ttl_s`. Taking and renewing are one conditional UPDATE (or an
INSERT that loses to a concurrent one on the primary key), which is atomic on SQLite and PostgreSQL
alike, so two replicas never both believe they hold a lease.

Expiry compares the replicas' own clocks: keep `ttl_s` well above the clock skew between nodes
(NTP keeps it to milliseconds) and above the longest pause between two renewals.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from tuneforge.common.logging import get_logger
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import LeaseRow, utcnow

log = get_logger(__name__)

#: Seconds a lease lasts without renewal: how long work stands still after its holder dies.
DEFAULT_TTL_S = 30.0


def default_holder() -> str:
    """This process: the pod name (the hostname in Kubernetes), its pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases one process holds, in one metadata store."""

    def __init__(
        self,
        metadata: MetadataStore,
        holder: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.metadata = metadata
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s
        self._clock = clock
        self.held: set[str] = set()

    def acquire(self, name: str) -> bool:
        """Takes or renews the lease `name`; False while another holder's lease is unexpired."""
        now = self._clock()
        expires = now + timedelta(seconds=self.ttl_s)
        with self.metadata.session() as session:
            mine = session.execute(
                update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == self.holder).values(expires_at=expires)
            ).rowcount
            taken = 0
            if not mine:
                taken = session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == name, LeaseRow.expires_at < now)
                    .values(holder=self.holder, acquired_at=now, expires_at=expires)
                ).rowcount
        if mine or taken:
            if taken:
                log.info("lease_taken_over", lease=name, holder=self.holder)
            self.held.add(name)
            return True
        try:
            with self.metadata.session() as session:
                session.add(LeaseRow(name=name, holder=self.holder, acquired_at=now, expires_at=expires))
        except IntegrityError:  # a live lease of another holder, or another replica inserted first
            self.held.discard(name)
            return False
        self.held.add(name)
        return True

    def release(self, name: str) -> None:
        """Gives the lease up at once (no-op unless this process holds it), so another replica may take it."""
        with self.metadata.session() as session:
            session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == self.holder))
        self.held.discard(name)

    def release_all(self) -> None:
        """Gives up every lease this process holds (a graceful stop: others take over without waiting)."""
        with self.metadata.session() as session:
            session.execute(delete(LeaseRow).where(LeaseRow.holder == self.holder))
        self.held.clear()

    def holder_of(self, name: str) -> str | None:
        """Who holds `name` now (None when nobody does or the lease expired)."""
        with self.metadata.session() as session:
            row = session.scalars(
                select(LeaseRow).where(LeaseRow.name == name, LeaseRow.expires_at >= self._clock())
            ).one_or_none()
            return row.holder if row is not None else None
