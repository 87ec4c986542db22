"""Structured output (`response_format`) and the honest OpenAI surface (#17 points 5 and 6).

The model is tiny-qwen2 with RANDOM weights: left alone it writes no JSON at all, so every reply below
that parses and matches its schema does so because the constraint (llguidance, `structured.py`) only
let the engine choose tokens the grammar allows. The schemas bound their strings and arrays
(`maxLength`, `maxItems`), as a random model would otherwise wander inside an unbounded string until
`max_tokens` (the reply then ends with `finish_reason: length`, which is documented, not hidden).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from conftest import ACME_KEY, MODEL_CACHE, make_settings

from tuneforge.chat import ChatRenderer
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.common.errors import InvalidArgument
from tuneforge.inference import structured
from tuneforge.inference.base_model import load_base_model
from tuneforge.inference.engine import Engine, Event, Request, Sampling
from tuneforge.inference.openai_types import parse_chat_request
from tuneforge.inference.structured import GRAMMARS, JsonConstraint, ResponseFormat, response_format
from tuneforge.models import ModelResolver
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import common_pb2, inference_pb2

MAX_TOKENS = 300
CHECKER = jsonschema.FormatChecker()
#: The schemas every reply must follow (bounded strings and arrays; benchmarks/structured_output.py uses them too).
SUITE: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "assets" / "json_schemas.json").read_text())
PERSON = SUITE["required_keys"]
MESSAGES = [("system", "You answer in JSON."), ("user", "Describe a person.")]


def _valid(text: str, schema: dict[str, Any]) -> Any:
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=CHECKER)
    return value


# -- the schema, checked without a model -------------------------------------------------------------


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
        ({"type": "integer", "minimum": 5, "maximum": 3}, "minimum (5) is greater than maximum (3)"),
        ({"type": "string", "format": "bogus"}, "Unknown format: bogus"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "/$defs/missing"),
        ("[1, 2]", "must be a JSON schema object"),
        ("{not json", "is not JSON"),
        ("", "is required"),
    ],
)
def test_a_schema_the_library_cannot_enforce_is_invalid_argument_naming_the_field(schema: Any, reason: str) -> None:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    with pytest.raises(InvalidArgument) as refused:
        response_format("json_schema", text, field="response_format.json_schema")
    assert refused.value.violations[0].field == "response_format.json_schema"
    assert reason in refused.value.message, refused.value.message
    with pytest.raises(InvalidArgument) as unknown:
        response_format("yaml", "", field="response_format.json_schema")
    assert unknown.value.violations[0].field == "response_format.type"


# -- the engine, on a random-weight model -------------------------------------------------------------


@pytest.fixture(scope="module")
def base():  # the embedded tiny-qwen2: random weights, the real Qwen2.5 tokenizer
    return load_base_model(ModelResolver(MODEL_CACHE), "tiny-qwen2", "float32", "cpu")


@pytest.fixture(scope="module")
def engine(base) -> Iterator[Engine]:
    engine = Engine(base.model, base.tokenizer, max_adapters=1, max_rank=8, max_batch_size=32)
    yield engine
    engine.stop()


def _prompt(tokenizer: Any, messages=MESSAGES) -> list[int]:
    rendered = ChatRenderer(tokenizer).render(
        [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True
    )
    return rendered.input_ids


def _run_all(engine: Engine, requests: list[tuple[list[int], Sampling, Any]]) -> list[tuple[str, Event]]:
    """Submits every (prompt, sampling, constraint) at once (they decode side by side); their (text, final event)."""
    results: list[tuple[str, Event] | None] = [None] * len(requests)
    finished = [threading.Event() for _ in requests]
    parts: list[list[str]] = [[] for _ in requests]

    def emitter(index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            parts[index].append(event.delta)
            if event.finish_reason:
                results[index] = ("".join(parts[index]), event)
                finished[index].set()

        return emit

    for index, (prompt, sampling, constraint) in enumerate(requests):
        engine.submit(Request(list(prompt), None, sampling, emitter(index), constraint=constraint))
    for index, done in enumerate(finished):
        assert done.wait(300), f"request {index} never finished"
    return [result for result in results if result is not None]


def _constraint(engine: Engine, fmt: ResponseFormat) -> JsonConstraint:
    return GRAMMARS.constraint(fmt, engine.tokenizer, engine.stop_ids)


def test_every_schema_of_the_suite_parses_and_validates_greedy_and_sampled(engine: Engine, base) -> None:
    prompt = _prompt(base.tokenizer)
    cases = [(name, temperature) for name in SUITE for temperature in (0.0, 0.9)]
    requests = [
        (
            prompt,
            Sampling(temperature=temperature, max_tokens=MAX_TOKENS, seed=7),
            _constraint(engine, response_format("json_schema", SUITE[name], field="schema")),
        )
        for name, temperature in cases
    ]
    # the control: the same model and prompt without a constraint write no JSON at all
    requests.append((prompt, Sampling(max_tokens=40), None))
    *answers, (free_text, _) = _run_all(engine, requests)
    with pytest.raises(ValueError):
        json.loads(free_text)
    for (name, temperature), (text, final) in zip(cases, answers, strict=True):
        assert final.finish_reason == "stop", (name, temperature, final, text)
        _valid(text, SUITE[name])
        assert 0 < final.completion_tokens < MAX_TOKENS
    # sampling really sampled: the temperature answers are not all the greedy ones
    assert [answers[i][0] for i in range(0, len(answers), 2)] != [answers[i][0] for i in range(1, len(answers), 2)]


def test_json_object_output_parses(engine: Engine, base) -> None:
    """Any JSON object: greedy, and sampled with several seeds. `{"type": "object"}` bounds nothing, so a
    sampled random model may wander inside a key until `max_tokens` (`length`): every answer that ends
    with `stop` parses, and one cut by `length` used every token it was given."""
    prompt = _prompt(base.tokenizer)
    samplings = [Sampling(max_tokens=MAX_TOKENS)] + [
        Sampling(temperature=0.9, max_tokens=MAX_TOKENS, seed=seed) for seed in range(6)
    ]
    fmt = response_format("json_object", field="response_format")
    answers = _run_all(engine, [(prompt, s, _constraint(engine, fmt)) for s in samplings])
    assert answers[0][1].finish_reason == "stop" and isinstance(json.loads(answers[0][0]), dict)
    stopped = [text for text, final in answers if final.finish_reason == "stop"]
    assert len(stopped) >= 2, answers
    assert all(isinstance(json.loads(text), dict) for text in stopped)
    assert all(final.completion_tokens == MAX_TOKENS for _, final in answers if final.finish_reason != "stop")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_the_end_of_the_reply_is_allowed_exactly_where_the_json_may_end(engine: Engine) -> None:
    tokenizer, stops = engine.tokenizer, sorted(engine.stop_ids)
    vocab = engine.model.get_output_embeddings().weight.shape[0]

    def allowed(constraint: JsonConstraint) -> torch.Tensor:
        logits = torch.zeros(vocab)
        constraint.mask(logits)
        return logits > float("-inf")

    array = _constraint(engine, response_format("json_schema", SUITE["top_level_array"], field="s"))
    for token in _ids(tokenizer, "[true"):
        assert not array.done()
        array.accept(token)
    ok = allowed(array)
    assert not ok[stops].any() and not array.done()  # the array is still open
    # every way of applying the mask agrees: numpy in place (float32 on CPU), torch on CPU (bfloat16), the
    # bitmask unpacked on the logits' device (what a GPU runs, here on the CPU)
    wide = torch.randn(vocab + 7)
    half = wide.to(torch.bfloat16)
    array.mask(wide)
    array.mask(half)
    assert torch.equal(torch.isinf(wide), torch.isinf(half.float()))
    assert torch.equal(torch.isinf(wide[:vocab]), array.forbidden_on(torch.device("cpu"), vocab))
    assert torch.isinf(wide[vocab:]).all()
    assert ok[_ids(tokenizer, ",")[0]] and ok[_ids(tokenizer, "]")[0]]
    array.accept(_ids(tokenizer, "]")[0])
    ok = allowed(array)
    assert array.done() and ok[stops].all() and int(ok.sum()) == len(stops)  # nothing but the end may follow

    number = _constraint(engine, response_format("json_schema", {"type": "integer", "maximum": 99}, field="s"))
    number.accept(_ids(tokenizer, "4")[0])
    ok = allowed(number)
    assert ok[stops].all() and ok[_ids(tokenizer, "2")[0]] and not number.done()  # 4 may end, or be 42
    number.accept(_ids(tokenizer, "2")[0])
    assert number.done()  # 42: a third digit would pass 99
    with pytest.raises(RuntimeError, match="refused token"):  # a token the grammar did not allow
        number.accept(_ids(tokenizer, "7")[0])


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer (49,152 ids, another BPE than Qwen's), from the embedded model package."""
    from transformers import AutoTokenizer

    from tuneforge.models.embedded import SMOLLM2_PACKAGE, package_file

    gguf = package_file(SMOLLM2_PACKAGE)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def test_smollm2_s_tokenizer_and_a_model_vocabulary_wider_than_it(smollm2_tokenizer) -> None:
    """A random Llama whose embedding has 64 more rows than the tokenizer has ids (as padded vocabularies
    do): those ids are masked too, and the replies follow the schemas."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    engine = Engine(model, tokenizer, max_adapters=1, max_rank=8, max_batch_size=16)
    try:
        constraint = _constraint(engine, response_format("json_schema", PERSON, field="s"))
        logits = torch.full((config.vocab_size,), 100.0)
        constraint.mask(logits)
        assert torch.isinf(logits[len(tokenizer) :]).all()  # the padding rows: never chosen
        first = (~torch.isinf(logits)).nonzero().flatten().tolist()
        assert first and all(tokenizer.decode([i]).startswith("{") for i in first)
        prompt = _prompt(tokenizer)
        names = ["required_keys", "nested_objects", "patterns_and_formats", "refs"]
        requests = [
            (prompt, Sampling(temperature=t, max_tokens=MAX_TOKENS, seed=5), None) for _ in names for t in (0.0, 0.9)
        ]
        requests = [
            (p, s, _constraint(engine, response_format("json_schema", SUITE[names[i // 2]], field="s")))
            for i, (p, s, _) in enumerate(requests)
        ]
        for i, (text, final) in enumerate(_run_all(engine, requests)):
            assert final.finish_reason == "stop", (names[i // 2], text)
            _valid(text, SUITE[names[i // 2]])
    finally:
        engine.stop()


# -- gRPC and HTTP, on a real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys_file: Path) -> Iterator[BackgroundServer]:
    """The inference service alone (tiny-qwen2 as its base model), gRPC and OpenAI HTTP on free ports."""
    from tuneforge.inference.server import InferenceComponent

    settings = make_settings(tmp_path_factory.mktemp("structured"), keys_file)
    server = BackgroundServer(settings, [InferenceComponent])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def component(server: BackgroundServer):
    return server.server.components[0]


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[TuneforgeClient]:
    with TuneforgeClient(server.address, api_key=ACME_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def http_url(component) -> str:
    return f"http://127.0.0.1:{component.http.port}/v1"


def _schema_format(schema: Any) -> inference_pb2.ResponseFormat:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    return inference_pb2.ResponseFormat(
        type=inference_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=text, name="person"
    )


def _grpc_request(kind=inference_pb2.GenerateRequest, response_format=None, max_tokens: int = MAX_TOKENS, **sampling):
    return kind(
        model="",
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in MESSAGES],
        sampling=inference_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
        response_format=response_format,
    )


def test_grpc_generate_and_stream_follow_the_schema(client: TuneforgeClient, base) -> None:
    for name in ("required_keys", "array_of_objects", "patterns_and_formats"):
        answer = client.call(client.inference.Generate, _grpc_request(response_format=_schema_format(SUITE[name])))
        assert answer.finish_reason == inference_pb2.FINISH_REASON_STOP, answer
        _valid(answer.text, SUITE[name])
        assert answer.usage.prompt_tokens == len(_prompt(base.tokenizer))  # the rendered prompt's ids, exactly
        streamed = list(
            client.stream(
                client.inference.GenerateStream,
                _grpc_request(inference_pb2.GenerateStreamRequest, _schema_format(SUITE[name])),
            )
        )
        assert "".join(m.delta for m in streamed) == answer.text  # greedy: the same reply
        assert streamed[-1].finish_reason == inference_pb2.FINISH_REASON_STOP
        assert streamed[-1].usage == answer.usage
    any_object = client.call(
        client.inference.Generate,
        _grpc_request(
            response_format=inference_pb2.ResponseFormat(type=inference_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        ),
    )
    assert any_object.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert isinstance(json.loads(any_object.text), dict)
    text = client.call(
        client.inference.Generate,
        _grpc_request(
            response_format=inference_pb2.ResponseFormat(type=inference_pb2.RESPONSE_FORMAT_TYPE_TEXT), max_tokens=30
        ),
    )
    with pytest.raises(ValueError):  # free text from a random model: no JSON
        json.loads(text.text)


def test_grpc_refuses_a_schema_it_cannot_enforce_naming_the_field(client: TuneforgeClient) -> None:
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    for schema, reason in ((unique, "uniqueItems"), ("{oops", "is not JSON"), ("", "is required")):
        with pytest.raises(TuneforgeError) as refused:
            client.call(client.inference.Generate, _grpc_request(response_format=_schema_format(schema)))
        assert refused.value.code == "INVALID_ARGUMENT", refused.value
        assert refused.value.violations[0][0] == "response_format.json_schema" and reason in refused.value.message
    with pytest.raises(TuneforgeError) as bad_type:
        client.call(client.inference.Generate, _grpc_request(response_format=inference_pb2.ResponseFormat(type=9)))
    assert bad_type.value.code == "INVALID_ARGUMENT" and bad_type.value.violations[0][0] == "response_format.type"


def _openai(http_url: str):
    import openai

    return openai.OpenAI(base_url=http_url, api_key=ACME_KEY, max_retries=0)


def _openai_messages() -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in MESSAGES]


def test_the_openai_client_gets_json_that_follows_the_schema(http_url: str, base) -> None:
    chat = _openai(http_url)
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answer = chat.chat.completions.create(
        model="tiny-qwen2",
        messages=_openai_messages(),
        max_tokens=MAX_TOKENS,
        temperature=0,
        response_format=schema_format,
    )
    assert answer.choices[0].finish_reason == "stop"
    _valid(answer.choices[0].message.content, PERSON)
    prompt_tokens = len(_prompt(base.tokenizer))
    assert answer.usage.prompt_tokens == prompt_tokens
    assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens

    chunks = list(
        chat.chat.completions.create(
            model="tiny-qwen2",
            messages=_openai_messages(),
            max_tokens=MAX_TOKENS,
            temperature=0,
            response_format=schema_format,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    *content, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop" and all(c.usage is None for c in [*content, finish])
    assert usage.choices == [] and usage.usage == answer.usage  # as OpenAI: a last chunk of its own
    plain = list(
        chat.chat.completions.create(model="tiny-qwen2", messages=_openai_messages(), max_tokens=3, stream=True)
    )
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason in ("stop", "length")

    for seed in (1, 2):
        sampled = chat.chat.completions.create(
            model="tiny-qwen2",
            messages=_openai_messages(),
            max_tokens=MAX_TOKENS,
            temperature=0.9,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "points", "schema": SUITE["refs"]}},
        )
        _valid(sampled.choices[0].message.content, SUITE["refs"])
    any_object = chat.chat.completions.create(
        model="tiny-qwen2",
        messages=_openai_messages(),
        max_tokens=MAX_TOKENS,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert any_object.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(any_object.choices[0].message.content), dict)
    cut = chat.chat.completions.create(
        model="tiny-qwen2", messages=_openai_messages(), max_tokens=4, response_format=schema_format
    )
    # a reply cut by max_tokens says so (and counts exactly what it was given)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 4


def _raw(url: str, body: Any, method: str = "POST") -> tuple[int, Any, str]:
    """(status, JSON body or None, raw text) of one request with acme's key."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text), text
    except ValueError:
        return status, None, text


