"""Metadata store (SQLite and PostgreSQL) and artifact store: migrations, tenancy, paging, atomic writes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from tuneforge.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tuneforge.curation.files import FileCatalog, StoredFile, Upload
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore


@pytest.fixture()
def store(database_url: str):
    metadata = MetadataStore(database_url)
    metadata.migrate()
    yield metadata
    metadata.close()


@pytest.fixture()
def catalog(store: MetadataStore, tmp_path: Path) -> FileCatalog:
    return FileCatalog(store, ArtifactStore(tmp_path / "artifacts"), max_upload_bytes=10_000)


def _upload(catalog: FileCatalog, tenant: str, data: bytes, name: str = "f.jsonl", key: str = "") -> StoredFile:
    outcome = catalog.begin_upload(tenant, name, idempotency_key=key)
    if isinstance(outcome, StoredFile):
        return outcome
    outcome.write(data)
    return outcome.finish()


def test_migrations_bring_an_empty_database_to_head(store: MetadataStore) -> None:
    versions = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "store" / "migrations" / "versions"
    newest = max(p.stem for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))  # the chain's last link
    assert store.current_revision() == store.head_revision() == newest
    assert {"files", "dataset_versions", "leases"} <= set(inspect(store.engine).get_table_names())
    assert store.migrate() == newest  # running again is a no-op
    store.ping()


def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: MetadataStore) -> None:
    from datetime import timedelta

    from tuneforge.store.leases import Leases
    from tuneforge.store.tables import utcnow

    now = [utcnow()]
    first = Leases(store, "replica-a", ttl_s=30, clock=lambda: now[0])
    second = Leases(store, "replica-b", ttl_s=30, clock=lambda: now[0])
    assert first.acquire("training-job:j1") and not second.acquire("training-job:j1")
    assert second.acquire("training-job:j2")  # leases are per name
    now[0] += timedelta(seconds=20)
    assert first.acquire("training-job:j1")  # renewed: lasts 30 s from now
    now[0] += timedelta(seconds=20)
    assert not second.acquire("training-job:j1") and first.holder_of("training-job:j1") == "replica-a"
    now[0] += timedelta(seconds=11)  # replica-a died: its lease expired
    assert first.holder_of("training-job:j1") is None
    assert second.acquire("training-job:j1") and not first.acquire("training-job:j1")
    assert "training-job:j1" not in first.held
    assert second.acquire("training-job:j2")  # second's own lease, expired but not taken: renewed
    second.release("training-job:j1")
    first.release("training-job:j2")  # not the holder: nothing happens
    assert first.acquire("training-job:j1") and first.holder_of("training-job:j2") == "replica-b"
    second.release_all()
    assert first.acquire("training-job:j2") and first.held == {"training-job:j1", "training-job:j2"}


def test_concurrent_replicas_never_both_take_a_lease(store: MetadataStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tuneforge.store.leases import Leases

    replicas = [Leases(store, f"replica-{i}", ttl_s=30) for i in range(8)]
    for name in ("eval-run:a", "eval-run:b", "eval-run:c"):
        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(Leases.acquire, replicas, [name] * len(replicas)))
        assert sum(won) == 1, (name, won)
        assert replicas[won.index(True)].holder_of(name) == replicas[won.index(True)].holder


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'sub' / 'meta.db'}")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_a_second_store_in_one_process_keeps_the_database_whole_beside_another_process(tmp_path: Path) -> None:
    """The server and a second store on its SQLite file in one process (a registry, an evaluation pod),
    and a curation worker process that writes and exits: the worker must not take the file for its
    own (checkpoint and delete the WAL) while this process's connections are open. Opening the
    second store once closed a descriptor of the file, which dropped every lock this process held."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    server = MetadataStore(url)
    server.migrate()
    held = server.engine.connect()
    held.exec_driver_sql("CREATE TABLE marks (n INTEGER)")
    held.exec_driver_sql("INSERT INTO marks VALUES (1)")
    held.commit()
    second = MetadataStore(url)
    worker = textwrap.dedent(
        f"""
        from tuneforge.store.metadata import MetadataStore
        store = MetadataStore({url!r})
        with store.engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO marks VALUES (2)")
        store.close()
        """
    )
    subprocess.run([sys.executable, "-c", worker], check=True, timeout=60)
    assert (tmp_path / "meta.db-wal").exists()  # this process's readers still hold the WAL open
    held.exec_driver_sql("INSERT INTO marks VALUES (3)")
    held.commit()
    assert sorted(n for (n,) in held.exec_driver_sql("SELECT n FROM marks")) == [1, 2, 3]
    assert held.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    held.close()
    second.close()
    server.close()


def test_unreachable_database_is_unavailable_with_the_password_hidden() -> None:
    from tuneforge.common.errors import Unavailable

    store = MetadataStore("postgresql+psycopg://user:hunter2@127.0.0.1:1/nothing?connect_timeout=2")
    with pytest.raises(Unavailable) as info:
        store.migrate()
    assert "hunter2" not in info.value.message and "***" in info.value.message


def test_files_are_scoped_to_their_tenant(catalog: FileCatalog) -> None:
    mine = _upload(catalog, "acme", b"{}\n")
    assert catalog.get("acme", mine.id).sha256 == hashlib.sha256(b"{}\n").hexdigest()
    with pytest.raises(NotFound):
        catalog.get("globex", mine.id)
    with pytest.raises(NotFound):
        catalog.delete("globex", mine.id)
    assert catalog.list("globex") == ([], "")
    assert catalog.read("acme", mine.id) == b"{}\n"


