"""Issue #14 over real channels to the session's server: bad input is INVALID_ARGUMENT naming the field
(probes and a Hypothesis fuzz of every unary method's request, of every service the server hosts, and of
the OpenAI-compatible HTTP bodies), a hanging hub does not stall other calls."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
import pytest
from conftest import ACME_KEY
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.catalog.suites import BUILTIN_DIR
from tuneforge.client import TuneforgeClient
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import (
    common_pb2,
    curation_pb2,
    evaluation_pb2,
    export_pb2,
    feedback_pb2,
    generation_pb2,
    inference_pb2,
    training_pb2,
)
from tuneforge.v1.feedback_pb2_grpc import FeedbackServiceStub
from tuneforge.v1.generation_pb2_grpc import GenerationServiceStub

AUTH = (("authorization", f"Bearer {ACME_KEY}"),)
NESTED = "[" * 100_000
BUILTIN_SUITE = BUILTIN_DIR / "core-zh-en.jsonl"
NESTED_JSONL = ('{"prompt": ' + "[" * 100_000 + "}\n").encode()
#: Lines no seed task can be read from, in shapes a careless client writes (no `messages` list, entries
#: that are not messages): a seed file of only these holds no seed task.
ODD_SEED_LINES = b'{"messages": null}\n{"messages": 5}\n{"messages": ["s", {"role": "assistant", "content": "x"}]}\n'


def _token(value: object) -> str:
    """A page token as a client could forge one: base64url of some JSON."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


#: Tables of the newest-first lists: a token forged with one of their kinds gets past the kind check.
NEWEST_FIRST = (
    "files",
    "dataset_versions",
    "jobs",
    "eval_suites",
    "eval_runs",
    "model_exports",
    "feedback",
    "generation_runs",
)


#: Page tokens an attacker or a careless client sends: naive timestamps (the old newest-first shape and
#: ours), other lists' tokens, negative and huge positions, wrong types, garbage.
FORGED_TOKENS = [
    _token(["2026-01-01T00:00:00", "x"]),
    _token(["newest:jobs", "2026-01-01T00:00:00", "x"]),
    _token(["newest:files", "2026-13-45T99:00:00+00:00", "x"]),
    _token(["newest:model_exports", "2026-01-01T00:00:00", "exp-x"]),
    _token(["newest:feedback", "2026-01-01T00:00:00+00:00", 7]),
    _token(["newest:generation_runs", "2026-01-01T00:00:00", "gen-x"]),
    # well-formed times that leave the calendar once turned to UTC
    *(_token([f"newest:{table}", "0001-01-01T00:00:00+14:00", "x"]) for table in NEWEST_FIRST),
    _token(["newest:generation_runs", "9999-12-31T23:59:59-14:00", "gen-x"]),
    _token(["dataset-issues", -5]),
    _token(["dataset-issues", 10**30]),
    _token(["adapter-versions", 10**30]),
    _token(["adapter-versions", "7"]),
    _token(["adapters", 1]),
    _token(["eval-results", "a\u0000b", "c"]),
    _token("17"),
    _token(["eval-results", [[[[]]]], "x"]),
    "garbage!",
    "AAAA",
    "@@@",
    "%%%%",
    "Zm9v\n",
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
]


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """Code, message, and the fields named by BadRequest details."""
    fields: list[str] = []
    status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [violation.field for violation in bad.field_violations]
    return error.code(), error.details() or "", fields


def _refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, list[str]]:
    try:
        call()
    except grpc.RpcError as error:
        return _status(error)
    raise AssertionError("the call was accepted")


