"""The engine's scheduling with a fake model: no checkpoint, no tokenizer files, milliseconds.

`CountingModel` stands in for a causal LM: its next token is a function of every token of the
sequence so far, which it reads back through the engine's KV cache (the same `kv.attend` the real
models' attention runs: it stores each token as a value and averages the values its sequence may
see), so a sequence whose cache entries got mixed up with another's — blocks handed out twice, a
wrong block table, a prefill chunk attending past its end — answers differently than it does
alone. Its one projection is named `q_proj`, so the engine wraps it in adapter slots as it does a
real model's, and a fake adapter shifts the next token by a fixed amount. The model records every
step (sequences, prefill chunks, tokens, slots), and it can hold the generation thread inside a
step: what is submitted meanwhile is exactly what the next step admits, so step composition is
asserted, not hoped for.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tuneforge.inference import kv
from tuneforge.inference.engine import Engine, Event, Request, Sampling

VOCAB = 32
PAD, EOS = 0, 31
#: A row whose last token is this one ends next (the fake end-of-turn).
STOP_TRIGGER = 30
#: A token the model fails on: its whole step fails.
POISON = 29
WAIT_S = 30


def _next_token(total: int, last: int) -> int:
    return EOS if last == STOP_TRIGGER else total % 28 + 1  # 1..28: letters, space and "."


class FakeTokenizer:
    """Token 1..26 are a..z, 27 a space, 28 '.', 29 '!', 30 '?'; PAD and EOS decode to nothing."""

    pad_token_id = PAD
    eos_token_id = EOS
    unk_token_id = None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return EOS if token == "<|im_end|>" else None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        chars = "abcdefghijklmnopqrstuvwxyz .!?"
        return "".join(chars[i - 1] for i in ids if 0 < i < EOS)


@dataclass
class Pass:
    """One engine step as the model saw it."""

    prefill: bool  # the step holds a prompt chunk
    rows: int  # sequences in the step (decoding ones and prompt chunks)
    slots: list[int]  # the adapter slot of each of them: decoding sequences first, then prompt chunks
    tokens: int  # tokens in the packed row
    chunks: list[int]  # length of each prompt chunk


class CountingModel(torch.nn.Module):
    """next token = f(all tokens of the sequence so far), read back through the KV cache and `q_proj`."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=1, hidden_size=1, vocab_size=0
        )
        self.q_proj = torch.nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(VOCAB))
        self.passes: list[Pass] = []
        #: While set, a step waits for it (the generation thread is held; requests queue up).
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        #: With `hold`: the step (counted in `passes`) that waits; None: the next one.
        self.hold_at: int | None = None

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, use_cache: bool, logits_to_keep: torch.Tensor
    ) -> SimpleNamespace:
        step = kv.current()
        assert step is not None and not use_cache
        tokens = input_ids.shape[1]
        per_token = self.q_proj.selection.rows
        slots = per_token.tolist() if per_token is not None else [0] * tokens
        decoding = step.decode_tokens.tolist() if step.decode_tokens is not None else []
        starts = decoding + [segment.start for segment in step.prefills]
        self.passes.append(
            Pass(
                bool(step.prefills), len(starts), [slots[i] for i in starts], tokens, [s.length for s in step.prefills]
            )
        )
        if self.hold is not None and self.hold_at in (None, len(self.passes)):
            self.holding.set()
            assert self.hold.wait(WAIT_S), "the test never released the held step"
            self.hold, self.hold_at = None, None
        if (input_ids == POISON).any():
            raise RuntimeError("poisoned input")
        # every token is a value; a query of zeros averages the values its sequence sees so far
        values = input_ids.to(torch.float32).view(1, 1, tokens, 1)
        zeros = torch.zeros_like(values)
        mean = kv.attend(step, 0, zeros, zeros, values).view(tokens)
        totals = (mean * (position_ids[0] + 1)).round().long()
        nexts = [_next_token(int(t), int(last)) for t, last in zip(totals, input_ids[0], strict=True)]
        hidden = torch.nn.functional.one_hot(torch.tensor(nexts), VOCAB).to(torch.float32).unsqueeze(0)
        return SimpleNamespace(logits=self.q_proj(hidden)[:, logits_to_keep])


