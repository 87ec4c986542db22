"""Health, reflection, auth and error details, over a real channel to the session's server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml
from conftest import ACME_KEY, make_settings
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.common.auth import ApiKeyFile, LocalResolver, bearer_token, hash_key
from tuneforge.common.errors import Unauthenticated
from tuneforge.curation.server import CurationComponent
from tuneforge.platform import BackgroundServer
from tuneforge.services import COMPONENTS, service_names
from tuneforge.v1 import curation_pb2, evaluation_pb2


def test_every_service_reports_serving_without_a_key(anonymous: TuneforgeClient) -> None:
    assert anonymous.health("") == "SERVING"
    for name in service_names(list(COMPONENTS)):
        assert anonymous.health(name) == "SERVING", name


def test_health_of_an_unknown_service_is_not_found(anonymous: TuneforgeClient) -> None:
    with pytest.raises(TuneforgeError) as info:
        anonymous.health("tuneforge.v1.NoSuchService")
    assert info.value.code == "NOT_FOUND"


def test_reflection_lists_every_service(platform_server: BackgroundServer) -> None:
    with grpc.insecure_channel(platform_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert set(service_names(list(COMPONENTS))) <= names
    assert "grpc.health.v1.Health" in names


def test_a_good_key_is_accepted(acme: TuneforgeClient) -> None:
    assert isinstance(list(acme.list_files()), list)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-known-key"),),
        (("authorization", f"Basic {ACME_KEY}"),),
        (("authorization", "Bearer "),),
    ],
)
def test_missing_or_unknown_keys_are_unauthenticated(platform_server: BackgroundServer, metadata: tuple) -> None:
    with grpc.insecure_channel(platform_server.address) as channel:
        stub = __import__("tuneforge.v1.curation_pb2_grpc", fromlist=["x"]).DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListFiles(curation_pb2.ListFilesRequest(), metadata=metadata, timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "API key" in info.value.details()


def test_unauthenticated_streaming_upload_is_refused(anonymous: TuneforgeClient) -> None:
    with pytest.raises(TuneforgeError) as info:
        anonymous.upload_file(b'{"a": 1}\n', filename="x.jsonl")
    assert info.value.code == "UNAUTHENTICATED"


def test_every_contract_call_is_served(acme: TuneforgeClient) -> None:
    """No method of any service answers UNIMPLEMENTED: each one is built (empty requests get real errors)."""
    from tuneforge.v1 import curation_pb2, inference_pb2, training_pb2

    stubs = {
        "DatasetService": acme.datasets,
        "TrainingService": acme.training,
        "AdapterService": acme.adapters,
        "InferenceService": acme.inference,
        "EvaluationService": acme.evaluation,
    }
    modules = (curation_pb2, training_pb2, inference_pb2, evaluation_pb2)
    checked = 0
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming:
                    continue  # UploadFile, exercised by the files tests
                request = getattr(module, method.input_type.name)()
                call = getattr(stubs[service.name], method.name)
                try:
                    if method.server_streaming:
                        list(acme.stream(call, request, timeout=30))
                    else:
                        acme.call(call, request, timeout=30)
                except TuneforgeError as error:
                    assert error.code != "UNIMPLEMENTED", f"{service.name}/{method.name}"
                checked += 1
    assert checked >= 30


def test_inference_lists_its_loaded_base_model(acme: TuneforgeClient) -> None:
    models = acme.list_models()
    assert (models[0].name, models[0].is_base) == ("tiny-qwen2", True)
    assert not any(m.is_base for m in models[1:])  # the rest are the caller's adapters


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("Authorization", b"bearer  abc "),)) == "abc"
    assert bearer_token((("authorization", "Token abc"),)) is None
    assert bearer_token(()) is None


def test_keys_file_is_reloaded_when_rotated(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key("old-key-0123456789"), "tenant": "acme"}]}))
    keys = ApiKeyFile(path)
    assert keys.resolve("old-key-0123456789").tenant == "acme"
    path.write_text(yaml.safe_dump({"keys": [{"key": "new-key-0123456789abc", "tenant": "acme", "role": "admin"}]}))
    assert keys.resolve("new-key-0123456789abc").role == "admin"
    with pytest.raises(Unauthenticated):
        keys.resolve("old-key-0123456789")


def _keys(path: Path, *entries: dict) -> None:
    path.write_text(yaml.safe_dump({"keys": list(entries)}))


def test_a_same_size_edit_with_the_old_mtime_put_back_still_revokes_the_key(tmp_path: Path) -> None:
    import os

    path = tmp_path / "keys.yaml"
    _keys(path, {"sha256": hash_key("first-key-0123456789"), "tenant": "acme"})
    stat = path.stat()
    keys = ApiKeyFile(path)
    keys.recheck_s = 0.0
    assert keys.resolve("first-key-0123456789").tenant == "acme"
    _keys(path, {"sha256": hash_key("other-key-0123456789"), "tenant": "acme"})
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(Unauthenticated, match="unknown API key"):
        keys.resolve("first-key-0123456789")
    assert keys.resolve("other-key-0123456789").tenant == "acme"


@pytest.mark.parametrize("breakage", ["deleted", "unparsable", "invalid"])
def test_a_broken_keys_file_refuses_every_key_until_it_is_fixed(tmp_path: Path, breakage: str) -> None:
    path = tmp_path / "keys.yaml"
    good = {"sha256": hash_key("good-key-0123456789"), "tenant": "acme"}
    _keys(path, good)
    keys = ApiKeyFile(path)
    keys.recheck_s = 0.0
    assert keys.resolve("good-key-0123456789").tenant == "acme"
    if breakage == "deleted":
        path.unlink()
    elif breakage == "unparsable":
        path.write_text("keys: [\n  - {sha256: ")
    else:
        _keys(path, {"tenant": "acme"})
    with pytest.raises(Unauthenticated, match="keys file is broken"):
        keys.resolve("good-key-0123456789")  # fails closed: the old keys are not kept
    assert keys.refresh() is not None and str(path) in keys.refresh()
    _keys(path, good)
    assert keys.resolve("good-key-0123456789").tenant == "acme" and keys.refresh() is None


def test_server_health_follows_the_keys_file(tmp_path: Path) -> None:
    import time

    path = tmp_path / "keys.yaml"
    _keys(path, {"sha256": hash_key(ACME_KEY), "tenant": "acme"})
    server = BackgroundServer(make_settings(tmp_path, path), [CurationComponent])
    try:
        client = TuneforgeClient(server.address)

        def health_becomes(expected: str) -> str:
            deadline = time.monotonic() + 30
            while (status := client.health("")) != expected and time.monotonic() < deadline:
                time.sleep(0.2)
            return status

        assert health_becomes("SERVING") == "SERVING"
        path.write_text("not: [valid")
        assert health_becomes("NOT_SERVING") == "NOT_SERVING"
        _keys(path, {"sha256": hash_key(ACME_KEY), "tenant": "acme"})
        assert health_becomes("SERVING") == "SERVING"
        client.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "entries, problem",
    [
        ([{"tenant": "acme"}], "exactly one"),
        ([{"key": "short", "tenant": "acme"}], "key"),
        ([{"sha256": "x" * 64, "tenant": "acme"}], "sha256"),
        ([{"key": "a-long-enough-key-0", "tenant": "Not A Tenant"}], "tenant"),
        ([{"key": "a-long-enough-key-0", "tenant": "a"}, {"key": "a-long-enough-key-0", "tenant": "b"}], "keys[1]"),
        ([{"key": "a-long-enough-key-0"}], "names its 'tenant'"),
        ([{"key": "a-long-enough-key-0", "tenant": "acme", "role": "service"}], "service key names none"),
    ],
)
def test_invalid_keys_files_are_refused_at_start(tmp_path: Path, entries: list, problem: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    with pytest.raises(ValueError, match=r"invalid|repeats") as info:
        ApiKeyFile(path)
    assert problem in str(info.value)


def test_local_mode_is_single_tenant_and_loopback_only(tmp_path: Path, keys_file: Path) -> None:
    assert LocalResolver("local").resolve(None).tenant == "local"
    with pytest.raises(ValueError, match=r"only allowed on loopback"):
        make_settings(tmp_path, keys_file, host="0.0.0.0", auth={"mode": "local"})
    with pytest.raises(ValueError, match=r"needs auth\.keys_file"):
        make_settings(tmp_path, keys_file, auth={"mode": "api_keys", "keys_file": None})


def test_a_server_in_local_mode_needs_no_key(tmp_path: Path, keys_file: Path) -> None:
    server = BackgroundServer(make_settings(tmp_path, keys_file, auth={"mode": "local"}), [CurationComponent])
    try:
        with TuneforgeClient(server.address) as client:
            stored = client.upload_file(b'{"x": 1}\n', filename="a.jsonl")
            assert [f.id for f in client.list_files()] == [stored.id]
    finally:
        server.stop()


def test_health_is_not_serving_until_a_component_is_ready(tmp_path: Path, keys_file: Path) -> None:
    import asyncio
    import threading

    release = threading.Event()

    class SlowComponent(CurationComponent):
        async def start(self) -> None:
            await super().start()
            await asyncio.to_thread(release.wait, 30)

    server = BackgroundServer(make_settings(tmp_path, keys_file), [SlowComponent], start_timeout=None)
    started = server.begin_start()
    try:
        with TuneforgeClient(server.address) as client:
            deadline_status = _poll_status(client, "tuneforge.v1.DatasetService", until=lambda s: s is not None)
            assert deadline_status == "NOT_SERVING"
            release.set()
            started.result(30)
            assert client.health("tuneforge.v1.DatasetService") == "SERVING"
    finally:
        release.set()
        server.stop()


def _poll_status(client: TuneforgeClient, service: str, until, timeout: float = 20.0) -> str | None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.health(service)
        except TuneforgeError:
            status = None  # not listening yet
        if until(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)