@pytest.fixture(scope="module")
def channel(platform_server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        platform_server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as opened:
        yield opened


def _method(channel: grpc.Channel, service: str, name: str, request_class: type) -> grpc.UnaryUnaryMultiCallable:
    response = _response_classes()[(service, name)]
    return channel.unary_unary(
        f"/{service}/{name}", request_serializer=request_class.SerializeToString, response_deserializer=response
    )


#: The protobuf modules of every service the session's server hosts.
FUZZED_MODULES = (curation_pb2, training_pb2, evaluation_pb2, inference_pb2, export_pb2, feedback_pb2, generation_pb2)


def _response_classes() -> dict[tuple[str, str], Callable[[bytes], Any]]:
    found = {}
    for module in FUZZED_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[(service.full_name, method.name)] = message_factory.GetMessageClass(method.output_type).FromString
    return found


LIST_CALLS = [
    ("tuneforge.v1.DatasetService", "ListFiles", curation_pb2.ListFilesRequest()),
    ("tuneforge.v1.DatasetService", "ListDatasetVersions", curation_pb2.ListDatasetVersionsRequest()),
    (
        "tuneforge.v1.DatasetService",
        "ListDatasetIssues",
        curation_pb2.ListDatasetIssuesRequest(dataset_version_id="dsv-0123456789abcdef"),
    ),
    ("tuneforge.v1.TrainingService", "ListJobs", training_pb2.ListJobsRequest()),
    ("tuneforge.v1.AdapterService", "ListAdapters", training_pb2.ListAdaptersRequest()),
    ("tuneforge.v1.AdapterService", "ListAdapterVersions", training_pb2.ListAdapterVersionsRequest(adapter="bot")),
    ("tuneforge.v1.EvaluationService", "ListSuites", evaluation_pb2.ListSuitesRequest()),
    ("tuneforge.v1.EvaluationService", "ListEvalRuns", evaluation_pb2.ListEvalRunsRequest()),
    (
        "tuneforge.v1.EvaluationService",
        "ListEvalResults",
        evaluation_pb2.ListEvalResultsRequest(run_id="eval-0123456789abcdef"),
    ),
    ("tuneforge.v1.ExportService", "ListExports", export_pb2.ListExportsRequest()),
    ("tuneforge.v1.FeedbackService", "ListFeedback", feedback_pb2.ListFeedbackRequest()),
    ("tuneforge.v1.GenerationService", "ListGenerationRuns", generation_pb2.ListGenerationRunsRequest()),
]


def test_every_paged_list_is_probed_with_forged_tokens() -> None:
    paged = {
        (service.full_name, method.name)
        for module in FUZZED_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if "page_token" in method.input_type.fields_by_name
    }
    assert paged == {(service, name) for service, name, _ in LIST_CALLS}


@pytest.mark.parametrize(("service", "name", "request_message"), LIST_CALLS, ids=[call[1] for call in LIST_CALLS])
def test_forged_page_tokens_are_invalid_argument_naming_page_token(
    channel: grpc.Channel, service: str, name: str, request_message: Any
) -> None:
    call = _method(channel, service, name, type(request_message))
    for token in FORGED_TOKENS:
        request = type(request_message)()
        request.CopyFrom(request_message)
        request.page_token = token
        code, message, fields = _refused(lambda request=request: call(request, metadata=AUTH, timeout=30))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), (token, code, message)
        assert message.startswith("page_token:"), message


def test_probed_inputs_are_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    version = _method(
        channel, "tuneforge.v1.AdapterService", "GetAdapterVersion", training_pb2.GetAdapterVersionRequest
    )
    suite = _method(channel, "tuneforge.v1.EvaluationService", "CreateSuite", evaluation_pb2.CreateSuiteRequest)
    cases: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: _method(channel, "tuneforge.v1.InferenceService", "Generate", inference_pb2.GenerateRequest)(
                inference_pb2.GenerateRequest(
                    model="bot:99999999999999999999999", messages=[common_pb2.ChatMessage(role="user", content="hi")]
                ),
                metadata=AUTH,
                timeout=60,
            ),
            "model",
        ),
        (
            lambda: suite(
                evaluation_pb2.CreateSuiteRequest(name="deep", jsonl=NESTED_JSONL), metadata=AUTH, timeout=30
            ),
            "jsonl",
        ),
    ]
    for call, field in cases:
        code, message, fields = _refused(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (field, code, message)
        assert field in [name.split(":")[0] for name in fields], (field, fields)
    # a reference with a version past any stored one is a normal "not found", not an overflow
    code, message, _ = _refused(
        lambda: version(training_pb2.GetAdapterVersionRequest(adapter="bot", version=2**63 - 1), metadata=AUTH)
    )
    assert code is grpc.StatusCode.NOT_FOUND, (code, message)


def test_seed_files_without_a_seed_task_are_invalid_argument(channel: grpc.Channel, acme: TuneforgeClient) -> None:
    """A seed file whose records are not messages (`messages` null, a number, entries that are not objects)
    holds no seed task: INVALID_ARGUMENT naming seed_file_id, not a parser's crash."""
    stored = acme.upload_file(ODD_SEED_LINES, filename="odd-seeds.jsonl")
    create = _method(
        channel, "tuneforge.v1.GenerationService", "CreateGenerationRun", generation_pb2.CreateGenerationRunRequest
    )
    request = generation_pb2.CreateGenerationRunRequest(seed_file_id=stored.id, count=1)
    code, message, fields = _refused(lambda: create(request, metadata=AUTH, timeout=30))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["seed_file_id"]), (code, message)