def _shift_adapter(directory: Path, shift: int) -> Path:
    """A PEFT-shaped LoRA adapter on `q_proj` that adds `shift` to every letter token the model picks."""
    directory.mkdir(parents=True)
    a = torch.eye(VOCAB)  # rank VOCAB: A passes the one-hot through, B moves it by `shift`, twice the base logit
    b = torch.zeros(VOCAB, VOCAB)
    for token in range(1, 29):
        b[token + shift, token] = 2.0
    save_file(
        {"base_model.model.q_proj.lora_A.weight": a, "base_model.model.q_proj.lora_B.weight": b},
        directory / "adapter_model.safetensors",
    )
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": VOCAB, "lora_alpha": VOCAB}))
    return directory


@pytest.fixture()
def model() -> CountingModel:
    return CountingModel()


def _engine(model: CountingModel, **options: object) -> Iterator[Engine]:
    engine = Engine(model, FakeTokenizer(), targets=("q_proj",), max_rank=VOCAB, **options)
    yield engine
    engine.stop(WAIT_S)
    assert not engine._thread.is_alive()


@pytest.fixture()
def engine(model: CountingModel) -> Iterator[Engine]:
    yield from _engine(model, max_adapters=2, max_batch_size=8)


class Call:
    """One request submitted to the engine and what came back."""

    def __init__(self, engine: Engine, prompt: list[int], sampling: Sampling, adapter: str | None = None) -> None:
        self.done = threading.Event()
        self.events: list[Event] = []
        slot = engine.acquire(adapter) if adapter is not None else 0
        self.request = Request(list(prompt), adapter, sampling, self._emit, slot=slot)

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if event.finish_reason:
            self.done.set()

    def result(self) -> tuple[str, Event]:
        assert self.done.wait(WAIT_S), "the request never finished"
        return "".join(e.delta for e in self.events), self.events[-1]


def _queued_together(engine: Engine, model: CountingModel, calls: list[Call]) -> list[tuple[str, Event]]:
    """Queues `calls` while the generation thread is held inside another request's pass, then lets it go.

    The queue then holds exactly these requests when the engine forms its next batch.
    """
    model.hold, model.holding = threading.Event(), threading.Event()
    hold = model.hold
    plug = Call(engine, [1], Sampling(max_tokens=1))
    engine.submit(plug.request)
    assert model.holding.wait(WAIT_S), "the generation thread never took the plug request"
    for call in calls:
        engine.submit(call.request)
    assert engine.queue_depth() == len(calls)
    del model.passes[:]  # from here on: the plug's pass is done, the next prefill is theirs
    hold.set()
    plug.result()
    return [call.result() for call in calls]


def _pins_after_the_last_batch(engine: Engine) -> dict[str, int]:
    """The adapter pins once the batches before now have ended.

    A batch releases its adapters after its requests' final events: a request through the base model
    behind it finishes only once that release has happened (one generation thread).
    """
    engine.generate([1], sampling=Sampling(max_tokens=1))
    return dict(engine._pins)


def _prefills(model: CountingModel) -> list[Pass]:
    return [p for p in model.passes if p.prefill]


PROMPTS = [[3, 1, 4], [1, 5], [9, 2, 6, 5], [3, 5, 8, 9, 7]]


def test_requests_queued_together_share_one_batch_and_answer_as_they_do_alone(
    engine: Engine, model: CountingModel
) -> None:
    lengths = [1, 3, 5, 7]
    alone = [engine.generate(p, sampling=Sampling(max_tokens=n)) for p, n in zip(PROMPTS, lengths, strict=True)]
    calls = [Call(engine, p, Sampling(max_tokens=n)) for p, n in zip(PROMPTS, lengths, strict=True)]
    together = _queued_together(engine, model, calls)
    assert [p.rows for p in _prefills(model)] == [len(PROMPTS)]  # one prefill for all four rows
    assert [(text, event.finish_reason, event.completion_tokens) for text, event in together] == [
        (text, event.finish_reason, event.completion_tokens) for text, event in alone
    ]
    assert [len(t) for t, _ in together] == lengths
    # finished rows leave the batch: each decode step runs only the rows still generating
    assert [p.rows for p in model.passes] == [4, 3, 3, 2, 2, 1, 1]


def test_the_queue_is_cut_into_batches_of_at_most_max_batch_size(model: CountingModel) -> None:
    for engine in _engine(model, max_batch_size=2):
        prompts = [*PROMPTS, [7, 7]]
        alone = [engine.generate(p, sampling=Sampling(max_tokens=2))[0] for p in prompts]
        together = _queued_together(engine, model, [Call(engine, p, Sampling(max_tokens=2)) for p in prompts])
        assert [p.rows for p in _prefills(model)] == [2, 2, 1]
        assert [text for text, _ in together] == alone


