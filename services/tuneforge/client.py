"""Python SDK: a thin, typed wrapper over the generated stubs that adds the API key and chunked uploads.

client = TuneforgeClient("127.0.0.1:50051", api_key="...")
file = client.upload_file("data.jsonl")
for f in client.list_files(): print(f.id, f.filename)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tuneforge.v1 import (
    curation_pb2,
    curation_pb2_grpc,
    evaluation_pb2_grpc,
    export_pb2,
    export_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

UPLOAD_CHUNK_BYTES = 1024 * 1024
FINAL_JOB_STATES = frozenset(
    {training_pb2.JOB_STATE_SUCCEEDED, training_pb2.JOB_STATE_FAILED, training_pb2.JOB_STATE_CANCELLED}
)


@dataclass
class TuneforgeError(Exception):
    """A failed call: status code name, message, and field violations (`field` → description)."""

    code: str
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.code}: {self.message}"]
        lines += [f"  - {name}: {description}" for name, description in self.violations]
        return "\n".join(lines)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> TuneforgeError:
        violations: list[tuple[str, str]] = []
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [(v.field, v.description) for v in bad_request.field_violations]
        return cls(error.code().name, error.details() or "", violations)


class TuneforgeClient:
    """One channel to a Tuneforge endpoint (all services, or one), authenticated with an API key."""

    def __init__(self, address: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.datasets = curation_pb2_grpc.DatasetServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.adapters = training_pb2_grpc.AdapterServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.evaluation = evaluation_pb2_grpc.EvaluationServiceStub(self.channel)
        self.exports = export_pb2_grpc.ExportServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TuneforgeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """Calls a stub method with the API key; raises TuneforgeError with the server's details."""
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise TuneforgeError.from_rpc_error(error) from None

    def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Iterator[Any]:
        """Iterates a server-streaming call with the API key; errors become TuneforgeError.

        A reader that stops early (`break`, Ctrl-C, closing the iterator) cancels the call, so the
        server stops producing what nobody reads.
        """
        call = method(request, metadata=self._metadata, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as error:
            raise TuneforgeError.from_rpc_error(error) from None
        finally:
            call.cancel()  # a no-op once the call has ended

    def health(self, service: str = "") -> str:
        """`SERVING`, `NOT_SERVING`, … for `service` ('' = the whole server)."""
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as error:
            raise TuneforgeError.from_rpc_error(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, services: list[str], timeout: float = 300.0) -> None:
        """Blocks until every service reports SERVING; TimeoutError naming those that do not."""
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            still = []
            for service in pending:
                try:
                    if self.health(service) != "SERVING":
                        still.append(service)
                except TuneforgeError:
                    still.append(service)
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout:.0f}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.2)

    def upload_file(
        self,
        source: str | Path | bytes,
        filename: str | None = None,
        data_format: int = curation_pb2.DATA_FORMAT_UNSPECIFIED,
        idempotency_key: str = "",
        on_progress: Callable[[int], None] | None = None,
    ) -> curation_pb2.File:
        """Uploads a file (path or bytes) in chunks, streamed from disk, with its SHA-256 for verification.

        `on_progress(n)` is called with the size of each chunk sent.
        """
        if isinstance(source, bytes):
            name = "upload.jsonl" if filename is None else filename
            digest = hashlib.sha256(source).hexdigest()

            def chunks() -> Iterator[bytes]:
                for offset in range(0, len(source), UPLOAD_CHUNK_BYTES):
                    yield source[offset : offset + UPLOAD_CHUNK_BYTES]
        else:
            path = Path(source)
            name = path.name if filename is None else filename
            hasher = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(UPLOAD_CHUNK_BYTES), b""):
                    hasher.update(block)
            digest = hasher.hexdigest()

            def chunks() -> Iterator[bytes]:
                with path.open("rb") as handle:
                    yield from iter(lambda: handle.read(UPLOAD_CHUNK_BYTES), b"")

        header = curation_pb2.UploadFileHeader(
            filename=name, format=data_format, idempotency_key=idempotency_key, expected_sha256=digest
        )

        def messages() -> Iterator[curation_pb2.UploadFileRequest]:
            yield curation_pb2.UploadFileRequest(header=header)
            for chunk in chunks():
                yield curation_pb2.UploadFileRequest(chunk=chunk)
                if on_progress is not None:
                    on_progress(len(chunk))

        return self.call(self.datasets.UploadFile, messages()).file

    def list_files(self, page_size: int = 100) -> Iterator[curation_pb2.File]:
        """All of the caller's files, newest first, following page tokens."""
        token = ""
        while True:
            page = self.call(
                self.datasets.ListFiles, curation_pb2.ListFilesRequest(page_size=page_size, page_token=token)
            )
            yield from page.files
            token = page.next_page_token
            if not token:
                return

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        """The base model and the caller's adapters the inference service can serve."""
        return list(self.call(self.inference.ListModels, inference_pb2.ListModelsRequest()).models)

    def create_dataset_version(
        self,
        dataset: str,
        file_ids: list[str],
        base_model: str,
        idempotency_key: str = "",
        data_format: int = curation_pb2.DATA_FORMAT_UNSPECIFIED,
        **settings: Any,
    ) -> curation_pb2.DatasetVersion:
        """Starts building a dataset version (see CurationSettings for `settings`)."""
        request = curation_pb2.CreateDatasetVersionRequest(
            idempotency_key=idempotency_key,
            dataset=dataset,
            file_ids=file_ids,
            format=data_format,
            settings=curation_pb2.CurationSettings(base_model=base_model, **settings),
        )
        return self.call(self.datasets.CreateDatasetVersion, request).dataset_version

    def get_dataset_version(self, version_id: str) -> curation_pb2.DatasetVersion:
        request = curation_pb2.GetDatasetVersionRequest(dataset_version_id=version_id)
        return self.call(self.datasets.GetDatasetVersion, request).dataset_version

    def wait_for_dataset_version(
        self,
        version_id: str,
        timeout: float = 600.0,
        on_progress: Callable[[curation_pb2.DatasetVersion], None] | None = None,
    ) -> curation_pb2.DatasetVersion:
        """Polls until the version is no longer PROCESSING (READY, FAILED or CANCELLED); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            version = self.get_dataset_version(version_id)
            if on_progress is not None:
                on_progress(version)
            if version.state != curation_pb2.DATASET_VERSION_STATE_PROCESSING:
                return version
            if time.monotonic() > deadline:
                raise TimeoutError(f"dataset version {version_id} still processing after {timeout:.0f}s")
            time.sleep(0.25)

    def cancel_dataset_version(self, version_id: str) -> curation_pb2.DatasetVersion:
        """Stops building a version (CANCELLED); FAILED_PRECONDITION once it is no longer PROCESSING."""
        request = curation_pb2.CancelDatasetVersionRequest(dataset_version_id=version_id)
        return self.call(self.datasets.CancelDatasetVersion, request).dataset_version

    def create_job(self, spec: training_pb2.JobSpec, idempotency_key: str = "") -> training_pb2.Job:
        """Validates and queues a training job (INVALID_ARGUMENT names every bad field)."""
        request = training_pb2.CreateJobRequest(idempotency_key=idempotency_key, spec=spec)
        return self.call(self.training.CreateJob, request).job

    def get_job(self, job_id: str) -> training_pb2.Job:
        return self.call(self.training.GetJob, training_pb2.GetJobRequest(job_id=job_id)).job

    def list_jobs(self, states: list[int] | None = None, page_size: int = 100) -> Iterator[training_pb2.Job]:
        """The caller's jobs, newest first, across pages."""
        token = ""
        while True:
            request = training_pb2.ListJobsRequest(states=states or [], page_size=page_size, page_token=token)
            response = self.call(self.training.ListJobs, request)
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str) -> training_pb2.Job:
        return self.call(self.training.CancelJob, training_pb2.CancelJobRequest(job_id=job_id)).job

    def job_events(
        self,
        job_id: str,
        after_sequence: int = 0,
        follow: bool = True,
        timeout: float | None = None,
        reconnect_s: float = 120.0,
    ) -> Iterator[training_pb2.JobEvent]:
        """The job's events after `after_sequence`; with `follow`, until the job finishes.

        A followed stream the server ends with UNAVAILABLE (it drains for a restart, or the
        connection drops) is resumed after the last event seen, with backoff, for up to
        `reconnect_s` without an answer: the job goes on training meanwhile, and no event is missed
        or repeated.
        """
        cursor, wait, gave_up_at = after_sequence, 0.25, None
        while True:
            request = training_pb2.StreamJobEventsRequest(job_id=job_id, after_sequence=cursor, no_follow=not follow)
            try:
                for message in self.stream(self.training.StreamJobEvents, request, timeout=timeout):
                    cursor, wait, gave_up_at = message.event.sequence, 0.25, None
                    yield message.event
                return
            except TuneforgeError as exc:
                if not follow or exc.code != "UNAVAILABLE":
                    raise
                gave_up_at = gave_up_at or time.monotonic() + reconnect_s
                if time.monotonic() + wait > gave_up_at:
                    raise
            time.sleep(wait)
            wait = min(wait * 2, 5.0)

    def wait_for_job(self, job_id: str, timeout: float = 900.0) -> training_pb2.Job:
        """Polls until the job is SUCCEEDED, FAILED or CANCELLED; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.state in FINAL_JOB_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {training_pb2.JobState.Name(job.state)} after {timeout:.0f}s")
            time.sleep(0.5)

    def list_checkpoints(self, job_id: str) -> list[training_pb2.Checkpoint]:
        request = training_pb2.ListCheckpointsRequest(job_id=job_id)
        return list(self.call(self.training.ListCheckpoints, request).checkpoints)

    def wait_for_export(
        self,
        export_id: str,
        timeout: float = 3600.0,
        on_progress: Callable[[export_pb2.ModelExport], None] | None = None,
    ) -> export_pb2.ModelExport:
        """Polls a merge or export until it is SUCCEEDED, FAILED or CANCELLED; returns it."""
        deadline = time.monotonic() + timeout
        final = (export_pb2.EXPORT_STATE_SUCCEEDED, export_pb2.EXPORT_STATE_FAILED, export_pb2.EXPORT_STATE_CANCELLED)
        while True:
            export = self.call(self.exports.GetExport, export_pb2.GetExportRequest(export_id=export_id)).export
            if on_progress is not None:
                on_progress(export)
            if export.state in final:
                return export
            if time.monotonic() > deadline:
                raise TimeoutError(f"export {export_id} still {export_pb2.ExportState.Name(export.state)}")
            time.sleep(0.25)

    def download_export(self, export_id: str, out_dir: str | Path) -> list[Path]:
        """Writes the files of a SUCCEEDED export into `out_dir`, each checked against its SHA-256.

        Each file arrives as `.<name>.part` beside where it belongs and takes its name only once its
        hash matches; when anything fails, the parts written are removed and no file is left half.
        """
        export = self.call(self.exports.GetExport, export_pb2.GetExportRequest(export_id=export_id)).export
        expected = {f.name: f.digest for f in export.files}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)

        def part(name: str) -> Path:
            final = out / name
            return final.with_name(f".{final.name}.part")

        written: dict[str, Any] = {}
        try:
            try:
                request = export_pb2.DownloadExportRequest(export_id=export_id)
                for chunk in self.stream(self.exports.DownloadExport, request):
                    name = chunk.name
                    if name not in expected or Path(name).is_absolute() or ".." in Path(name).parts:
                        raise ValueError(f"the server sent {name!r}, which is not a file of export {export_id}")
                    if name not in written:
                        part(name).parent.mkdir(parents=True, exist_ok=True)
                        written[name] = (part(name).open("wb"), hashlib.sha256())
                    handle, digest = written[name]
                    handle.write(chunk.data)
                    digest.update(chunk.data)
            finally:
                for handle, _ in written.values():
                    handle.close()
            for name, digest in expected.items():
                if name not in written or written[name][1].hexdigest() != digest.sha256:
                    raise ValueError(f"{name} of export {export_id} did not arrive whole (SHA-256 differs)")
        except BaseException:
            for name in written:
                part(name).unlink(missing_ok=True)
            raise
        paths = []
        for name in expected:
            part(name).replace(out / name)
            paths.append(out / name)
        return paths
