"""DatasetService file calls over gRPC: uploads, idempotency, limits, tenancy and error details."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import curation_pb2, curation_pb2_grpc

DATA = b"".join(b'{"instruction": "say %d", "output": "%d"}\n' % (i, i) for i in range(2000))  # ~80 KB


def _artifact_files(server: BackgroundServer, tenant: str) -> list:
    root = server.server.settings.artifact_root / "tenants" / tenant / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_in_chunks_then_get_and_list(acme: TuneforgeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tuneforge.client.UPLOAD_CHUNK_BYTES", 4096)  # many chunks
    stored = acme.upload_file(DATA, filename="train.jsonl", data_format=curation_pb2.DATA_FORMAT_ALPACA)
    assert stored.state == curation_pb2.FILE_STATE_READY
    assert stored.digest.sha256 == hashlib.sha256(DATA).hexdigest()
    assert stored.digest.size_bytes == len(DATA)
    assert stored.format == curation_pb2.DATA_FORMAT_ALPACA
    got = acme.call(acme.datasets.GetFile, curation_pb2.GetFileRequest(file_id=stored.id)).file
    assert got == stored
    assert stored.id in [f.id for f in acme.list_files()]


def test_list_pages_newest_first_without_gaps_or_repeats(globex: TuneforgeClient) -> None:
    ids = [globex.upload_file(b"{}\n", filename=f"p{i}.jsonl").id for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page = globex.call(globex.datasets.ListFiles, curation_pb2.ListFilesRequest(page_size=3, page_token=token))
        seen += [f.id for f in page.files]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    mine = [i for i in seen if i in ids]
    assert mine == list(reversed(ids))
    assert len(seen) == len(set(seen))
    assert pages >= 3


def test_idempotent_retry_returns_the_same_file_and_stores_once(
    acme: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    first = acme.upload_file(DATA, filename="same.jsonl", idempotency_key="retry-1")
    before = _artifact_files(platform_server, "acme")
    again = acme.upload_file(DATA, filename="same.jsonl", idempotency_key="retry-1")
    assert again.id == first.id and again.digest == first.digest
    assert _artifact_files(platform_server, "acme") == before


def test_same_idempotency_key_for_a_different_upload_is_refused(acme: TuneforgeClient) -> None:
    acme.upload_file(b"{}\n", filename="one.jsonl", idempotency_key="retry-2")
    with pytest.raises(TuneforgeError) as info:
        acme.upload_file(b"{}\n", filename="two.jsonl", idempotency_key="retry-2")
    assert info.value.code == "FAILED_PRECONDITION"
    assert "retry-2" in info.value.message


@pytest.mark.parametrize(
    "filename", ["../escape.jsonl", "/etc/passwd", "a/b.jsonl", "bad\x00name", "x" * 300, "", ".."]
)
def test_invalid_filenames_are_rejected_with_the_field_named(acme: TuneforgeClient, filename: str) -> None:
    with pytest.raises(TuneforgeError) as info:
        acme.upload_file(b"{}\n", filename=filename)
    assert info.value.code == "INVALID_ARGUMENT"
    assert [field for field, _ in info.value.violations] == ["header.filename"]
    assert "header.filename" in info.value.message


def test_hash_mismatch_is_data_loss_and_stores_nothing(
    acme: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    before_files = {f.id for f in acme.list_files()}
    before_artifacts = _artifact_files(platform_server, "acme")

    def messages():
        yield curation_pb2.UploadFileRequest(
            header=curation_pb2.UploadFileHeader(
                filename="corrupt.jsonl", expected_sha256=hashlib.sha256(b"something else").hexdigest()
            )
        )
        yield curation_pb2.UploadFileRequest(chunk=b'{"a": 1}\n')

    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.UploadFile, messages())
    assert info.value.code == "DATA_LOSS"
    assert {f.id for f in acme.list_files()} == before_files
    assert _artifact_files(platform_server, "acme") == before_artifacts


def test_upload_over_the_size_limit_is_resource_exhausted(acme: TuneforgeClient) -> None:
    with pytest.raises(TuneforgeError) as info:
        acme.upload_file(b"x" * (300 * 1024), filename="huge.jsonl")  # the test server allows 256 KiB
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "huge.jsonl" not in [f.filename for f in acme.list_files()]


def test_stream_without_header_or_with_two_headers_is_invalid(acme: TuneforgeClient) -> None:
    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.UploadFile, iter([curation_pb2.UploadFileRequest(chunk=b"data")]))
    assert info.value.code == "INVALID_ARGUMENT" and info.value.violations[0][0] == "header"
    header = curation_pb2.UploadFileHeader(filename="h.jsonl")
    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.UploadFile, iter([curation_pb2.UploadFileRequest(header=header)] * 2))
    assert info.value.code == "INVALID_ARGUMENT" and info.value.violations[0][0] == "message[2]"


def test_a_cancelled_upload_leaves_no_partial_artifact(
    platform_server: BackgroundServer, acme: TuneforgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from tuneforge.curation.files import Upload

    before_files = {f.id for f in acme.list_files()}
    before_artifacts = _artifact_files(platform_server, "acme")
    # the server (in this process) says when it has written a chunk and when it has dropped the upload:
    # the cancel is sent only once the upload is really under way, and must reach the server
    written, aborted = threading.Event(), threading.Event()
    real_write, real_abort = Upload.write, Upload.abort

    def write(self: Upload, chunk: bytes) -> None:
        real_write(self, chunk)
        written.set()

    def abort(self: Upload) -> None:
        real_abort(self)
        aborted.set()

    monkeypatch.setattr(Upload, "write", write)
    monkeypatch.setattr(Upload, "abort", abort)
    hold = threading.Event()

    def messages():
        yield curation_pb2.UploadFileRequest(header=curation_pb2.UploadFileHeader(filename="cancelled.jsonl"))
        yield curation_pb2.UploadFileRequest(chunk=b"x" * 1000)
        hold.wait(30)  # the client goes away mid-upload
        yield curation_pb2.UploadFileRequest(chunk=b"y" * 1000)

    with grpc.insecure_channel(platform_server.address) as channel:
        stub = curation_pb2_grpc.DatasetServiceStub(channel)
        future = stub.UploadFile.future(
            messages(), metadata=(("authorization", "Bearer tf_acme_key_0123456789abcdef"),)
        )
        try:
            assert written.wait(30), "the server never wrote the first chunk"
            future.cancel()
            assert aborted.wait(30), "the server never dropped the cancelled upload"
        finally:
            hold.set()
    temp_dir = platform_server.server.settings.artifact_root / ".tmp"
    assert list(temp_dir.glob("*.part")) == []
    assert _artifact_files(platform_server, "acme") == before_artifacts
    assert {f.id for f in acme.list_files()} == before_files


def test_another_tenants_file_is_not_found_for_every_call(acme: TuneforgeClient, globex: TuneforgeClient) -> None:
    stored = acme.upload_file(b"{}\n", filename="private.jsonl")
    for method, request in [
        (globex.datasets.GetFile, curation_pb2.GetFileRequest(file_id=stored.id)),
        (globex.datasets.DeleteFile, curation_pb2.DeleteFileRequest(file_id=stored.id)),
    ]:
        with pytest.raises(TuneforgeError) as info:
            globex.call(method, request)
        assert info.value.code == "NOT_FOUND"
        assert stored.id in info.value.message
    assert stored.id not in [f.id for f in globex.list_files()]
    # and it is untouched for its owner
    assert acme.call(acme.datasets.GetFile, curation_pb2.GetFileRequest(file_id=stored.id)).file.id == stored.id


def test_same_idempotency_key_in_two_tenants_makes_two_files(acme: TuneforgeClient, globex: TuneforgeClient) -> None:
    a = acme.upload_file(b"{}\n", filename="k.jsonl", idempotency_key="shared-key")
    b = globex.upload_file(b"{}\n", filename="k.jsonl", idempotency_key="shared-key")
    assert a.id != b.id


def test_delete_removes_the_file_and_its_bytes(acme: TuneforgeClient, platform_server: BackgroundServer) -> None:
    stored = acme.upload_file(b'{"gone": true}\n', filename="gone.jsonl")
    assert any(stored.id in str(p) for p in _artifact_files(platform_server, "acme"))
    acme.call(acme.datasets.DeleteFile, curation_pb2.DeleteFileRequest(file_id=stored.id))
    assert not any(stored.id in str(p) for p in _artifact_files(platform_server, "acme"))
    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.GetFile, curation_pb2.GetFileRequest(file_id=stored.id))
    assert info.value.code == "NOT_FOUND"


@pytest.mark.parametrize(
    "request_, field",
    [
        (curation_pb2.GetFileRequest(file_id="../../etc"), "file_id"),
        (curation_pb2.GetFileRequest(file_id=""), "file_id"),
        (curation_pb2.ListFilesRequest(page_size=-1), "page_size"),
        (curation_pb2.ListFilesRequest(page_size=5000), "page_size"),
        (curation_pb2.ListFilesRequest(page_token="!!not-a-token!!"), "page_token"),
    ],
)
def test_bad_request_fields_are_named_in_the_error_details(acme: TuneforgeClient, request_, field: str) -> None:
    method = acme.datasets.GetFile if isinstance(request_, curation_pb2.GetFileRequest) else acme.datasets.ListFiles
    with pytest.raises(TuneforgeError) as info:
        acme.call(method, request_)
    assert info.value.code == "INVALID_ARGUMENT"
    assert [name for name, _ in info.value.violations] == [field]


def test_unexpected_errors_are_internal_without_leaking_details(
    acme: TuneforgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.curation.files import FileCatalog

    def broken(*args, **kwargs):
        raise RuntimeError("secret database password in a traceback")

    monkeypatch.setattr(FileCatalog, "list", broken)
    with pytest.raises(TuneforgeError) as info:
        list(acme.list_files())
    assert info.value.code == "INTERNAL"
    assert "secret" not in info.value.message and "reference" in info.value.message


def test_a_chunk_over_the_contract_s_4_mib_is_invalid(acme: TuneforgeClient) -> None:
    def messages() -> Iterator[curation_pb2.UploadFileRequest]:
        yield curation_pb2.UploadFileRequest(header=curation_pb2.UploadFileHeader(filename="big-chunk.jsonl"))
        yield curation_pb2.UploadFileRequest(chunk=b"x" * (4 * 2**20 + 1))

    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.UploadFile, messages())
    assert info.value.code == "INVALID_ARGUMENT" and info.value.violations[0][0] == "message[2].chunk"
    assert "big-chunk.jsonl" not in [f.filename for f in acme.list_files()]
