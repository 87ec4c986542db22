"""Two tenants' Generate calls in one decode batch through the real gRPC server (#14 point 2).

acme's row carries sampling at the edge of what validation lets through (or a row whose sampling
fails); globex's rows decode beside it in the same batch and must end exactly as they do alone.
The session server's engine is held until every call is queued, and its own record of each batch
proves they decoded together.
"""

from __future__ import annotations

import threading

import pytest
from conftest import ACME_KEY, GLOBEX_KEY
from test_inference_api import _one_batch

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.inference.engine import Engine
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import common_pb2, inference_pb2

pytestmark = pytest.mark.slow
QUESTIONS = ["Name three colours.", "Count to four.", "Say hello."]
TOKENS = 8


def _request(question: str, **sampling: object) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model="",  # the base model: both tenants may use it
        messages=[common_pb2.ChatMessage(role="user", content=question)],
        sampling=inference_pb2.SamplingParams(max_tokens=TOKENS, **sampling),
    )


@pytest.fixture()
def engine(platform_server: BackgroundServer) -> Engine:
    """The session server's engine."""
    return next(c for c in platform_server.server.components if getattr(c, "engine", None) is not None).engine


def _together(
    address: str, engine: Engine, calls: list[tuple[str, inference_pb2.GenerateRequest]]
) -> list[inference_pb2.GenerateResponse | TuneforgeError]:
    """Runs the (api key, request) calls at once; returns each answer and checks they shared one batch.

    The engine is held on a request of the test's own until every call is queued, so they all wait
    when it admits its next requests; its own record (`_step`) says what decoded together.
    """
    results: list[inference_pb2.GenerateResponse | TuneforgeError | None] = [None] * len(calls)

    def call(index: int, key: str, request: inference_pb2.GenerateRequest) -> None:
        with TuneforgeClient(address, api_key=key) as client:
            try:
                results[index] = client.call(client.inference.Generate, request)
            except TuneforgeError as exc:
                results[index] = exc

    with _one_batch(engine, len(calls)) as batches:
        threads = [threading.Thread(target=call, args=(i, key, request)) for i, (key, request) in enumerate(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    assert len(batches[0]) == len(calls), batches  # every call decoded in one batch from its first step
    return results  # type: ignore[return-value]


def _alone(address: str, key: str, question: str) -> str:
    with TuneforgeClient(address, api_key=key) as client:
        return client.call(client.inference.Generate, _request(question)).text


@pytest.mark.parametrize("temperature", [1e-300, 1e-40])
def test_one_tenants_tiny_temperature_leaves_the_other_tenants_rows_in_its_batch_intact(
    platform_server: BackgroundServer, engine: Engine, temperature: float
) -> None:
    alone = [_alone(platform_server.address, GLOBEX_KEY, q) for q in QUESTIONS[1:]]
    acme_alone = _alone(platform_server.address, ACME_KEY, QUESTIONS[0])
    answers = _together(
        platform_server.address,
        engine,
        [
            (ACME_KEY, _request(QUESTIONS[0], temperature=temperature, seed=7)),
            (GLOBEX_KEY, _request(QUESTIONS[1])),
            (GLOBEX_KEY, _request(QUESTIONS[2])),
        ],
    )
    assert all(isinstance(a, inference_pb2.GenerateResponse) for a in answers), answers
    assert [a.text for a in answers[1:]] == alone  # type: ignore[union-attr]
    assert answers[0].text == acme_alone  # type: ignore[union-attr]  # a temperature that small is greedy


def test_a_row_whose_sampling_fails_fails_that_tenants_call_only(
    platform_server: BackgroundServer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = [_alone(platform_server.address, GLOBEX_KEY, q) for q in QUESTIONS[1:]]
    real = Engine._sample_rows

    def poisoned(logits, rows):  # type: ignore[no-untyped-def]
        for i, row in enumerate(rows):  # NaN logits for acme's row: its probabilities are not finite
            if row.request.sampling.seed == 666:
                logits[i] = float("nan")
        return real(logits, rows)

    monkeypatch.setattr(Engine, "_sample_rows", staticmethod(poisoned))
    answers = _together(
        platform_server.address,
        engine,
        [
            (ACME_KEY, _request(QUESTIONS[0], temperature=0.7, seed=666)),
            (GLOBEX_KEY, _request(QUESTIONS[1])),
            (GLOBEX_KEY, _request(QUESTIONS[2])),
        ],
    )
    failed, *others = answers
    assert isinstance(failed, TuneforgeError) and failed.code == "UNAVAILABLE", failed
    assert "sampling failed" in failed.message
    assert [a.text for a in others] == alone  # type: ignore[union-attr]