def _chat_body(**changes: Any) -> dict[str, Any]:
    return {"model": "tiny-qwen2", "messages": _openai_messages(), "max_tokens": 4, **changes}


@pytest.mark.parametrize(
    "schema, reason",
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "pattern": "(?=x)"}, "look-around"),
        ([1], "must be an object"),
        (None, "is required"),
    ],
)
def test_http_refuses_a_schema_it_cannot_enforce_naming_the_param(http_url: str, schema: Any, reason: str) -> None:
    body = _chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    status, answer, _ = _raw(f"{http_url}/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "response_format.json_schema.schema"
    assert reason in error["message"], error


@pytest.mark.parametrize(
    "change, param",
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"logit_bias": {"1": 10}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"web_search_options": {}}, None),  # off: accepted
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"top_k": 5}, "top_k"),  # not an OpenAI parameter at all
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_object", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": "1"}]}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}]}, "messages[0].tool_call_id"),
        # off values and harmless ones, as clients that send every field send them
        ({"tools": [], "logprobs": False, "n": 1, "presence_penalty": 0, "user": "u-1", "service_tier": "auto"}, None),
    ],
)
def test_unsupported_parameters_answer_400_naming_them(http_url: str, change: dict, param: str | None) -> None:
    status, answer, _ = _raw(f"{http_url}/chat/completions", _chat_body(**change))
    if param is None:
        assert status == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length"), answer
        return
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param, answer