def test_rows_of_one_batch_decode_through_their_own_adapter_slots(
    engine: Engine, model: CountingModel, tmp_path: Path
) -> None:
    engine.load_adapter("acme/up1:1", _shift_adapter(tmp_path / "up1", 1))
    engine.load_adapter("acme/up2:1", _shift_adapter(tmp_path / "up2", 2))
    adapters = [None, "acme/up1:1", "acme/up2:1", None]
    prompt = [2, 4, 6]
    alone = [engine.generate(prompt, key, Sampling(max_tokens=4))[0] for key in adapters]
    assert len(set(alone)) == 3  # the adapters really change the answer
    calls = [Call(engine, prompt, Sampling(max_tokens=4), key) for key in adapters]
    together = _queued_together(engine, model, calls)
    (prefill,) = _prefills(model)
    slots = {key: engine._slots[key] for key in adapters if key}
    assert prefill.slots == [0, slots["acme/up1:1"], slots["acme/up2:1"], 0]  # one batch, a slot per row
    assert [text for text, _ in together] == alone
    assert _pins_after_the_last_batch(engine) == {}  # every request released its adapter


def test_stop_tokens_stop_sequences_and_cancellation_end_their_row_only(engine: Engine, model: CountingModel) -> None:
    ends_on_eos = Call(engine, [4, STOP_TRIGGER], Sampling(max_tokens=5))
    full = Call(engine, [3, 1, 4], Sampling(max_tokens=5))
    alone_text = engine.generate([3, 1, 4], sampling=Sampling(max_tokens=5))[0]
    cut = Call(engine, [3, 1, 4], Sampling(max_tokens=5, stop=(alone_text[2:4],)))
    cancelled = Call(engine, [3, 1, 4], Sampling(max_tokens=5))
    cancelled.request.cancelled.set()
    results = _queued_together(engine, model, [ends_on_eos, full, cut, cancelled])
    assert [event.finish_reason for _, event in results] == ["stop", "length", "stop_sequence", "cancelled"]
    assert results[0][0] == "" and results[1][0] == alone_text
    assert results[2][0] == alone_text[: alone_text.find(alone_text[2:4])]
    assert [p.rows for p in _prefills(model)] == [3]  # the request cancelled while waiting never took a step


def test_a_failing_pass_fails_its_batch_and_the_engine_serves_on(
    engine: Engine, model: CountingModel, tmp_path: Path
) -> None:
    engine.load_adapter("acme/up1:1", _shift_adapter(tmp_path / "up1", 1))
    calls = [Call(engine, [1, POISON], Sampling(max_tokens=3), "acme/up1:1"), Call(engine, [2], Sampling())]
    results = _queued_together(engine, model, calls)
    assert [event.finish_reason for _, event in results] == ["error", "error"]
    assert all("poisoned input" in event.error for _, event in results)
    assert _pins_after_the_last_batch(engine) == {}  # the failed batch released its adapter too
    assert engine.generate([3, 1, 4], "acme/up1:1", Sampling(max_tokens=2))[1].finish_reason == "length"


def test_adapter_slots_are_an_lru_that_never_evicts_a_pinned_adapter(engine: Engine, tmp_path: Path) -> None:
    paths = {shift: _shift_adapter(tmp_path / f"up{shift}", shift) for shift in (1, 2)}
    first = engine.acquire("acme/a:1", paths[1])
    second = engine.acquire("acme/b:1", paths[2])
    assert {first, second} == {1, 2}
    with pytest.raises(ResourceExhausted):  # both slots pinned by requests in flight
        engine.acquire("acme/c:1", paths[1])
    assert not engine.evict("acme/a:1")  # pinned
    engine.release("acme/a:1")
    engine.release("acme/b:1")
    engine.acquire("acme/a:1")  # a hit: a is now the most recently used
    engine.release("acme/a:1")
    assert engine.acquire("acme/c:1", paths[1]) == second  # the least recently used (b) made room
    engine.release("acme/c:1")
    assert engine.loaded() == ["acme/a:1", "acme/c:1"]
    with pytest.raises(FailedPrecondition):  # not loaded, and no files to load it from
        engine.acquire("acme/b:1")
    assert engine.evict("acme/a:1") and engine.loaded() == ["acme/c:1"]


