"""InferenceService over gRPC on tiny-qwen2: per-request adapters in mixed batches, LRU, hot swap, tenancy.

Adapters are random PEFT LoRA adapters (random A and B, so each one changes the output) registered
in the session server's registry as a training job would. Expected outputs come from PEFT itself:
the adapter loaded alone with `PeftModel`, greedy `generate`.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import ACME_KEY, GLOBEX_KEY, MODEL_CACHE

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.chat import ChatRenderer
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.inference.engine import Engine, Request, Sampling
from tuneforge.models import ModelResolver, template_hash
from tuneforge.platform import BackgroundServer
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.v1 import common_pb2, inference_pb2

pytestmark = pytest.mark.slow
MESSAGES = [("system", "You are terse."), ("user", "Name three colours.")]
OTHER = [("user", "Count from one to five, please, in words.")]
TOKENS = 10


@pytest.fixture(scope="module")
def resolver() -> ModelResolver:
    return ModelResolver(MODEL_CACHE)


@pytest.fixture(scope="module")
def tokenizer(resolver: ModelResolver):
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


def _fresh_model(resolver: ModelResolver):
    return resolver.load_model(resolver.resolve("tiny-qwen2"), dtype="float32", device="cpu")


def _make_adapter(resolver: ModelResolver, seed: int, targets, rank: int = 8) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        _fresh_model(resolver),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False),
    )
    out = Path(tempfile.mkdtemp(prefix=f"adapter-{seed}-"))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def registry(platform_server: BackgroundServer, server_settings) -> AdapterRegistry:
    return AdapterRegistry(MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root))


@pytest.fixture(scope="module")
def adapters(resolver: ModelResolver, tokenizer, registry: AdapterRegistry) -> dict[str, Path]:
    """Random adapters registered for acme: alpha, beta, gamma, and bot:1 / bot:2 (alias prod → 1)."""
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer), "job_id": "job-test"}
    made = {
        "alpha": _make_adapter(resolver, 1, ["q_proj", "v_proj"]),
        "beta": _make_adapter(resolver, 2, "all-linear"),
        "gamma": _make_adapter(resolver, 3, ["gate_proj", "down_proj"], rank=4),
        "bot1": _make_adapter(resolver, 4, "all-linear"),
        "bot2": _make_adapter(resolver, 5, "all-linear"),
    }
    for name in ("alpha", "beta", "gamma"):
        registry.register("acme", name, made[name], lineage)
    registry.register("acme", "bot", made["bot1"], lineage)
    registry.register("acme", "bot", made["bot2"], lineage)
    registry.set_alias("acme", "bot", "prod", 1)
    return made


def _prompt(tokenizer, messages) -> list[int]:
    return (
        ChatRenderer(tokenizer)
        .render([{"role": r, "content": c} for r, c in messages], add_generation_prompt=True)
        .input_ids
    )


def _expected(resolver: ModelResolver, tokenizer, adapter: Path | None, messages, tokens: int = TOKENS) -> str:
    """What PEFT itself generates greedily with this adapter alone (cut at the end-of-turn token)."""
    from peft import PeftModel

    model = _fresh_model(resolver)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = _prompt(tokenizer, messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    new = out[0, len(ids) :].tolist()
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for i, token in enumerate(new):
        if token in stops:
            new = new[:i]
            break
    return tokenizer.decode(new, skip_special_tokens=True)


def _request(model: str, messages=MESSAGES, **sampling) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=inference_pb2.SamplingParams(max_tokens=sampling.pop("max_tokens", TOKENS), **sampling),
    )


def _generate(client: TuneforgeClient, model: str, messages=MESSAGES, **sampling) -> inference_pb2.GenerateResponse:
    return client.call(client.inference.Generate, _request(model, messages, **sampling))


@contextmanager
def _one_batch(engine: Engine, expected: int) -> Iterator[list[list[str | None]]]:
    """Holds the engine's generation thread in a request of the test's own until `expected` more are queued.

    The requests the block sends are then all waiting when the engine forms its next batch. Yields the
    adapter keys of the running batch at every step after the held one (the engine's own record, from
    `_step`): the first of them holds every request admitted together.
    """
    batches: list[list[str | None]] = []
    holding, plug_done = threading.Event(), threading.Event()
    plug = Request([1], None, Sampling(max_tokens=1), lambda event: event.finish_reason and plug_done.set())
    real = Engine._step

    def step(self: Engine) -> None:
        batch = [row.request for row in self._running]
        if any(request is plug for request in batch):
            holding.set()
            deadline = time.monotonic() + 120  # past it the batch goes on, and the caller's assertion fails
            while self.queue_depth() < expected and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            batches.append([request.adapter_key for request in batch])
        real(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "_step", step)
        engine.submit(plug)
        assert holding.wait(60), "the engine never took the test's own request"
        yield batches
        assert plug_done.wait(60)


def test_each_adapter_alone_and_in_a_mixed_batch_gives_peft_s_tokens(
    platform_server: BackgroundServer, adapters: dict[str, Path], resolver: ModelResolver, tokenizer
) -> None:
    cases = [
        ("", None, MESSAGES),
        ("alpha", adapters["alpha"], MESSAGES),
        ("beta", adapters["beta"], OTHER),
        ("gamma", adapters["gamma"], MESSAGES),
        ("alpha:1", adapters["alpha"], OTHER),
    ]
    expected = [_expected(resolver, tokenizer, path, messages) for _, path, messages in cases]
    assert len(set(expected)) >= 4  # the adapters really change the output
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        alone = [_generate(client, model, messages).text for model, _, messages in cases]
        assert alone == expected
        # all at once: held behind a request of the test's own, they reach the engine's queue together
        # and decode in one batch, one row per adapter (and the base)
        engine = next(c for c in platform_server.server.components if hasattr(c, "engine")).engine
        calls = len(cases) * 2
        together: dict[int, str] = {}

        def run(index: int) -> None:
            model, _, messages = cases[index % len(cases)]
            together[index] = _generate(client, model, messages).text

        with _one_batch(engine, calls) as batches:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(calls)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
    assert len(batches[0]) == calls, batches  # the rows really shared one batch from their first step
    assert len(set(batches[0])) == 4, batches  # the base model and three adapters side by side
    assert [together[i] for i in range(len(cases) * 2)] == expected * 2


def test_streaming_gives_the_same_text_with_model_first_and_usage_last(
    acme: TuneforgeClient, adapters: dict[str, Path]
) -> None:
    whole = _generate(acme, "beta", max_tokens=16)
    request = inference_pb2.GenerateStreamRequest(
        **{f: getattr(_request("beta", max_tokens=16), f) for f in ("model", "messages", "sampling")}
    )
    chunks = list(acme.stream(acme.inference.GenerateStream, request, timeout=120))
    assert chunks[0].resolved_model == "beta:1" and whole.resolved_model == "beta:1"
    assert "".join(c.delta for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason != 0
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0
    assert whole.usage.prompt_tokens > 10


def test_lru_eviction_and_reload_keep_answers_right(
    acme: TuneforgeClient, adapters: dict[str, Path], resolver: ModelResolver, tokenizer, platform_server
) -> None:
    from tuneforge.inference.engine import ADAPTER_EVICTIONS

    engine = next(c for c in platform_server.server.components if hasattr(c, "engine")).engine
    evictions = ADAPTER_EVICTIONS._value.get()
    paths = {
        "alpha": adapters["alpha"],
        "beta": adapters["beta"],
        "gamma": adapters["gamma"],
        "bot:1": adapters["bot1"],
    }
    want = {name: _expected(resolver, tokenizer, path, MESSAGES) for name, path in paths.items()}
    for name in ("alpha", "beta", "gamma", "bot:1", "alpha", "gamma", "beta"):  # 4 adapters through 3 slots
        assert _generate(acme, name).text == want[name]
        assert len(engine.loaded()) <= 3
    assert ADAPTER_EVICTIONS._value.get() - evictions >= 3


def test_moving_an_alias_under_load_swaps_versions_without_a_failed_request(
    acme: TuneforgeClient, adapters: dict[str, Path], registry: AdapterRegistry
) -> None:
    seen: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                seen.append(_generate(acme, "bot:prod", max_tokens=4).resolved_model)
            except Exception as exc:
                errors.append(exc)

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            assert not errors, errors
            assert time.monotonic() < deadline, f"{what}: answers so far {seen}"
            threading.Event().wait(0.05)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: seen.count("bot:1") >= 3, "prod never answered with version 1")
        registry.set_alias("acme", "bot", "prod", 2)
        moved_at = len(seen)
        wait_for(lambda: seen[moved_at:].count("bot:2") >= 3, "prod never moved to version 2")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors
    # requests that started before the move may still finish on v1; none after the first v2 answer
    after = seen[seen.index("bot:2") :]
    assert set(seen) == {"bot:1", "bot:2"} and after.count("bot:1") <= len(threads)


def test_tenants_reach_only_their_own_adapters(
    globex: TuneforgeClient, acme: TuneforgeClient, adapters: dict[str, Path]
) -> None:
    with pytest.raises(TuneforgeError) as denied:
        _generate(globex, "alpha")
    assert denied.value.code == "NOT_FOUND"
    theirs = {m.name for m in globex.list_models()}
    assert "tiny-qwen2" in theirs and not theirs & {"alpha", "beta", "gamma", "bot", "bot:prod"}
    names = {m.name for m in acme.list_models()}
    assert {"tiny-qwen2", "alpha", "beta", "gamma", "bot", "bot:prod"} <= names


def test_a_mismatched_or_corrupted_adapter_is_refused_and_the_replica_serves_on(
    acme: TuneforgeClient, adapters: dict[str, Path], registry: AdapterRegistry, resolver, tokenizer
) -> None:
    foreign = {"base_model": "smollm2-135m-instruct", "template_hash": "0" * 64}
    registry.register("acme", "foreign", adapters["alpha"], foreign)
    with pytest.raises(TuneforgeError) as mismatch:
        _generate(acme, "foreign")
    assert mismatch.value.code == "FAILED_PRECONDITION" and "smollm2-135m-instruct" in mismatch.value.message

    other_template = {"base_model": "tiny-qwen2", "template_hash": "f" * 64}
    registry.register("acme", "retemplated", adapters["alpha"], other_template)
    with pytest.raises(TuneforgeError) as template:
        _generate(acme, "retemplated")
    assert template.value.code == "FAILED_PRECONDITION" and "chat template" in template.value.message

    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer)}
    broken = registry.register("acme", "broken", adapters["gamma"], lineage)
    stored = registry.artifacts.for_tenant("acme").path(broken.artifact_key) / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-7] + b"garbage")
    with pytest.raises(TuneforgeError) as corrupted:
        _generate(acme, "broken")
    assert corrupted.value.code == "FAILED_PRECONDITION" and "corrupted" in corrupted.value.message
    stored.unlink()
    with pytest.raises(TuneforgeError) as missing:
        _generate(acme, "broken")
    assert missing.value.code == "FAILED_PRECONDITION" and "missing" in missing.value.message

    # rank beyond what the replica serves: validated before it touches a slot
    big = _make_adapter(resolver, 9, ["q_proj"], rank=128)
    registry.register("acme", "too-big", big, lineage)
    with pytest.raises(TuneforgeError) as rank:
        _generate(acme, "too-big")
    assert rank.value.code == "FAILED_PRECONDITION" and "rank 128" in rank.value.message
    assert _generate(acme, "alpha").text == _expected(resolver, tokenizer, adapters["alpha"], MESSAGES)


def test_oversize_and_malformed_requests_are_refused(acme: TuneforgeClient, adapters) -> None:
    # limits that the request itself breaks are INVALID_ARGUMENT naming the field, never a retryable rate limit
    with pytest.raises(TuneforgeError) as too_many:
        _generate(acme, "", max_tokens=100_000)
    assert too_many.value.code == "INVALID_ARGUMENT"
    assert [field for field, _ in too_many.value.violations] == ["sampling.max_tokens"]
    with pytest.raises(TuneforgeError) as long_prompt:
        _generate(acme, "", [("user", "word " * 20_000)])
    # 100,000 bytes is more than any 4096 tokens: refused by its size, before tokenization
    assert long_prompt.value.code == "INVALID_ARGUMENT" and "100000 bytes" in long_prompt.value.message
    assert [field for field, _ in long_prompt.value.violations] == ["messages"]
    with pytest.raises(TuneforgeError) as role:
        _generate(acme, "", [("wizard", "hi")])
    assert role.value.violations == [("messages[0].role", "must be one of system, user, assistant")]
    with pytest.raises(TuneforgeError) as empty:
        _generate(acme, "", [])
    assert empty.value.code == "INVALID_ARGUMENT"
    with pytest.raises(TuneforgeError) as temperature:
        _generate(acme, "", temperature=9.0)
    assert temperature.value.violations[0][0] == "sampling.temperature"


def test_sampling_is_seeded_and_stop_sequences_cut_the_text(acme: TuneforgeClient, adapters) -> None:
    first = _generate(acme, "beta", temperature=1.0, seed=11, max_tokens=12)
    again = _generate(acme, "beta", temperature=1.0, seed=11, max_tokens=12)
    assert first.text == again.text
    greedy = _generate(acme, "beta", max_tokens=12).text
    assert len(greedy) > 3
    stop = greedy[2:4]
    cut = _generate(acme, "beta", max_tokens=12, stop=[stop])
    assert cut.finish_reason == inference_pb2.FINISH_REASON_STOP_SEQUENCE
    assert cut.text == greedy[: greedy.index(stop)]


def test_deleting_a_version_unloads_it(
    acme: TuneforgeClient, adapters, registry: AdapterRegistry, platform_server
) -> None:
    lineage = json.loads(json.dumps(registry.get_version("acme", "alpha", 1).lineage))
    registry.register("acme", "short-lived", adapters["gamma"], lineage)
    _generate(acme, "short-lived")
    component = next(c for c in platform_server.server.components if hasattr(c, "engine"))
    assert "acme/short-lived:1" in component.engine.loaded()
    registry.delete_version("acme", "short-lived", 1)
    import asyncio

    frontend = component.servicer.frontend
    assert asyncio.run_coroutine_threadsafe(frontend.sweep_deleted(), platform_server.loop).result(30) >= 1
    assert "acme/short-lived:1" not in component.engine.loaded()
    with pytest.raises(TuneforgeError) as gone:
        _generate(acme, "short-lived")
    assert gone.value.code == "NOT_FOUND"


@pytest.fixture(scope="module")
def openai_url(platform_server: BackgroundServer) -> str:
    component = next(c for c in platform_server.server.components if hasattr(c, "engine"))
    return f"http://127.0.0.1:{component.http.port}/v1"


def test_the_official_openai_client_works_against_the_http_api(
    openai_url: str, adapters: dict[str, Path], resolver: ModelResolver, tokenizer
) -> None:
    import openai

    client = openai.OpenAI(base_url=openai_url, api_key=ACME_KEY, max_retries=0)
    messages = [{"role": r, "content": c} for r, c in MESSAGES]
    answer = client.chat.completions.create(model="alpha", messages=messages, max_tokens=TOKENS, temperature=0)
    assert answer.choices[0].message.content == _expected(resolver, tokenizer, adapters["alpha"], MESSAGES)
    assert answer.model == "alpha:1" and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens > 0 and answer.usage.total_tokens > answer.usage.prompt_tokens

    stream = client.chat.completions.create(
        model="alpha", messages=messages, max_tokens=TOKENS, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason

    ids = {m.id for m in client.models.list()}
    assert {"tiny-qwen2", "alpha", "bot:prod"} <= ids


def test_http_errors_come_back_in_openai_s_shape(openai_url: str, adapters) -> None:
    import openai

    messages = [{"role": "user", "content": "hi"}]
    other = openai.OpenAI(base_url=openai_url, api_key=GLOBEX_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model="alpha", messages=messages)
    assert "alpha" not in {m.id for m in other.models.list()}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=openai_url, api_key="tf_wrong_key_0000000000", max_retries=0).models.list()
    mine = openai.OpenAI(base_url=openai_url, api_key=ACME_KEY, max_retries=0)
    # over a limit as sent: a 400 naming the parameter, which the client does not retry (a 429 it would)
    with pytest.raises(openai.BadRequestError) as limit:
        mine.chat.completions.create(model="alpha", messages=messages, max_tokens=100_000)
    assert limit.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        mine.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "word " * 20_000}])
    assert long_prompt.value.body["param"] == "messages" and "100000 bytes" in long_prompt.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        mine.chat.completions.create(model="alpha", messages=[{"role": "wizard", "content": "hi"}])
    assert "messages[0].role" in str(bad.value)


def _raw(url: str, body: bytes | None, method: str = "POST") -> tuple[int, dict, dict[str, str]]:
    """(status, JSON body, headers) of one request with acme's key, whatever the status."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, body, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.mark.parametrize(
    "change, param",
    [
        ({"max_tokens": "x"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": [1]}, "top_p"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", 5]}, "stop"),
        ({"seed": "7"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"n": 2}, "n"),
        ({"temperature": 1e400}, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
    ],
)
def test_malformed_openai_fields_answer_400_naming_the_field(openai_url: str, change: dict, param: str) -> None:
    body = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    status, answer, _ = _raw(f"{openai_url}/chat/completions", json.dumps(body).encode())
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param, answer