def test_the_openai_client_sees_refusals_as_bad_requests(http_url: str) -> None:
    import openai

    chat = _openai(http_url)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    for kwargs, param in (({"tools": tools}, "tools"), ({"logprobs": True}, "logprobs"), ({"n": 3}, "n")):
        with pytest.raises(openai.BadRequestError) as refused:
            chat.chat.completions.create(model="tiny-qwen2", messages=_openai_messages(), max_tokens=2, **kwargs)
        assert refused.value.body["param"] == param


def test_parse_errors_name_the_parameter_whatever_the_nesting() -> None:
    cases = {
        b"[]": "body",
        b"{": "body",
        json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(): (
            "messages[0].content[0]"
        ),
        json.dumps({"messages": [], "stream": "yes"}).encode(): "stream",
        json.dumps({"messages": [], "stream": True, "stream_options": {"include_usage": 1}}).encode(): (
            "stream_options.include_usage"
        ),
        json.dumps({"messages": [], "response_format": {"type": "json_schema", "json_schema": []}}).encode(): (
            "response_format.json_schema"
        ),
        json.dumps({"messages": [], "metadata": {"k": 1}}).encode(): "metadata",
    }
    for raw, param in cases.items():
        with pytest.raises(InvalidArgument) as refused:
            parse_chat_request(raw)
        assert refused.value.violations[0].field == param, (raw, refused.value)