def test_stop_finishes_what_is_queued_and_refuses_new_requests(model: CountingModel) -> None:
    for engine in _engine(model):
        model.hold, model.holding = threading.Event(), threading.Event()
        hold = model.hold
        first = Call(engine, [1], Sampling(max_tokens=2))
        engine.submit(first.request)
        assert model.holding.wait(WAIT_S)
        queued = Call(engine, [2, 3], Sampling(max_tokens=2))
        engine.submit(queued.request)
        stopper = threading.Thread(target=engine.stop, args=(WAIT_S,))
        stopper.start()
        hold.set()
        stopper.join(WAIT_S)
        assert [c.result()[1].finish_reason for c in (first, queued)] == ["length", "length"]
        with pytest.raises(FailedPrecondition):
            engine.submit(Call(engine, [4], Sampling()).request)


def _submit_during_a_step(engine: Engine, model: CountingModel, call: Call) -> int:
    """Submits `call` while the generation thread is held inside its next step; returns that step's index."""
    model.hold, model.holding = threading.Event(), threading.Event()
    hold = model.hold
    assert model.holding.wait(WAIT_S), "the engine took no step"
    index = len(model.passes) - 1
    engine.submit(call.request)
    hold.set()
    return index


def test_a_request_joins_the_running_batch_at_the_next_step_and_both_answer_as_alone(
    engine: Engine, model: CountingModel
) -> None:
    long_prompt, short_prompt = [3, 1, 4, 1, 5], [2, 7]
    long_alone = engine.generate(long_prompt, sampling=Sampling(max_tokens=40))
    short_alone = engine.generate(short_prompt, sampling=Sampling(max_tokens=3))
    del model.passes[:]
    long_call = Call(engine, long_prompt, Sampling(max_tokens=40))
    # the engine is held inside the long request's fifth step (its fourth decoding step), and the
    # short one arrives then
    model.hold, model.holding, model.hold_at = threading.Event(), threading.Event(), 5
    engine.submit(long_call.request)
    assert model.holding.wait(WAIT_S)
    held_at = len(model.passes) - 1
    short_call = Call(engine, short_prompt, Sampling(max_tokens=3))
    engine.submit(short_call.request)
    model.hold.set()
    short_result, long_result = short_call.result(), long_call.result()
    assert (short_result[0], short_result[1].finish_reason) == (short_alone[0], short_alone[1].finish_reason)
    assert (long_result[0], long_result[1].completion_tokens) == (long_alone[0], 40)
    after = model.passes[held_at + 1 :]
    # the very next step prefills the short request beside the long one's decoding, and the next two
    # decode both: the short request got its first token one step after it arrived, not 35 tokens later
    assert [(p.rows, p.chunks) for p in after[:3]] == [(2, [2]), (2, []), (2, [])]
    assert all(p.rows == 1 for p in after[3:])
    assert len(model.passes) == held_at + 1 + 40 - 5


def test_a_long_prompt_is_prefilled_in_chunks_while_other_rows_decode_every_step(model: CountingModel) -> None:
    for engine in _engine(model, max_step_tokens=8, kv_block_size=4):
        long_prompt = [(7 * i) % 28 + 1 for i in range(30)]
        long_alone = engine.generate(long_prompt, sampling=Sampling(max_tokens=4))[0]
        decoding_alone = engine.generate([5, 5], sampling=Sampling(max_tokens=12))[0]
        del model.passes[:]
        decoding = Call(engine, [5, 5], Sampling(max_tokens=12))
        engine.submit(decoding.request)
        prefilling = Call(engine, long_prompt, Sampling(max_tokens=4))
        _submit_during_a_step(engine, model, prefilling)
        assert prefilling.result()[0] == long_alone
        assert decoding.result()[0] == decoding_alone
        chunked = [p for p in model.passes if p.prefill and p.rows == 2]
        # the 30-token prompt went in chunks of 7 (8 tokens a step, one of them the decoding row's),
        # and the decoding row took a token in every one of those steps
        assert [p.chunks for p in chunked] == [[7], [7], [7], [7], [2]]
        assert all(p.tokens <= 8 for p in model.passes)