def test_keyset_pages_cover_everything_once(catalog: FileCatalog) -> None:
    ids = [_upload(catalog, "acme", b"%d\n" % i, name=f"f{i}.jsonl").id for i in range(11)]
    seen, token = [], ""
    while True:
        page, token = catalog.list("acme", page_size=4, page_token=token)
        seen += [f.id for f in page]
        if not token:
            break
    assert seen == list(reversed(ids))


def test_idempotency_keys_on_both_backends(catalog: FileCatalog) -> None:
    first = _upload(catalog, "acme", b"a\n", key="k1")
    assert _upload(catalog, "acme", b"a\n", key="k1").id == first.id
    with pytest.raises(FailedPrecondition):
        catalog.begin_upload("acme", "other.jsonl", idempotency_key="k1")
    assert _upload(catalog, "globex", b"a\n", key="k1").id != first.id


def test_restarted_upload_supersedes_the_interrupted_one(catalog: FileCatalog) -> None:
    stale = catalog.begin_upload("acme", "r.jsonl", idempotency_key="restart")
    assert isinstance(stale, Upload)
    stale.write(b"half")
    fresh = catalog.begin_upload("acme", "r.jsonl", idempotency_key="restart")
    assert isinstance(fresh, Upload) and fresh.file_id == stale.file_id
    fresh.write(b"whole\n")
    done = fresh.finish()
    with pytest.raises(FailedPrecondition, match="superseded"):
        stale.finish()
    assert catalog.read("acme", done.id) == b"whole\n"


def test_aborted_upload_without_key_leaves_no_row(catalog: FileCatalog) -> None:
    upload = catalog.begin_upload("acme", "a.jsonl")
    assert isinstance(upload, Upload)
    assert [f.state for f in catalog.list("acme")[0]] == ["uploading"]
    upload.write(b"partial")
    upload.abort()
    assert catalog.list("acme") == ([], "")


def test_upload_limit(catalog: FileCatalog) -> None:
    upload = catalog.begin_upload("acme", "big.jsonl")
    assert isinstance(upload, Upload)
    with pytest.raises(ResourceExhausted):
        upload.write(b"x" * 10_001)


# --- artifact store -------------------------------------------------------------------------------


def test_write_interrupted_by_an_error_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    artifacts = store.for_tenant("acme")
    artifacts.write_bytes("models/a.bin", b"old")

    def chunks():
        yield b"new-part-1"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        artifacts.write_stream("models/a.bin", chunks())
    assert artifacts.read_bytes("models/a.bin") == b"old"  # the previous version is intact
    with pytest.raises(ConnectionError):
        artifacts.write_stream("models/b.bin", chunks())
    assert not artifacts.exists("models/b.bin")
    assert list(store.temp_dir.iterdir()) == []


def test_write_killed_mid_way_leaves_no_partial_artifact(tmp_path: Path) -> None:
    """A process killed with SIGKILL in the middle of a write: the final name never appears."""
    script = textwrap.dedent(f"""
        import sys, time
        from tuneforge.store.artifacts import ArtifactStore
        artifacts = ArtifactStore({str(tmp_path)!r}).for_tenant("acme")
        def chunks():
            for i in range(1000):
                yield b"x" * 4096
                if i == 10:
                    print("writing", flush=True)
                    time.sleep(60)
        artifacts.write_stream("big/file.bin", chunks())
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    store = ArtifactStore(tmp_path)
    assert not store.for_tenant("acme").exists("big/file.bin")
    leftovers = list(store.temp_dir.glob("write-*.part"))
    assert len(leftovers) == 1  # only the temp file, which the sweep removes once it is old
    assert store.sweep_temp(older_than_s=3600) == 0
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert store.sweep_temp(older_than_s=3600) == 1


def test_expected_hash_mismatch_is_data_loss(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path).for_tenant("acme")
    with pytest.raises(DataLoss), artifacts.writer("x.bin", expected_sha256=hashlib.sha256(b"a").hexdigest()) as w:
        w.write(b"b")
        w.commit()
    assert not artifacts.exists("x.bin")


def test_tampered_artifact_is_detected_on_read(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path).for_tenant("acme")
    digest = artifacts.write_bytes("data.jsonl", b"original")
    artifacts.path("data.jsonl").write_bytes(b"tampered")
    with pytest.raises(DataLoss):
        artifacts.read_bytes("data.jsonl", expected_sha256=digest.sha256)


def test_tenants_cannot_reach_each_others_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.for_tenant("acme").write_bytes("secret.txt", b"acme only")
    globex = store.for_tenant("globex")
    assert not globex.exists("secret.txt")
    for key in ["../acme/secret.txt", "../../tenants/acme/secret.txt"]:
        with pytest.raises(InvalidArgument):
            globex.read_bytes(key)


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "root")
    artifacts = store.for_tenant("acme")
    artifacts.write_bytes("ok.txt", b"ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (artifacts.base / "link").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="outside"):
        artifacts.write_bytes("link/evil.txt", b"escape")
    assert not (outside / "evil.txt").exists()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    key=st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", "\x00", "-", "_", "~", ":", "%2e"]), max_size=20).map(
        "".join
    )
)
def test_no_key_escapes_the_tenant_root(tmp_path: Path, key: str) -> None:
    artifacts = ArtifactStore(tmp_path).for_tenant("acme")
    try:
        path = artifacts.path(key)
    except InvalidArgument as exc:
        assert exc.violations and exc.violations[0].field == "key"
        return
    assert path.is_relative_to(artifacts.base.resolve())


@pytest.mark.parametrize("tenant", ["", "UPPER", "../x", "a" * 64, "-a", "a\x00"])
def test_invalid_tenant_names_are_refused(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(InvalidArgument):
        ArtifactStore(tmp_path).for_tenant(tenant)
