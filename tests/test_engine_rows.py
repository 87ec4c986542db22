"""One request's failure in a decode batch ends that request only; sampling at the edges stays numeric.

Engine-level (tiny-qwen2 on CPU): requests are queued before the generation thread forms its next
batch, and a recorder on `_step` proves they really decoded side by side from their first step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from conftest import MODEL_CACHE

from tuneforge.inference.base_model import load_base_model
from tuneforge.inference.engine import Engine, Event, Request, Sampling
from tuneforge.models import ModelResolver


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    base = load_base_model(ModelResolver(MODEL_CACHE), "tiny-qwen2", "float32", "cpu")
    # a long batch wait: everything submitted together below lands in one batch
    engine = Engine(base.model, base.tokenizer, max_adapters=1, max_rank=8, max_batch_size=8, batch_wait_s=0.5)
    yield engine
    engine.stop()


PROMPTS = [[9707, 1879, 13, 2585], [40, 1075, 279, 3974, 13], [785, 6722, 315, 9625, 374]]


def _run_together(
    engine: Engine, samplings: list[Sampling], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, Event]]:
    batches: list[int] = []
    real = Engine._step

    def recording(self: Engine) -> None:
        batches.append(len(self._running))
        real(self)

    monkeypatch.setattr(Engine, "_step", recording)
    done = [threading.Event() for _ in samplings]
    texts: list[list[str]] = [[] for _ in samplings]
    finals: list[Event | None] = [None] * len(samplings)
    for index, (prompt, sampling) in enumerate(zip(PROMPTS, samplings, strict=True)):

        def emit(event: Event, index: int = index) -> None:
            texts[index].append(event.delta)
            if event.finish_reason:
                finals[index] = event
                done[index].set()

        engine.submit(Request(list(prompt), None, sampling, emit))
    for event in done:
        assert event.wait(120)
    assert batches[0] == len(samplings), batches  # the requests really decoded in one batch
    return [("".join(t), f) for t, f in zip(texts, finals, strict=True)]  # type: ignore[misc]


def test_a_tiny_temperature_decodes_greedily_beside_other_rows(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = [engine.generate(prompt, sampling=Sampling(max_tokens=6))[0] for prompt in PROMPTS]
    together = _run_together(
        engine,
        [Sampling(max_tokens=6, temperature=1e-300, seed=1), Sampling(max_tokens=6), Sampling(max_tokens=6)],
        monkeypatch,
    )
    assert [f.finish_reason for _, f in together] == ["length"] * 3
    assert [text for text, _ in together] == alone  # 1e-300 is greedy in the limit, not NaN


def test_a_row_whose_sampling_fails_ends_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = [engine.generate(prompt, sampling=Sampling(max_tokens=6))[0] for prompt in PROMPTS[1:]]
    real = Engine._sample_rows

    def poisoned(logits, rows):  # type: ignore[no-untyped-def]
        for i, row in enumerate(rows):  # NaN logits for one row: its probabilities are not finite
            if row.request.sampling.seed == 666:
                logits[i] = float("nan")
        return real(logits, rows)

    monkeypatch.setattr(Engine, "_sample_rows", staticmethod(poisoned))
    together = _run_together(
        engine,
        [
            Sampling(max_tokens=6, temperature=0.7, seed=666),
            Sampling(max_tokens=6),
            Sampling(max_tokens=6, temperature=0.7, seed=5),
        ],
        monkeypatch,
    )
    (_, failed), *others = together
    assert failed.finish_reason == "error" and "probabilities are not finite" in failed.error
    assert [f.finish_reason for _, f in others] == ["length", "length"]
    assert others[0][0] == alone[0]
    seeded = engine.generate(PROMPTS[2], sampling=Sampling(max_tokens=6, temperature=0.7, seed=5))[0]
    assert others[1][0] == seeded  # a sampled row beside the failing one: as its seed gives alone
    assert engine.generate(PROMPTS[0], sampling=Sampling(max_tokens=6))[1].finish_reason == "length"  # engine lives


def test_a_batch_whose_sampling_raises_samples_row_by_row_so_only_the_culprit_fails(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = engine.generate(PROMPTS[1], sampling=Sampling(max_tokens=6, temperature=0.7, seed=5))[0]
    real = Engine._sample_rows

    def raising(logits, rows):  # type: ignore[no-untyped-def]
        if any(row.request.sampling.seed == 666 for row in rows):
            raise RuntimeError("a setting sampling cannot take")
        return real(logits, rows)

    monkeypatch.setattr(Engine, "_sample_rows", staticmethod(raising))
    together = _run_together(
        engine,
        [
            Sampling(max_tokens=6, temperature=0.7, seed=666),
            Sampling(max_tokens=6, temperature=0.7, seed=5),
            Sampling(max_tokens=6),
        ],
        monkeypatch,
    )
    assert together[0][1].finish_reason == "error" and "a setting sampling cannot take" in together[0][1].error
    assert together[1][0] == seeded and together[2][1].finish_reason == "length"


def test_max_tokens_inside_a_multibyte_character_ends_before_it(engine: Engine) -> None:
    from tuneforge.inference.engine import _Row

    parrot = engine.tokenizer.encode("ok 🦜", add_special_tokens=False)
    assert engine.tokenizer.decode(parrot[:-1]).endswith("\ufffd")  # the emoji's first token alone is a fragment
    events: list[Event] = []
    request = Request([1, 2], None, Sampling(max_tokens=len(parrot) - 1), events.append)
    row = _Row(request, engine.device)
    assert all(engine._advance(row, token) for token in parrot[:-2]) and not engine._advance(row, parrot[-2])
    assert events[-1].finish_reason == "length"
    text = "".join(e.delta for e in events)
    assert "\ufffd" not in text and text == engine.tokenizer.decode(parrot[:-1]).rstrip("\ufffd") == "ok "