def test_requests_wait_for_kv_blocks_instead_of_failing_and_a_request_larger_than_the_cache_is_refused(
    model: CountingModel,
) -> None:
    for engine in _engine(model, kv_cache_tokens=48, kv_block_size=8):  # 6 blocks of 8 positions
        assert engine.pool.capacity == 48
        first_alone = engine.generate([1, 2, 3], sampling=Sampling(max_tokens=30))[0]
        second_alone = engine.generate([4, 5], sampling=Sampling(max_tokens=20))[0]
        first = Call(engine, [1, 2, 3], Sampling(max_tokens=30))  # 33 positions: 5 blocks
        second = Call(engine, [4, 5], Sampling(max_tokens=20))  # 22 positions: 3 blocks, only 1 left
        results = _queued_together(engine, model, [first, second])
        assert [text for text, _ in results] == [first_alone, second_alone]
        # the second one waited for the first's blocks: never in a step beside it
        assert max(p.rows for p in model.passes) == 1
        assert engine.pool.free_blocks() == engine.pool.blocks
        too_long = Call(engine, [1] * 20, Sampling(max_tokens=29))  # 49 positions > 48
        with pytest.raises(ResourceExhausted, match=r"49 positions.*48"):
            engine.submit(too_long.request)


def test_cancelling_a_running_request_frees_its_kv_blocks_and_adapter_slot(
    engine: Engine, model: CountingModel, tmp_path: Path
) -> None:
    engine.load_adapter("acme/up1:1", _shift_adapter(tmp_path / "up1", 1))
    call = Call(engine, [3, 1, 4], Sampling(max_tokens=200), "acme/up1:1")
    model.hold, model.holding = threading.Event(), threading.Event()
    engine.submit(call.request)
    assert model.holding.wait(WAIT_S)
    assert engine.pool.free_blocks() < engine.pool.blocks and engine._pins == {"acme/up1:1": 1}
    call.request.cancelled.set()
    model.hold.set()
    _, final = call.result()
    assert final.finish_reason == "cancelled" and final.completion_tokens < 200
    assert _pins_after_the_last_batch(engine) == {}
    assert engine.pool.free_blocks() == engine.pool.blocks and engine.running() == 0


def test_an_adapter_evicted_from_its_slot_comes_back_from_host_memory_without_its_files(
    model: CountingModel, tmp_path: Path
) -> None:
    for engine in _engine(model, max_adapters=1, host_cache_bytes=2**20):
        up1 = _shift_adapter(tmp_path / "up1", 1)
        engine.load_adapter("acme/up1:1", up1)
        first = engine.generate([2, 4, 6], "acme/up1:1", Sampling(max_tokens=4))[0]
        engine.load_adapter("acme/up2:1", _shift_adapter(tmp_path / "up2", 2))  # takes the only slot
        assert engine.loaded() == ["acme/up2:1"] and engine.decoded("acme/up1:1")
        for path in up1.iterdir():  # a re-load reads no file
            path.unlink()
        assert engine.acquire("acme/up1:1", up1) == 1
        engine.release("acme/up1:1")
        assert engine.generate([2, 4, 6], "acme/up1:1", Sampling(max_tokens=4))[0] == first
        assert engine.evict("acme/up1:1") and not engine.decoded("acme/up1:1")  # a deleted version goes for good


def _scoped(prompt: list[int], tokens: int, scope: str | None, adapter: str | None = None, slot: int = 0) -> Call:
    call = Call.__new__(Call)
    call.done, call.events = threading.Event(), []
    call.request = Request(list(prompt), adapter, Sampling(max_tokens=tokens), call._emit, slot=slot)
    call.request.prefix_scope = scope
    return call


def test_a_prompt_prefix_cached_by_the_same_tenant_and_adapter_is_reused_and_nobody_else_s(
    model: CountingModel, tmp_path: Path
) -> None:
    for engine in _engine(model, kv_block_size=8, kv_cache_tokens=256):
        shared = [(5 * i) % 28 + 1 for i in range(35)]
        prompts = [[*shared, 3, 9], [*shared, 7], [*shared, 3, 9]]
        alone = [engine.generate(p, sampling=Sampling(max_tokens=6))[0] for p in prompts]
        engine.load_adapter("acme/up1:1", _shift_adapter(tmp_path / "up1", 1))

        def chunks(call: Call, engine: Engine = engine) -> list[int]:
            del model.passes[:]
            engine.submit(call.request)
            call.result()
            return [c for p in model.passes for c in p.chunks]

        first = _scoped(prompts[0], 6, "acme")
        assert chunks(first) == [37] and first.result()[0] == alone[0]  # nothing cached yet: the whole prompt
        # the same tenant: the 4 whole blocks of the shared 35 tokens are reused, only the rest is computed
        second = _scoped(prompts[1], 6, "acme")
        assert chunks(second) == [36 - 32] and second.result()[0] == alone[1]
        third = _scoped(prompts[2], 6, "acme")
        assert chunks(third) == [37 - 32] and third.result()[0] == alone[2]
        # another tenant, the same tenant through an adapter, or a request outside any scope: nothing reused
        assert chunks(_scoped(prompts[0], 6, "globex")) == [37]
        slot = engine.acquire("acme/up1:1")
        assert chunks(_scoped(prompts[0], 6, "acme", "acme/up1:1", slot)) == [37]
        assert chunks(_scoped(prompts[0], 6, None)) == [37]
        assert engine.pool.free_blocks() == engine.pool.blocks  # cached blocks held by no request are free space