@pytest.mark.parametrize("metadata", [AUTH, ()], ids=["with-key", "without-key"])
def test_undecodable_requests_are_refused_without_class_names(channel: grpc.Channel, metadata: tuple) -> None:
    raw = channel.unary_unary("/tuneforge.v1.DatasetService/ListFiles")  # bytes in, bytes out
    code, message, fields = _refused(lambda: raw(b"\xff\xff\xff\xff\x0f", metadata=metadata, timeout=30))
    expected = grpc.StatusCode.INVALID_ARGUMENT if metadata else grpc.StatusCode.UNAUTHENTICATED
    assert code is expected, (code, message)
    assert "DecodeError" not in message and "<class" not in message, message
    if metadata:
        assert fields == ["request"] and "tuneforge.v1.ListFilesRequest" in message, message
    upload = channel.stream_unary("/tuneforge.v1.DatasetService/UploadFile")  # a client stream too
    code, message, _ = _refused(lambda: upload(iter([b"\x0a\x05\x0a"]), metadata=metadata, timeout=30))
    assert code is expected and "<class" not in message, (code, message)


# -- fuzz ------------------------------------------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "bot:99999999999999999999999",
    "bot:\u00b2",
    "bot:-1",
    NESTED,
    "{" * 50_000,
    "a\u0000b",
    "../../etc/passwd",
    "x" * 100_000,
    "\u202e\ud7ff\U0001f600\u4e2d\u6587",
    "tiny-qwen2",
    "org/unreachable-model",
    "builtin-format",
    "latest",
    "user",
    "assistant",
    "system",
    json.dumps({"a": [1, {"b": None}]}),
    *FORGED_TOKENS,
]
SPECIAL_BYTES = [b"", b"\xff\xfe\x00", NESTED_JSONL, b'{"prompt": "hi"}\n' * 3, b"\n\n", NESTED.encode()]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


#: Strings that name real resources: under "" those any string field may take, under a field's name those
#: that field takes half the time (so that calls get past their lookups often enough to fuzz what follows).
Known = Mapping[str, tuple[str, ...]]


def _scalar(field: FieldDescriptor, known: Known = MappingProxyType({})) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        anything = st.one_of(st.sampled_from([*SPECIAL_STRINGS, *known.get("", ())]), st.text(max_size=40))
        return st.one_of(st.sampled_from(known[field.name]), anything) if known.get(field.name) else anything
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(SPECIAL_BYTES), st.binary(max_size=200))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if kind == FieldDescriptor.TYPE_DOUBLE else 32
        return st.one_of(st.sampled_from([0.0, -0.0, 1e-300, 1e-40, 1e30, -1.0]), st.floats(width=width))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 10_000))
    low, high = INT_RANGES[kind]
    return st.one_of(st.sampled_from(sorted({low, high, 0, 1, max(low, -1)})), st.integers(low, high))


