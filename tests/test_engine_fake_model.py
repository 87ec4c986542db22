"""The engine's batching and scheduling with a fake model: no checkpoint, no tokenizer files, milliseconds.

`CountingModel` stands in for a causal LM: its next token is a function of every token of the row so
far, read back from the KV cache the engine hands it, so a row whose cache entries got mixed up with
another row's (when finished rows leave the batch) answers differently than it does alone. Its one
projection is named `q_proj`, so the engine wraps it in adapter slots as it does a real model's, and
a fake adapter shifts the next token by a fixed amount. The model records every forward pass (batch
rows and their slots), and it can hold the generation thread inside a pass: what is queued meanwhile
is exactly what the next batch takes, so batch composition is asserted, not hoped for.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tuneforge.common.errors import FailedPrecondition, ResourceExhausted
from tuneforge.inference.engine import Engine, Event, Request, Sampling

VOCAB = 32
PAD, EOS = 0, 31
#: A row whose last token is this one ends next (the fake end-of-turn).
STOP_TRIGGER = 30
#: A token the model fails on: its whole batch fails.
POISON = 29
WAIT_S = 30


def _next_token(history: list[int], last: int) -> int:
    return EOS if last == STOP_TRIGGER else sum(history) % 28 + 1  # 1..28: letters, space and "."


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
    """One forward pass as the model saw it."""

    prefill: bool
    rows: int
    slots: list[int]


class CountingModel(torch.nn.Module):
    """next token = f(all tokens of the row so far), through a `q_proj` the engine puts adapter slots on."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(VOCAB))
        self.passes: list[Pass] = []
        #: While set, a pass waits for `release` (the generation thread is held; requests queue up).
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        use_cache: bool,
        past_key_values: object,
        logits_to_keep: int = 1,
    ) -> SimpleNamespace:
        prefill = past_key_values.get_seq_length() == 0
        selection = self.q_proj.selection.rows if hasattr(self.q_proj, "selection") else None
        slots = selection.tolist() if selection is not None else [0] * input_ids.shape[0]
        self.passes.append(Pass(prefill, input_ids.shape[0], slots))
        if self.hold is not None:
            self.holding.set()
            assert self.hold.wait(WAIT_S), "the test never released the held pass"
            self.hold = None
        if (input_ids == POISON).any():
            raise RuntimeError("poisoned input")
        # the cache keeps every token of each row (keys), so the history is read back from it
        tokens = input_ids.to(torch.float32).view(input_ids.shape[0], 1, -1, 1)
        keys, _ = past_key_values.update(tokens, tokens.clone(), 0)
        history = (keys.view(keys.shape[0], -1) * attention_mask).round().long()
        nexts = [_next_token(row.tolist(), int(last)) for row, last in zip(history, input_ids[:, -1], strict=True)]
        hidden = torch.nn.functional.one_hot(torch.tensor(nexts), VOCAB).to(torch.float32).unsqueeze(1)
        return SimpleNamespace(logits=self.q_proj(hidden))


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
    assert [p.rows for p in _prefills(model)] == [4]


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