def test_cached_prefix_blocks_give_way_to_new_requests_when_the_pool_is_full(model: CountingModel) -> None:
    for engine in _engine(model, kv_block_size=8, kv_cache_tokens=64):  # 8 blocks
        prompts = [[(k * i) % 28 + 1 for i in range(30)] for k in (3, 5, 7)]
        alone = [engine.generate(p, sampling=Sampling(max_tokens=10))[0] for p in prompts]
        # each request takes 5 of the 8 blocks and leaves 3 prompt blocks cached: the next one evicts them
        for _ in range(2):
            for prompt, expected in zip(prompts, alone, strict=True):
                call = _scoped(prompt, 10, "acme")
                engine.submit(call.request)
                assert call.result()[0] == expected
        assert engine.pool.free_blocks() == engine.pool.blocks


def test_a_new_prompt_goes_in_beside_a_long_prompt_still_being_prefilled(model: CountingModel) -> None:
    for engine in _engine(model, max_step_tokens=8, kv_block_size=4):
        long_prompt = [(3 * i) % 28 + 1 for i in range(40)]
        short_alone = engine.generate([2, 7], sampling=Sampling(max_tokens=3))[0]
        long_alone = engine.generate(long_prompt, sampling=Sampling(max_tokens=3))[0]
        del model.passes[:]
        model.hold, model.holding, model.hold_at = threading.Event(), threading.Event(), 2
        long_call = Call(engine, long_prompt, Sampling(max_tokens=3))
        engine.submit(long_call.request)
        assert model.holding.wait(WAIT_S)  # inside the long prompt's second chunk
        short_call = Call(engine, [2, 7], Sampling(max_tokens=3))
        engine.submit(short_call.request)
        model.hold.set()
        assert short_call.result()[0] == short_alone and long_call.result()[0] == long_alone
        # the short prompt (least done) goes first in the next step; the long one's chunk takes the rest
        assert [p.chunks for p in model.passes[:3]] == [[8], [8], [2, 6]]


def test_bad_requests_are_refused_at_submit_naming_the_field_and_release_their_slot(
    engine: Engine, tmp_path: Path
) -> None:
    engine.load_adapter("acme/up1:1", _shift_adapter(tmp_path / "up1", 1))
    cases = {
        "prompt": ([], Sampling()),
        "sampling.max_tokens": ([1], Sampling(max_tokens=0)),
        "sampling.temperature": ([1], Sampling(temperature=float("nan"))),
        "sampling.top_p": ([1], Sampling(top_p=0.0)),
        "sampling.seed": ([1], Sampling(temperature=0.5, seed=2**64)),
        "sampling.stop": ([1], Sampling(stop=("",))),
    }
    for field, (prompt, sampling) in cases.items():
        slot = engine.acquire("acme/up1:1")
        with pytest.raises(InvalidArgument) as refused:
            engine.submit(Request(prompt, "acme/up1:1", sampling, lambda event: None, slot=slot))
        assert refused.value.violations[0].field == field
    assert engine._pins == {}
    assert engine.generate([3, 1, 4], "acme/up1:1", Sampling(max_tokens=2))[1].finish_reason == "length"