def _message(descriptor: Descriptor, known: Known = MappingProxyType({}), depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of `descriptor` with a random subset of fields set to generated values (`known`: see Known)."""
    message_class = message_factory.GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                value_strategy = (
                    _message(value.message_type, known, depth + 1)
                    if value.type == FieldDescriptor.TYPE_MESSAGE
                    else _scalar(value, known)
                )
                optional[field.name] = st.dictionaries(_scalar(key, known), value_strategy, max_size=3)
                continue
            if depth >= 3:
                continue
            inner = _message(field.message_type, known, depth + 1)
            optional[field.name] = st.lists(inner, max_size=2) if _repeated(field) else inner
        else:
            scalar = _scalar(field, known)
            optional[field.name] = st.lists(scalar, max_size=4) if _repeated(field) else scalar

    def build(values: dict[str, Any]) -> Any:
        message = message_class()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if hasattr(item, "DESCRIPTOR"):
                        target[key].CopyFrom(item)
                    else:
                        target[key] = item
            elif _repeated(field):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


FINAL_RUN_STATES = (
    generation_pb2.GENERATION_RUN_STATE_SUCCEEDED,
    generation_pb2.GENERATION_RUN_STATE_FAILED,
    generation_pb2.GENERATION_RUN_STATE_CANCELLED,
)


def _register_adapter(platform_server: BackgroundServer, name: str) -> None:
    """A random LoRA adapter of tiny-qwen2 registered as `name`:1 for acme (so merges and exports have one)."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models import template_hash

    component = next(c for c in platform_server.server.components if hasattr(c, "registry"))
    models = component.platform.models
    base = models.resolve("tiny-qwen2")
    torch.manual_seed(14)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base.source, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    with tempfile.TemporaryDirectory(prefix="fuzz-adapter-") as directory:
        model.save_pretrained(directory)
        lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(models.load_tokenizer(base))}
        component.registry.register("acme", name, Path(directory), lineage)


@pytest.fixture(scope="module")
def known_names(platform_server: BackgroundServer) -> Known:
    """Names of real resources of the fuzzing tenant (see Known): uploaded files (one of lines no seed task
    can be read from), a suite, an adapter, an export, a served answer and its feedback, a finished generation
    run and its candidates; and, by field, the words that get requests past their format checks."""
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        stored = client.upload_file(b'{"instruction": "hi", "output": "hello"}\n', filename="fuzz.jsonl")
        odd = client.upload_file(ODD_SEED_LINES, filename="odd-seeds.jsonl")
        first_item = BUILTIN_SUITE.read_text().splitlines()[0].encode() + b"\n"
        suite = client.call(
            client.evaluation.CreateSuite, evaluation_pb2.CreateSuiteRequest(name="fuzz", jsonl=first_item)
        )
        _register_adapter(platform_server, "fuzz-bot")
        export = client.call(client.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="fuzz-bot")).export
        with contextlib.suppress(grpc.RpcError):  # what is fuzzed is the request, not the merge
            client.exports.CancelExport(export_pb2.CancelExportRequest(export_id=export.id), metadata=AUTH)
        answer = client.call(
            client.inference.Generate,
            inference_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role="user", content="hi")],
                sampling=inference_pb2.SamplingParams(max_tokens=4),
            ),
        )
        feedback = client.call(
            FeedbackServiceStub(client.channel).SubmitFeedback,
            feedback_pb2.SubmitFeedbackRequest(response_id=answer.response_id, rating=feedback_pb2.FEEDBACK_RATING_UP),
        ).feedback
        generation = GenerationServiceStub(client.channel)
        run = client.call(
            generation.CreateGenerationRun,
            generation_pb2.CreateGenerationRunRequest(
                seeds=["Name a colour.", "Count to three."],
                count=1,
                sampling=inference_pb2.SamplingParams(temperature=1.0, max_tokens=6, seed=14),
            ),
        ).run
        for _ in range(600):  # a candidate of 2 x 6 tokens of tiny-qwen2: well within a minute
            if run.state in FINAL_RUN_STATES:
                break
            time.sleep(0.1)
            run = client.call(generation.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)).run
        assert run.state == generation_pb2.GENERATION_RUN_STATE_SUCCEEDED, run.failure_reason
        candidates = client.call(
            generation.ListCandidates, generation_pb2.ListCandidatesRequest(run_id=run.id)
        ).candidates
        assert candidates
    by_field = {
        "export_id": (export.id,),
        "response_id": (answer.response_id,),
        "feedback_id": (feedback.id,),
        "feedback_ids": (feedback.id,),
        "run_id": (run.id,),
        "candidate_id": tuple(candidate.id for candidate in candidates),
        "seed_file_id": (stored.id, odd.id),
        "seeds": ("Name a colour.",),
        "adapter": ("fuzz-bot", "fuzz-bot:1"),
        "model": ("fuzz-bot", "base"),
        "model_name": ("fuzz-bot-merged",),
        "format": ("safetensors", "gguf"),
        "quant": ("q8_0", "f16"),
        "dtype": ("bfloat16", "float16"),
    }
    anywhere = (stored.id, odd.id, suite.suite.id, "fuzz", "fuzz.jsonl")
    return {"": anywhere + tuple(sorted({name for names in by_field.values() for name in names})), **by_field}