def _sse(http_url: str, body: dict[str, Any]) -> tuple[int, list[Any]]:
    """(status, the data of each server-sent event) of a streamed chat completion."""
    status, _, text = _raw(f"{http_url}/chat/completions", {**body, "stream": True})
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return status, events


class _FailingConstraint:
    """A real constraint that fails once `after` tokens went through it: an engine error mid-answer."""

    def __init__(self, inner: JsonConstraint, after: int) -> None:
        self.inner, self.left = inner, after

    def mask(self, logits: torch.Tensor) -> None:
        self.inner.mask(logits)

    def accept(self, token: int) -> None:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("grammar state lost (test)")
        self.inner.accept(token)

    def done(self) -> bool:
        return self.inner.done()


def test_an_engine_error_mid_stream_ends_the_stream_with_an_error(
    http_url: str, client: TuneforgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    real = GRAMMARS.constraint
    monkeypatch.setattr(GRAMMARS, "constraint", lambda *args: _FailingConstraint(real(*args), after=4))
    body = _chat_body(
        max_tokens=MAX_TOKENS,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
    )
    status, events = _sse(http_url, body)
    assert status == 200  # the failure came after the first bytes
    chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)  # some text went out first
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # never a finish_reason
    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and "grammar state lost" in errors[0]["message"] and events[-1] == "[DONE]"

    chat = _openai(http_url)
    with pytest.raises(openai.APIError, match="grammar state lost"):
        for _ in chat.chat.completions.create(stream=True, **body):
            pass
    status, answer, _ = _raw(f"{http_url}/chat/completions", body)
    assert status == 503 and "grammar state lost" in answer["error"]["message"], answer

    streamed: list[inference_pb2.GenerateStreamResponse] = []
    with pytest.raises(TuneforgeError) as failed:
        for message in client.stream(
            client.inference.GenerateStream,
            _grpc_request(inference_pb2.GenerateStreamRequest, _schema_format(PERSON)),
        ):
            streamed.append(message)
    assert failed.value.code == "UNAVAILABLE" and "grammar state lost" in failed.value.message
    assert streamed and all(m.finish_reason == inference_pb2.FINISH_REASON_UNSPECIFIED for m in streamed)