def test_a_request_that_fails_before_its_first_step_fails_alone(
    engine: Engine, model: CountingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.inference import engine as engine_module

    real = engine_module._Row.__init__

    def failing(self, request: Request, device: torch.device) -> None:  # type: ignore[no-untyped-def]
        if request.prompt_ids == [6, 6, 6]:
            raise RuntimeError("no row for this one")
        real(self, request, device)

    monkeypatch.setattr(engine_module._Row, "__init__", failing)
    bad, good = Call(engine, [6, 6, 6], Sampling(max_tokens=2)), Call(engine, [3, 1], Sampling(max_tokens=2))
    results = _queued_together(engine, model, [bad, good])
    assert results[0][1].finish_reason == "error" and "no row for this one" in results[0][1].error
    assert results[1][1].finish_reason == "length"
    assert engine._thread.is_alive() and engine.pool.free_blocks() == engine.pool.blocks


def test_a_caller_whose_callback_raises_does_not_stop_the_engine(engine: Engine) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("the caller's loop is closed")

    request = Request([3, 1, 4], None, Sampling(max_tokens=3), broken)
    request.cancelled.set()  # ends while still waiting: its final event is the one that raises
    engine.submit(request)
    engine.submit(Request([2, 2], None, Sampling(max_tokens=3), broken))  # every event it gets raises
    assert engine.generate([1, 2], sampling=Sampling(max_tokens=2))[1].finish_reason == "length"
    assert engine._thread.is_alive() and engine.pool.free_blocks() == engine.pool.blocks


def test_files_are_verified_whenever_the_engine_reads_them_and_not_for_a_copy_from_host_memory(
    model: CountingModel, tmp_path: Path
) -> None:
    for engine in _engine(model, max_adapters=1, host_cache_bytes=2**20):
        checks: list[str] = []
        paths = {n: _shift_adapter(tmp_path / f"up{n}", n) for n in (1, 2)}
        for key, n in (("acme/up1:1", 1), ("acme/up2:1", 2), ("acme/up1:1", 1)):  # up1 evicted, then back
            engine.acquire(key, paths[n], verify=functools.partial(checks.append, key))
            engine.release(key)
        assert checks == ["acme/up1:1", "acme/up2:1"]  # the third load was a copy from host memory
        assert engine.evict("acme/up1:1")  # a deleted version leaves both tiers
        engine.acquire("acme/up1:1", paths[1], verify=functools.partial(checks.append, "again"))
        engine.release("acme/up1:1")
        assert checks[-1] == "again"  # out of both tiers: its files are read, and checked, again


def test_a_request_larger_than_the_whole_cache_is_a_400_naming_max_tokens_over_http() -> None:
    from tuneforge.inference import http

    response = http._from_domain(ResourceExhausted.never_fits("max_tokens", "needs 49 positions; 48 in all"))
    assert response.status == 400 and "Retry-After" not in response.headers
    assert json.loads(response.text)["error"]["param"] == "max_tokens"
    limited = http._from_domain(ResourceExhausted("too many requests in flight"))
    assert limited.status == 429 and limited.headers["Retry-After"]


def test_sliding_window_models_are_refused_at_start() -> None:
    model = torch.nn.Linear(1, 1)
    model.config = SimpleNamespace(sliding_window=4096)  # type: ignore[assignment]  # Mistral's: no use_ flag
    with pytest.raises(ValueError, match="sliding-window"):
        kv.use_paged_attention(model)


def test_batched_sampling_draws_from_each_row_s_distribution_with_its_own_seed_and_top_p() -> None:
    from tuneforge.inference.engine import _Row

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))

    def rows(seeds: range, **sampling: float) -> list[_Row]:
        return [
            _Row(Request([1], None, Sampling(temperature=1.0, seed=s, **sampling), lambda e: None), torch.device("cpu"))
            for s in seeds
        ]

    seeds = range(4000)
    draws = Engine._sample_rows(logits.expand(len(seeds), -1).clone(), rows(seeds)).tolist()
    shares = [draws.count(t) / len(draws) for t in range(4)]
    assert all(abs(share - p) < 0.03 for share, p in zip(shares, [0.5, 0.3, 0.15, 0.05], strict=True)), shares
    again = Engine._sample_rows(logits.expand(len(seeds), -1).clone(), rows(seeds)).tolist()
    assert again == draws  # each row's seed decides its draw, whatever rows are beside it
    alone = [Engine._sample_rows(logits[None].clone(), rows(range(s, s + 1)))[0].item() for s in range(50)]
    assert alone == draws[:50]
    nucleus = Engine._sample_rows(logits.expand(2000, -1).clone(), rows(range(2000), top_p=0.7)).tolist()
    assert set(nucleus) == {0, 1}  # 0.5 + 0.3 reach 0.7: the tail is never drawn
