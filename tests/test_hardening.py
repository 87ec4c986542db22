"""Issue #14 over real channels to the session's server: bad input is INVALID_ARGUMENT naming the field
(probes and a Hypothesis fuzz of every unary method's request), a hanging hub does not stall other calls."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
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
from tuneforge.v1 import common_pb2, curation_pb2, evaluation_pb2, inference_pb2, training_pb2

AUTH = (("authorization", f"Bearer {ACME_KEY}"),)
NESTED = "[" * 100_000
BUILTIN_SUITE = BUILTIN_DIR / "core-zh-en.jsonl"
NESTED_JSONL = ('{"prompt": ' + "[" * 100_000 + "}\n").encode()


def _token(value: object) -> str:
    """A page token as a client could forge one: base64url of some JSON."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


#: Page tokens an attacker or a careless client sends: naive timestamps (the old newest-first shape and
#: ours), other lists' tokens, negative and huge positions, wrong types, garbage.
FORGED_TOKENS = [
    _token(["2026-01-01T00:00:00", "x"]),
    _token(["newest:jobs", "2026-01-01T00:00:00", "x"]),
    _token(["newest:files", "2026-13-45T99:00:00+00:00", "x"]),
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


def _response_classes() -> dict[tuple[str, str], Callable[[bytes], Any]]:
    found = {}
    for module in (curation_pb2, training_pb2, evaluation_pb2, inference_pb2):
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
]


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


def _scalar(field: FieldDescriptor, known: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from([*SPECIAL_STRINGS, *known]), st.text(max_size=40))
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


def _message(descriptor: Descriptor, known: tuple[str, ...] = (), depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of `descriptor` with a random subset of fields set to generated values.

    `known`: strings that name real resources, so calls get past their lookups now and then.
    """
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


@pytest.fixture(scope="module")
def known_names(platform_server: BackgroundServer) -> tuple[str, ...]:
    """Names of real resources of the fuzzing tenant: an uploaded file, a suite, its base model."""
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        stored = client.upload_file(b'{"instruction": "hi", "output": "hello"}\n', filename="fuzz.jsonl")
        first_item = BUILTIN_SUITE.read_text().splitlines()[0].encode() + b"\n"
        suite = client.call(
            client.evaluation.CreateSuite, evaluation_pb2.CreateSuiteRequest(name="fuzz", jsonl=first_item)
        )
    return (stored.id, suite.suite.id, "fuzz", "fuzz.jsonl")


FUZZED_MODULES = (curation_pb2, training_pb2, evaluation_pb2, inference_pb2)
#: Longest answer a fuzzed generation asks for: what is fuzzed is the request, not the decoding time.
FUZZ_MAX_TOKENS = 16
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
    known_names: tuple[str, ...],
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
        if "sampling" in request.DESCRIPTOR.fields_by_name and request.sampling.max_tokens > FUZZ_MAX_TOKENS:
            request.sampling.max_tokens = FUZZ_MAX_TOKENS
        try:
            call(request, metadata=AUTH, timeout=60)
        except grpc.RpcError as error:
            code, message, _ = _status(error)
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"{name}: {code.name} {message} for {str(request)[:600]}"
            )
            assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, f"{name} hung on {str(request)[:600]}"

    check()


# -- a slow dependency -----------------------------------------------------------------------------


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
def chat_completions_url(platform_server: BackgroundServer) -> str:
    component = next(c for c in platform_server.server.components if hasattr(c, "engine"))
    return f"http://127.0.0.1:{component.http.port}/v1/chat/completions"


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