def test_a_cancelled_answer_never_ends_with_stop(
    http_url: str, client: TuneforgeClient, component, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine cancels a request mid-answer (as at shutdown): the reply ends with an error, not `stop`."""
    engine: Engine = component.engine
    real_submit = engine.submit

    def submit(request: Request) -> None:
        emit, seen = request.emit, []

        def counting(event: Event) -> None:
            seen.append(event)
            if len(seen) == 2:
                request.cancelled.set()  # the engine ends the row at its next step
            emit(event)

        request.emit = counting
        real_submit(request)

    monkeypatch.setattr(engine, "submit", submit)
    body = _chat_body(max_tokens=MAX_TOKENS, temperature=0)
    status, events = _sse(http_url, body)
    chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
    assert status == 200 and all(c["choices"][0]["finish_reason"] is None for c in chunks), events
    assert [e for e in events if isinstance(e, dict) and "error" in e] and events[-1] == "[DONE]"
    status, answer, _ = _raw(f"{http_url}/chat/completions", body)
    assert status == 503 and "cancelled" in answer["error"]["message"], answer
    with pytest.raises(TuneforgeError) as failed:
        client.call(client.inference.Generate, _grpc_request())
    assert failed.value.code == "UNAVAILABLE" and "cancelled" in failed.value.message


def test_generate_cli_writes_json_that_follows_a_schema_file(server: BackgroundServer, tmp_path: Path) -> None:
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    env = {**os.environ, "TUNEFORGE_ADDRESS": server.address, "TUNEFORGE_API_KEY": ACME_KEY}
    command = [sys.executable, "-m", "tuneforge.cli", "generate", f"--max-tokens={MAX_TOKENS}"]
    for extra in (["--json-schema", str(schema_file)], ["--json", "--no-stream"]):
        result = subprocess.run(
            [*command, *extra, "Describe a person."], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert result.returncode == 0, result.stderr
        value = json.loads(result.stdout)
        if "--json-schema" in extra:
            jsonschema.validate(value, PERSON)
        assert isinstance(value, dict)


# -- the cluster path: front -> Serve's HTTP proxy -> replica --------------------------------------------


def test_response_format_travels_to_the_serve_replicas(local_ray, base, tmp_path: Path, keys_file: Path) -> None:
    """The front (no model) sends response_format with the request; the replica builds the constraint for
    its engine's tokenizer. A schema the library refuses is a 400 naming the field at the replica too."""
    import openai
    from ray import serve

    from tuneforge.inference import wire
    from tuneforge.inference.serve_app import InferenceReplica
    from tuneforge.inference.server import InferenceComponent
    from tuneforge.training.cluster import _free_port

    base_settings = make_settings(tmp_path / "replica", keys_file)
    settings = {
        "home": str(base_settings.home),
        "database_url": base_settings.database_url,
        "artifact_root": str(base_settings.artifact_root),
        "auth": {"mode": "api_keys", "keys_file": str(keys_file)},
        "models": {"cache_dir": str(MODEL_CACHE)},
        "inference": {"base_model": "tiny-qwen2", "max_adapters": 1},
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}/tuneforge-structured-test"
    serve.shutdown()  # Serve keeps the proxy port it first started with: another module may have started it
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        InferenceReplica.options(ray_actor_options={"num_cpus": 0}).bind(settings),
        name="tuneforge-structured-test",
        route_prefix="/tuneforge-structured-test",
    )
    front = BackgroundServer(
        make_settings(
            tmp_path / "front",
            keys_file,
            database_url=base_settings.database_url,
            artifact_root=str(base_settings.artifact_root),
            inference={"base_model": "tiny-qwen2", "serve_url": url, "serve_retry_s": 60, "http_port": 0},
        ),
        [InferenceComponent],
    )
    try:
        fmt = response_format("json_schema", SUITE["nested_objects"], field="response_format.json_schema")
        body = wire.request_body("acme", _prompt(base.tokenizer), Sampling(max_tokens=MAX_TOKENS), fmt)
        status, _, text = _raw(f"{url}/generate", body)
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert status == 200 and events[-1]["finish_reason"] == "stop", events
        _valid("".join(e["delta"] for e in events), SUITE["nested_objects"])
        broken = {**body, "response_format": {**body["response_format"], "schema": '{"not": {}}'}}
        status, refused, _ = _raw(f"{url}/generate", broken)
        assert status == 400 and refused["error"]["violations"][0]["field"] == "response_format.json_schema"

        with TuneforgeClient(front.address, api_key=ACME_KEY) as via_front:
            answer = via_front.call(
                via_front.inference.Generate, _grpc_request(response_format=_schema_format(SUITE["refs"]))
            )
        assert answer.finish_reason == inference_pb2.FINISH_REASON_STOP
        _valid(answer.text, SUITE["refs"])
        chat = openai.OpenAI(
            base_url=f"http://127.0.0.1:{front.server.components[0].http.port}/v1", api_key=ACME_KEY, max_retries=0
        )
        streamed = chat.chat.completions.create(
            model="tiny-qwen2",
            messages=_openai_messages(),
            max_tokens=MAX_TOKENS,
            temperature=0.9,
            seed=3,
            stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        )
        _valid("".join(c.choices[0].delta.content or "" for c in streamed if c.choices), PERSON)
    finally:
        front.stop()
        serve.shutdown()


def test_grammars_are_cached_per_tokenizer_and_schema(engine: Engine) -> None:
    cache = structured.GrammarCache(max_grammars=2)
    fmt = response_format("json_schema", PERSON, field="s")
    first = cache.constraint(fmt, engine.tokenizer, engine.stop_ids)
    first.accept(_ids(engine.tokenizer, "{")[0])
    second = cache.constraint(fmt, engine.tokenizer, engine.stop_ids)  # a fresh state from the cached grammar
    assert len(cache._grammars) == 1 and len(cache._tokenizers) == 1
    with pytest.raises(RuntimeError):
        second.accept(_ids(engine.tokenizer, '"')[0])  # a reply must open with "{", whatever `first` consumed
    for name in ("enums", "refs", "required_keys"):
        cache.constraint(response_format("json_schema", SUITE[name], field="s"), engine.tokenizer, engine.stop_ids)
    assert len(cache._grammars) == 2  # bounded