#: Longest answer a fuzzed generation asks for: what is fuzzed is the request, not the decoding time.
FUZZ_MAX_TOKENS = 16
#: Most candidates a fuzzed generation run asks for (each is two generations).
FUZZ_MAX_CANDIDATES = 2


def _bounded(request: Any) -> None:
    """Caps the work a fuzzed request may start: answers of FUZZ_MAX_TOKENS, runs of FUZZ_MAX_CANDIDATES."""
    if "sampling" in request.DESCRIPTOR.fields_by_name and request.sampling.max_tokens > FUZZ_MAX_TOKENS:
        request.sampling.max_tokens = FUZZ_MAX_TOKENS
    if isinstance(request, generation_pb2.CreateGenerationRunRequest):
        request.count = min(request.count, FUZZ_MAX_CANDIDATES)
        if request.sampling.max_tokens == 0:  # a run's default is 128 tokens
            request.sampling.max_tokens = FUZZ_MAX_TOKENS


def _stop_started_work(channel: grpc.Channel, response: Any) -> None:
    """Cancels the merge, export or generation run a fuzzed request started (the fuzz checks the answer)."""
    if isinstance(response, export_pb2.MergeAdapterResponse | export_pb2.ExportModelResponse):
        cancel = _method(channel, "tuneforge.v1.ExportService", "CancelExport", export_pb2.CancelExportRequest)
        request: Any = export_pb2.CancelExportRequest(export_id=response.export.id)
    elif isinstance(response, generation_pb2.CreateGenerationRunResponse):
        cancel = _method(
            channel, "tuneforge.v1.GenerationService", "CancelGenerationRun", generation_pb2.CancelGenerationRunRequest
        )
        request = generation_pb2.CancelGenerationRunRequest(run_id=response.run.id)
    else:
        return
    with contextlib.suppress(grpc.RpcError):  # FAILED_PRECONDITION once it has ended
        cancel(request, metadata=AUTH, timeout=30)


#: Every method with one request message: unary, and server-streaming (its first answer is read).
UNARY_METHODS = [
    (service.full_name, method.name, method.input_type, method.server_streaming)
    for module in FUZZED_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not method.client_streaming
]


@pytest.mark.parametrize(
    ("service", "name", "request_type", "streaming"),
    UNARY_METHODS,
    ids=[f"{s.split('.')[-1]}.{n}" for s, n, _, _ in UNARY_METHODS],
)
def test_fuzzed_requests_never_answer_internal_or_unknown(
    channel: grpc.Channel,
    known_names: Known,
    service: str,
    name: str,
    request_type: Descriptor,
    streaming: bool,
) -> None:
    request_class = message_factory.GetMessageClass(request_type)
    if streaming:
        response = _response_classes()[(service, name)]
        stream = channel.unary_stream(f"/{service}/{name}", request_class.SerializeToString, response)

        def call(request: Any, **options: Any) -> Any:
            """A stream may follow its resource for long: its first answer (or its refusal) is checked."""
            return next(iter(stream(request, **options)), None)

    else:
        call = _method(channel, service, name, request_class)

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=_message(request_type, known_names))
    def check(request: Any) -> None:
        _bounded(request)
        try:
            _stop_started_work(channel, call(request, metadata=AUTH, timeout=60))
        except grpc.RpcError as error:
            code, message, _ = _status(error)
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"{name}: {code.name} {message} for {str(request)[:600]}"
            )
            assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, f"{name} hung on {str(request)[:600]}"

    check()


