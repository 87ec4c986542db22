"""Adapter registry: versions with lineage and hashes, aliases that move atomically, tenancy (SQLite + PostgreSQL)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import MODEL_CACHE

from tuneforge.catalog.adapters import AdapterRegistry, parse_ref
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.v1 import training_pb2

LINEAGE = {
    "base_model": "tiny-qwen2",
    "base_model_revision": "r1",
    "template_hash": "t" * 64,
    "dataset_version_id": "dsv-0123456789abcdef01234567",
    "job_id": "job-0123456789ab",
}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import ModelResolver

    resolver = ModelResolver(MODEL_CACHE)
    model = resolver.load_model(resolver.resolve("tiny-qwen2"), dtype="float32", device="cpu")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture()
def registry(database_url: str, tmp_path: Path):
    store = MetadataStore(database_url)
    store.migrate()
    yield AdapterRegistry(store, ArtifactStore(tmp_path / "artifacts"))
    store.close()


def test_versions_number_up_and_carry_lineage_and_hashes(registry: AdapterRegistry, adapter_dir: Path) -> None:
    first = registry.register("acme", "support-bot", adapter_dir, LINEAGE, {"validation_loss": 1.5})
    second = registry.register("acme", "support-bot", adapter_dir, LINEAGE)
    assert (first.version, second.version) == (1, 2)
    assert first.rank == 4 and first.target_modules == ["q_proj", "v_proj"]
    assert first.lineage["dataset_version_id"] == LINEAGE["dataset_version_id"] and first.metrics == {
        "validation_loss": 1.5
    }
    stored = registry.artifacts.for_tenant("acme").path(f"{first.artifact_key}/adapter_model.safetensors")
    recorded = {f["name"]: f["sha256"] for f in first.files}
    assert recorded["adapter_model.safetensors"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert registry.get_adapter("acme", "support-bot").latest_version == 2
    assert registry.resolve("acme", "support-bot").version == 2  # bare name = latest
    assert registry.resolve("acme", "support-bot:1").version == 1


def test_aliases_move_atomically_and_protect_their_version(registry: AdapterRegistry, adapter_dir: Path) -> None:
    for _ in range(3):
        registry.register("acme", "bot", adapter_dir, LINEAGE)
    assert registry.set_alias("acme", "bot", "prod", 2).aliases == {"prod": 2}
    assert registry.resolve("acme", "bot:prod").version == 2
    registry.set_alias("acme", "bot", "prod", 3)
    assert registry.resolve("acme", "bot:prod").version == 3
    with pytest.raises(FailedPrecondition, match="prod"):
        registry.delete_version("acme", "bot", 3)
    registry.delete_version("acme", "bot", 2)
    with pytest.raises(NotFound):
        registry.resolve("acme", "bot:2")
    assert [v.version for v in registry.list_versions("acme", "bot")[0]] == [3, 1]
    for bad in ("latest", "7", "Not-Valid"):
        with pytest.raises(InvalidArgument):
            registry.set_alias("acme", "bot", bad, 1)
    with pytest.raises(NotFound):
        registry.set_alias("acme", "bot", "prod", 2)  # deleted versions cannot be aliased


def test_tenants_do_not_share_names_or_versions(registry: AdapterRegistry, adapter_dir: Path) -> None:
    registry.register("acme", "bot", adapter_dir, LINEAGE)
    with pytest.raises(NotFound):
        registry.resolve("globex", "bot")
    assert registry.list_adapters("globex") == ([], "")
    assert registry.register("globex", "bot", adapter_dir, LINEAGE).version == 1


def test_a_name_keeps_one_base_model(registry: AdapterRegistry, adapter_dir: Path) -> None:
    registry.register("acme", "bot", adapter_dir, LINEAGE)
    with pytest.raises(FailedPrecondition, match="base model"):
        registry.register("acme", "bot", adapter_dir, {**LINEAGE, "base_model": "Qwen/Qwen2.5-7B-Instruct"})


def test_paging_adapters_and_versions(registry: AdapterRegistry, adapter_dir: Path) -> None:
    for name in ("c", "a", "b"):
        registry.register("acme", name, adapter_dir, LINEAGE)
    names, token = [], ""
    while True:
        page, token = registry.list_adapters("acme", page_size=2, page_token=token)
        names += [a.name for a in page]
        if not token:
            break
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize(
    "ref, parsed",
    [
        ("bot", ("bot", None, None)),
        ("bot:3", ("bot", 3, None)),
        ("bot:prod", ("bot", None, "prod")),
        ("bot:latest", ("bot", None, None)),
    ],
)
def test_refs(ref: str, parsed: tuple) -> None:
    assert parse_ref(ref) == parsed


def test_adapter_service_over_grpc(
    platform_server,
    acme: TuneforgeClient,
    globex: TuneforgeClient,
    adapter_dir: Path,
) -> None:
    component = next(c for c in platform_server.server.components if hasattr(c, "registry"))
    component.registry.register("acme", "grpc-bot", adapter_dir, LINEAGE, {"validation_loss": 0.5})
    component.registry.register("acme", "grpc-bot", adapter_dir, LINEAGE)
    adapters = acme.call(acme.adapters.ListAdapters, training_pb2.ListAdaptersRequest()).adapters
    assert "grpc-bot" in [a.name for a in adapters]
    moved = acme.call(
        acme.adapters.SetAdapterAlias, training_pb2.SetAdapterAliasRequest(adapter="grpc-bot", alias="prod", version=1)
    ).adapter
    assert dict(moved.aliases) == {"prod": 1}
    version = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="grpc-bot", alias="prod")
    ).adapter_version
    assert version.version == 1 and version.lineage.dataset_version_id == LINEAGE["dataset_version_id"]
    assert {f.name for f in version.files} == {"adapter_config.json", "adapter_model.safetensors"}
    latest = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="grpc-bot", alias="latest")
    ).adapter_version
    assert latest.version == 2
    with pytest.raises(TuneforgeError) as info:
        acme.call(
            acme.adapters.DeleteAdapterVersion, training_pb2.DeleteAdapterVersionRequest(adapter="grpc-bot", version=1)
        )
    assert info.value.code == "FAILED_PRECONDITION"
    for method, request in [
        (globex.adapters.GetAdapter, training_pb2.GetAdapterRequest(name="grpc-bot")),
        (globex.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="grpc-bot", version=1)),
        (
            globex.adapters.SetAdapterAlias,
            training_pb2.SetAdapterAliasRequest(adapter="grpc-bot", alias="x", version=1),
        ),
        (globex.adapters.DeleteAdapterVersion, training_pb2.DeleteAdapterVersionRequest(adapter="grpc-bot", version=2)),
    ]:
        with pytest.raises(TuneforgeError) as info:
            globex.call(method, request)
        assert info.value.code == "NOT_FOUND", method


def test_adapters_cli(platform_server, adapter_dir: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import GLOBEX_KEY

    component = next(c for c in platform_server.server.components if hasattr(c, "registry"))
    component.registry.register("globex", "cli-bot", adapter_dir, LINEAGE)
    component.registry.register("globex", "cli-bot", adapter_dir, LINEAGE)
    env = {**os.environ, "TUNEFORGE_ADDRESS": platform_server.address, "TUNEFORGE_API_KEY": GLOBEX_KEY}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", "adapters", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert "cli-bot" in cli("list").stdout
    moved = cli("alias", "cli-bot", "prod", "1")
    assert moved.returncode == 0 and "cli-bot:prod → 1" in moved.stdout
    shown = cli("show", "cli-bot:prod")
    assert "version: 1" in shown.stdout and "adapter_model.safetensors" in shown.stdout
    refused = cli("delete", "cli-bot:1")
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    assert cli("delete", "cli-bot:2").returncode == 0