def test_openai_inputs_people_send_are_understood(openai_url: str) -> None:
    plain = {"model": "tiny-qwen2", "max_tokens": 4, "temperature": 0}
    as_text = {**plain, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    as_parts = {
        **plain,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
    }
    answers = [_raw(f"{openai_url}/chat/completions", json.dumps(b).encode()) for b in (as_text, as_parts)]
    assert [status for status, _, _ in answers] == [200, 200], answers
    # text parts and the developer role render exactly like a plain string and the system role
    assert answers[0][1]["choices"][0]["message"] == answers[1][1]["choices"][0]["message"]
    assert answers[0][1]["usage"] == answers[1][1]["usage"]


def test_http_refusals_of_its_own_come_in_openai_s_shape(openai_url: str) -> None:
    status, answer, _ = _raw(f"{openai_url}/completions", b"{}")
    assert (
        status == 404
        and answer["error"]["type"] == "not_found_error"
        and "/v1/chat/completions" in answer["error"]["message"]
    )
    status, answer, _ = _raw(f"{openai_url}/chat/completions", b"x" * (5 * 2**20))
    assert status == 413 and answer["error"]["type"] == "invalid_request_error" and "MiB" in answer["error"]["message"]
    status, answer, _ = _raw(f"{openai_url}/chat/completions", None, method="GET")
    assert status == 405 and "error" in answer


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, list[dict]]:
    """(status, JSON lines) of one POST to the Serve proxy."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, [json.loads(line) for line in response if line.strip()]
    except urllib.error.HTTPError as error:
        return error.code, [json.loads(error.read())]


def test_the_serve_app_serves_the_front_through_serve_s_http_proxy(
    local_ray, server_settings, adapters: dict[str, Path], resolver: ModelResolver, tokenizer
) -> None:
    """The Serve deployment behind Serve's own HTTP proxy: adapters routed by the multiplexed-model header,
    the serve token required, and the platform's front (no model, no Ray) generating through it — from a
    request it took before Serve even started (retried until the app answered) on."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from conftest import make_settings
    from ray import serve

    from tuneforge.inference.serve_app import InferenceReplica
    from tuneforge.inference.server import InferenceComponent
    from tuneforge.training.cluster import _free_port

    token = "serve-token-for-the-test"
    settings = {
        "home": str(server_settings.home),
        "database_url": server_settings.database_url,
        "artifact_root": str(server_settings.artifact_root),
        "auth": {"mode": "api_keys", "keys_file": str(server_settings.auth.keys_file)},
        "models": {"cache_dir": str(MODEL_CACHE)},
        "inference": {"base_model": "tiny-qwen2", "max_adapters": 2, "serve_token": token},
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}/tuneforge-inference-test"
    # a model version (here: tiny-qwen2 with noise on its weights) with a Serve application of its own
    model_url = f"http://127.0.0.1:{port}/tuneforge-inference-test-model"
    registry = AdapterRegistry(
        MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root)
    )
    model_dir = Path(tempfile.mkdtemp(prefix="served-model-"))
    noisy = _fresh_model(resolver)
    torch.manual_seed(13)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    noisy.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    served = registry.register_model("acme", "served-full", model_dir, {"base_model": "tiny-qwen2"})
    serve_models = {f"acme/{served.ref}": model_url}

    def front_for(serve_token: str, retry_s: float) -> BackgroundServer:
        inference = {
            "base_model": "tiny-qwen2",
            "serve_url": url,
            "serve_token": serve_token,
            "http_port": 0,
            "serve_models": serve_models,
        }
        return BackgroundServer(
            make_settings(
                server_settings.home / f"front-{retry_s}",
                server_settings.auth.keys_file,
                database_url=server_settings.database_url,
                artifact_root=str(server_settings.artifact_root),
                inference={**inference, "serve_retry_s": retry_s, "serve_health_interval_s": 0.5},
            ),
            [InferenceComponent],
        )

    front = front_for(token, retry_s=180)
    client = TuneforgeClient(front.address, api_key=ACME_KEY)
    pool = ThreadPoolExecutor(1)
    try:
        assert client.health("tuneforge.v1.InferenceService") == "NOT_SERVING" and client.health() == "NOT_SERVING"
        early = pool.submit(_generate, client, "alpha")  # Serve is not there yet: the front keeps retrying
        serve.shutdown()  # Serve keeps the proxy port it first started with: another module may have started it
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = InferenceReplica.options(ray_actor_options={"num_cpus": 0}).bind(settings)
        serve.run(app, name="tuneforge-inference-test", route_prefix="/tuneforge-inference-test")
        assert early.result(180).text == _expected(resolver, tokenizer, adapters["alpha"], MESSAGES)
        deadline = time.monotonic() + 30
        while client.health("tuneforge.v1.InferenceService") != "SERVING":  # back by itself
            assert time.monotonic() < deadline, "the front did not report SERVING once Serve answered"
            time.sleep(0.2)

        body = {"tenant": "acme", "prompt_ids": _prompt(tokenizer, MESSAGES), "sampling": {"max_tokens": TOKENS}}
        auth = {"Authorization": f"Bearer {token}"}

        def run(key: str) -> tuple[int, list[dict]]:
            return _post(f"{url}/generate", body, {**auth, "serve_multiplexed_model_id": key} if key else auth)

        status, (refused,) = _post(f"{url}/generate", body, {})
        assert status == 401 and refused["error"]["status"] == "UNAUTHENTICATED", refused
        assert _post(f"{url}/generate", body, {"Authorization": "Bearer wrong"})[0] == 401
        for key, path in (("acme/alpha:1", adapters["alpha"]), ("", None), ("acme/beta:1", adapters["beta"])):
            status, events = run(key)
            assert status == 200, events
            assert "".join(e["delta"] for e in events) == _expected(resolver, tokenizer, path, MESSAGES)
            assert events[-1]["finish_reason"] in ("stop", "length")
        assert events[-1]["model"] == "beta:1"
        status, (mixed,) = run("globex/alpha:1")  # a model id of another tenant than the body's
        assert status == 400 and mixed["error"]["violations"][0]["field"] == "serve_multiplexed_model_id", mixed
        headers = {**auth, "serve_multiplexed_model_id": "globex/alpha:1"}
        status, (missing,) = _post(f"{url}/generate", {**body, "tenant": "globex"}, headers)
        assert status == 404 and missing["error"]["status"] == "NOT_FOUND" and "alpha" in missing["error"]["message"]

        # the platform's gRPC and OpenAI front, with no model of its own, generates through Serve
        for model, path in (("alpha", adapters["alpha"]), ("", None), ("bot:1", adapters["bot1"])):
            answer = _generate(client, model)
            assert answer.text == _expected(resolver, tokenizer, path, MESSAGES), model
        assert answer.resolved_model == "bot:1"
        chunks = list(client.stream(client.inference.GenerateStream, _request("alpha")))
        assert "".join(c.delta for c in chunks) == _expected(resolver, tokenizer, adapters["alpha"], MESSAGES)
        with TuneforgeClient(front.address, api_key=GLOBEX_KEY) as other, pytest.raises(TuneforgeError) as denied:
            _generate(other, "alpha")
        assert denied.value.code == "NOT_FOUND"
        http_port = front.server.components[0].http.port
        chat = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=ACME_KEY, max_retries=0)
        messages = [{"role": r, "content": c} for r, c in MESSAGES]
        stream = chat.chat.completions.create(
            model="beta", messages=messages, max_tokens=TOKENS, temperature=0, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == _expected(resolver, tokenizer, adapters["beta"], MESSAGES)

        # the model version's own application: its replicas hold it as their base; the front routes it there
        serve.run(
            InferenceReplica.options(ray_actor_options={"num_cpus": 0}).bind(
                {**settings, "inference": {**settings["inference"], "serve_model": f"acme/{served.ref}"}}
            ),
            name="tuneforge-inference-test-model",
            route_prefix="/tuneforge-inference-test-model",
        )
        status, direct = _post(f"{model_url}/generate", body, auth)
        assert status == 200 and direct[-1]["model"] == served.ref, direct
        via_front = _generate(client, served.ref)
        assert via_front.text == "".join(e["delta"] for e in direct) != _expected(resolver, tokenizer, None, MESSAGES)
        status, (adapter_there,) = _post(
            f"{model_url}/generate", body, {**auth, "serve_multiplexed_model_id": "acme/alpha:1"}
        )
        assert status == 412 and "this replica serves 'served-full:1'" in adapter_there["error"]["message"]
        status, (other_tenant,) = _post(f"{model_url}/generate", {**body, "tenant": "globex"}, auth)
        assert status == 404 and other_tenant["error"]["status"] == "NOT_FOUND"
        undeployed = registry.register_model("acme", "not-deployed", model_dir, {"base_model": "tiny-qwen2"})
        with pytest.raises(TuneforgeError) as absent:
            _generate(client, undeployed.ref)
        assert absent.value.code == "FAILED_PRECONDITION" and "inference.rayService.models" in absent.value.message
        listed = {m.name: m for m in client.list_models()}
        assert listed["served-full"].loaded and "not-deployed" not in listed

        # a front with another serve token than the replicas': not ready, and UNAVAILABLE saying why
        stranger = front_for("not-the-replicas-token", retry_s=1)
        try:
            with TuneforgeClient(stranger.address, api_key=ACME_KEY) as refused_front:
                assert refused_front.health("tuneforge.v1.InferenceService") == "NOT_SERVING"
                with pytest.raises(TuneforgeError) as unauthorized:
                    _generate(refused_front, "alpha")
            assert unauthorized.value.code == "UNAVAILABLE" and "serve token" in unauthorized.value.message
        finally:
            stranger.stop()
    finally:
        pool.shutdown(wait=False)
        client.close()
        front.stop()
        serve.shutdown()


def test_a_front_without_its_serve_backend_is_not_serving_and_answers_unavailable(
    server_settings, adapters: dict[str, Path]
) -> None:
    """Cluster mode with Serve unreachable: health NOT_SERVING, requests UNAVAILABLE / HTTP 503 after retries."""
    import openai
    from conftest import make_settings

    from tuneforge.inference.server import InferenceComponent
    from tuneforge.training.cluster import _free_port

    url = f"http://127.0.0.1:{_free_port()}/tuneforge-inference"  # nothing listens there
    front_settings = make_settings(
        server_settings.home / "front-down",
        server_settings.auth.keys_file,
        database_url=server_settings.database_url,
        artifact_root=str(server_settings.artifact_root),
        inference={"base_model": "tiny-qwen2", "serve_url": url, "serve_retry_s": 1.0, "http_port": 0},
    )
    front = BackgroundServer(front_settings, [InferenceComponent])
    try:
        with TuneforgeClient(front.address, api_key=ACME_KEY) as client:
            assert client.health("tuneforge.v1.InferenceService") == "NOT_SERVING"
            assert client.health() == "NOT_SERVING"
            with pytest.raises(TuneforgeError) as down:
                _generate(client, "alpha")
            assert down.value.code == "UNAVAILABLE"
            assert url in down.value.message and "attempts" in down.value.message, down.value.message
            with pytest.raises(TuneforgeError) as missing:  # resolved in the front, before Serve is asked
                _generate(client, "no-such-adapter")
            assert missing.value.code == "NOT_FOUND"
        http_port = front.server.components[0].http.port
        chat = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=ACME_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as unavailable:
            chat.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert unavailable.value.status_code == 503 and url in str(unavailable.value)
    finally:
        front.stop()


def test_generate_cli_streams_an_answer(platform_server: BackgroundServer, adapters, resolver, tokenizer) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TUNEFORGE_ADDRESS": platform_server.address, "TUNEFORGE_API_KEY": ACME_KEY}
    command = [sys.executable, "-m", "tuneforge.cli", "generate", "--model=alpha", f"--max-tokens={TOKENS}"]
    command += ["--system", MESSAGES[0][1], MESSAGES[1][1]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == _expected(resolver, tokenizer, adapters["alpha"], MESSAGES)
    assert "tokens]" in result.stderr


def test_chat_cli_keeps_the_conversation(platform_server: BackgroundServer, adapters) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TUNEFORGE_ADDRESS": platform_server.address, "TUNEFORGE_API_KEY": ACME_KEY}
    command = [sys.executable, "-m", "tuneforge.cli", "chat", "--adapter=beta", "--max-tokens=6"]
    result = subprocess.run(
        command, env=env, input="Hello there\nAnd again\n\n", capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "chatting with beta" in result.stderr
    assert result.stdout.count("> ") == 3  # two answered turns, then the empty line ends it


def test_a_real_rate_limit_is_a_429_with_retry_after(platform_server: BackgroundServer, openai_url: str) -> None:
    component = next(c for c in platform_server.server.components if hasattr(c, "engine"))
    frontend = component.servicer.frontend
    limit = frontend.limits.max_concurrent_per_tenant
    frontend._in_flight["acme"] = limit  # as if acme had that many requests in flight
    try:
        body = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        status, answer, headers = _raw(f"{openai_url}/chat/completions", json.dumps(body).encode())
    finally:
        frontend._in_flight.pop("acme", None)
    assert status == 429 and answer["error"]["type"] == "rate_limit_error", answer
    assert int(headers["Retry-After"]) >= 1