# -- file modes ------------------------------------------------------------------------------------


def test_artifacts_the_database_and_staging_are_owner_only(
    platform_server: BackgroundServer, acme: TuneforgeClient, server_settings: Any, tmp_path: Path
) -> None:
    """After an upload, a curation build and an adapter registration, nothing under the server's home
    (artifacts, build staging, metadata.db) is readable or enterable by group or others."""
    stored = acme.upload_file(
        b"".join(
            json.dumps({"instruction": f"Say {word}.", "output": word}).encode() + b"\n"
            for word in ("one", "two", "three", "four")
        ),
        filename="modes.jsonl",
    )
    version = acme.wait_for_dataset_version(
        acme.create_dataset_version("modes", [stored.id], "tiny-qwen2").id, timeout=300
    )
    assert version.state == curation_pb2.DATASET_VERSION_STATE_READY, version.failure_reason
    source = tmp_path / "adapter"
    source.mkdir(mode=0o755)
    (source / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["q_proj"]}))
    (source / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    for path in (source, *source.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # made by someone else's umask
    component = next(c for c in platform_server.server.components if hasattr(c, "registry"))
    registered = component.registry.register("acme", "file-modes", source, {"base_model": "tiny-qwen2"})

    home = server_settings.home
    artifacts = server_settings.artifact_root
    assert (artifacts / "tenants" / "acme" / "datasets" / version.id).is_dir()
    assert (artifacts / "tenants" / "acme" / "adapters" / "file-modes" / str(registered.version)).is_dir()
    assert (home / "metadata.db").is_file() and (artifacts / ".tmp").is_dir()
    open_to_others = [
        f"{path.relative_to(home)} {oct(path.stat().st_mode & 0o777)}"
        for path in [home, *home.rglob("*")]
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    assert open_to_others == [], open_to_others
    files = [path for path in artifacts.rglob("*") if path.is_file()]
    assert files and {path.stat().st_mode & 0o777 for path in files} == {0o600}


def test_hub_loads_are_bounded_in_number_and_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from tuneforge.common.errors import Unavailable
    from tuneforge.models import ModelResolver

    release, entered = threading.Event(), threading.Event()

    def hanging(source: str, *args: Any, **kwargs: Any) -> str:
        entered.set()
        release.wait(60)
        return f"tokenizer of {source}"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hanging)
    resolver = ModelResolver(tmp_path, hub_timeout_s=0.5, hub_concurrency=1)
    with pytest.raises(Unavailable, match=r"'org/slow'.*did not load from the hub within 0.5 s"):
        resolver.load_tokenizer(resolver.resolve("org/slow"))
    assert entered.is_set()
    # the timed-out load still hangs in its thread and holds the only slot: the next one is refused at once
    with pytest.raises(Unavailable, match=r"'org/other'.*1 hub load\(s\) already in flight"):
        resolver.load_tokenizer(resolver.resolve("org/other"))
    release.set()
    pause = threading.Event()  # never set: a short wait between tries
    for _ in range(100):  # the slot comes back when the hanging load returns
        try:
            assert resolver.load_tokenizer(resolver.resolve("org/other")) == "tokenizer of org/other"
            break
        except Unavailable:
            pause.wait(0.05)
    else:
        raise AssertionError("the hub slot never came back")


# -- the OpenAI-compatible HTTP API ----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(SPECIAL_STRINGS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
CHAT_FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream", "seed", "n"]


@pytest.fixture(scope="module")
def http_base(platform_server: BackgroundServer) -> str:
    component = next(c for c in platform_server.server.components if hasattr(c, "engine"))
    return f"http://127.0.0.1:{component.http.port}"


@pytest.fixture(scope="module")
def chat_completions_url(http_base: str) -> str:
    return f"{http_base}/v1/chat/completions"


def _http_call(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """Status and body of a POST of `data` (a GET without it) with the fuzzing tenant's key."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data, headers, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def test_fuzzed_chat_completions_never_answer_500(chat_completions_url: str) -> None:
    import urllib.error
    import urllib.request

    valid_message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system"]),
            "content": st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=20),
        }
    )
    odd_message = st.dictionaries(st.sampled_from(["role", "content", "name"]), JSON_VALUES, max_size=3)
    # mostly a well-formed conversation, so that the other fields are what gets checked
    messages = st.lists(valid_message, min_size=1, max_size=2) | st.lists(valid_message | odd_message, max_size=3)
    body = st.fixed_dictionaries(
        {"messages": messages},
        optional={
            "model": st.just("") | JSON_VALUES,
            **{name: JSON_VALUES | st.integers(-(2**70), 2**70) for name in CHAT_FIELDS[2:]},
        },
    )

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=body)
    def check(payload: dict[str, Any]) -> None:
        if "max_tokens" not in payload or (isinstance(payload["max_tokens"], int) and payload["max_tokens"] > 16):
            payload["max_tokens"] = FUZZ_MAX_TOKENS  # without it a well-formed request decodes the default length
        data = json.dumps(payload).encode()
        request = urllib.request.Request(
            chat_completions_url,
            data,
            {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            error.read()
        assert status < 500, f"HTTP {status} for {data[:600]!r}"

    check()


#: Strings JSON can carry that no UTF-8 text holds (escaped lone surrogates).
LONE_SURROGATES = ["\ud800", "answer \udfff"]
#: Bodies that are not one JSON object: empty, truncated, not UTF-8, other JSON values.
RAW_BODIES = [b"", b"{", b'{"response_id": ', b"\xff\xfe{}", b"null", b"[]", b'"up"', b"1e999999", b"{}" * 3]


@pytest.mark.parametrize("field", ["corrected_answer", "comment", "rating", "response_id"])
def test_feedback_text_with_a_lone_surrogate_is_400_naming_the_field(
    http_base: str, known_names: Known, field: str
) -> None:
    """JSON may escape a lone surrogate, which no UTF-8 text holds: refused naming the field, not stored."""
    body = {"response_id": known_names["response_id"][0], "rating": "up", field: "fine \ud800 text"}
    status, answer = _http_call(f"{http_base}/v1/feedback", json.dumps(body).encode())
    assert status == 400, (status, answer)
    assert json.loads(answer)["error"]["param"] == field, answer


#: Bodies the OpenAI-compatible API once answered 500 for: JSON nested deeper than Python's parser recurses
#: (both routes), a lone surrogate in a chat message.
ONCE_500 = {
    "feedback-deep-array": ("/v1/feedback", b"[" * 100_000),
    "feedback-deep-object": ("/v1/feedback", b'{"a":' * 50_000),
    "chat-deep-array": ("/v1/chat/completions", b"[" * 100_000),
    "chat-deep-field": ("/v1/chat/completions", NESTED_JSONL),
    "chat-lone-surrogate": (
        "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "hi \ud800"}], "max_tokens": 2}).encode(),
    ),
}


@pytest.mark.parametrize(("route", "body"), list(ONCE_500.values()), ids=list(ONCE_500))
def test_bodies_nested_too_deeply_or_holding_a_lone_surrogate_are_400(http_base: str, route: str, body: bytes) -> None:
    status, answer = _http_call(f"{http_base}{route}", body)
    assert status == 400, (status, answer[:300])


def test_fuzzed_feedback_never_answers_5xx(http_base: str, known_names: Known) -> None:
    """`POST /v1/feedback` with fuzzed bodies (fields of every JSON type, the tenant's real answer id half the
    time) and `GET /v1/feedback/{id}` with fuzzed ids: refused or accepted, never a server error."""
    from urllib.parse import quote

    strings = st.sampled_from([*SPECIAL_STRINGS, *LONE_SURROGATES]) | st.text(max_size=20)
    anything = JSON_VALUES | strings | st.integers(-(2**70), 2**70)
    text = st.sampled_from(LONE_SURROGATES) | st.text(max_size=40) | anything
    fields = {
        "response_id": st.sampled_from(known_names["response_id"]) | anything,
        "rating": st.sampled_from(["up", "down", "", "UP", "sideways"]) | anything,
        "score": st.integers(-2, 7) | anything,
        "corrected_answer": text,
        "comment": text,
        "feedback_id": anything,
    }
    bodies = (
        st.fixed_dictionaries({}, optional=fields).map(lambda body: json.dumps(body).encode())
        | JSON_VALUES.map(lambda body: json.dumps(body).encode())
        | st.sampled_from(RAW_BODIES)
    )
    ids = st.sampled_from([*known_names["feedback_id"], *LONE_SURROGATES]) | strings

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, feedback_id=ids)
    def check(body: bytes, feedback_id: str) -> None:
        status, _ = _http_call(f"{http_base}/v1/feedback", body)
        assert status < 500, f"HTTP {status} for POST {body[:600]!r}"
        path = quote(feedback_id.encode("utf-8", "surrogatepass"), safe="")
        status, _ = _http_call(f"{http_base}/v1/feedback/{path}")
        assert status < 500, f"HTTP {status} for GET /v1/feedback/{path[:600]}"

    check()


# -- a slow dependency -----------------------------------------------------------------------------
# Last in the module: hub lookups that earlier fuzzing started (names that look like hub model ids) may
# hang in their threads until the hub library gives up (~15 s of retries); the tests before it overlap them.


def test_hanging_hub_lookups_do_not_stall_other_calls(
    platform_server: BackgroundServer, acme: TuneforgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 CreateDatasetVersion calls naming hub models that hang: each is refused naming its model and
    ListFiles answers meanwhile; the hung lookups stay bounded by the resolver's slots."""
    import transformers

    release, entered = threading.Event(), threading.Semaphore(0)
    original = transformers.AutoTokenizer.from_pretrained

    def hanging(source: str, *args: Any, **kwargs: Any) -> Any:
        if not str(source).startswith("unreachable-org/"):
            return original(source, *args, **kwargs)
        entered.release()
        release.wait(120)
        raise OSError(f"could not reach the hub for {source}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", hanging)
    stored = acme.upload_file(b'{"instruction": "hi", "output": "hello"}\n', filename="slow-hub.jsonl")

    def create(index: int) -> tuple[grpc.StatusCode, str]:
        request = curation_pb2.CreateDatasetVersionRequest(
            dataset="slow-hub",
            file_ids=[stored.id],
            settings=curation_pb2.CurationSettings(base_model=f"unreachable-org/model-{index}"),
        )
        try:
            acme.datasets.CreateDatasetVersion(request, metadata=AUTH, timeout=120)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    models = platform_server.server.components[0].platform.models
    slots = models.hub_concurrency
    # hub lookups of earlier tests (the fuzz names hub-like models) may still hang in their threads,
    # holding slots until the hub library gives up: start once every slot is free
    for _ in range(slots):
        assert models._hub_slots.acquire(timeout=120), "an earlier hub lookup never ended"
    for _ in range(slots):
        models._hub_slots.release()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(create, index) for index in range(8)]
        for _ in range(slots):
            if not entered.acquire(timeout=60):
                release.set()
                raise AssertionError(f"no hub lookup started: {[f.result(timeout=60) for f in futures]}")
        # the hub is hanging for `slots` calls; everything else still answers
        files = acme.datasets.ListFiles(curation_pb2.ListFilesRequest(), metadata=AUTH, timeout=5)
        assert stored.id in [f.id for f in files.files]
        refused_early = []
        for future in concurrent.futures.as_completed(futures, timeout=30):
            refused_early.append(future.result())
            if len(refused_early) == 8 - slots:
                break  # the others wait on the hanging hub
        release.set()
        outcomes = [future.result(timeout=60) for future in futures]
    assert len(refused_early) >= 8 - slots
    for index, (code, message) in enumerate(outcomes):
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), (code, message)
        assert f"unreachable-org/model-{index}" in message, message
    assert sum(code is grpc.StatusCode.UNAVAILABLE for code, _ in outcomes) >= 8 - slots
