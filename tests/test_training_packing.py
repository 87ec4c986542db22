"""Packing with per-document attention, assistant-only targets and the chunked loss (CPU, tiny-qwen2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_CACHE

from tuneforge.models import ModelResolver
from tuneforge.training.loss import chunked_lm_loss
from tuneforge.training.packing import IGNORE, Sample, collate, pack_rows
from tuneforge.training.step import packed_loss


@pytest.fixture(scope="module")
def model():
    resolver = ModelResolver(MODEL_CACHE)
    loaded = resolver.load_model(resolver.resolve("tiny-qwen2"), dtype="float32", device="cpu")
    loaded.config._attn_implementation = "sdpa"
    return loaded


def _samples(seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for length, prompt in ((11, 4), (7, 3), (15, 9), (5, 2)):
        ids = torch.randint(0, 151_000, (length,), generator=g).tolist()
        samples.append(Sample(ids, [False] * prompt + [True] * (length - prompt)))
    return samples


def _alone(model, sample: Sample) -> tuple[torch.Tensor, int]:
    """The reference: one sample in its own batch, plain HF forward, loss on its trained tokens."""
    ids = torch.tensor([sample.input_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = torch.tensor(sample.input_ids[1:])
    trained = torch.tensor(sample.loss_mask[1:])
    return F.cross_entropy(logits[trained], targets[trained], reduction="sum"), int(trained.sum())


def test_first_fit_packing_keeps_order_and_fills_rows() -> None:
    samples = [Sample([1] * n, [True] * n) for n in (6, 5, 3, 2, 9)]
    rows = pack_rows(samples, 10)
    assert [[len(s.input_ids) for s in row] for row in rows] == [[6, 3], [5, 2], [9]]
    cut = pack_rows([Sample([1] * 12, [True] * 12)], 10)
    assert len(cut[0][0].input_ids) == 10


def test_collate_restarts_positions_and_never_predicts_across_samples() -> None:
    a = Sample([10, 11, 12, 13], [False, False, True, True])
    b = Sample([20, 21, 22], [False, True, True])
    batch = collate([[a, b]], 9, pad_id=0)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    # position t predicts token t+1 of its own sample, and only where that token is trained
    assert batch.targets[0].tolist() == [IGNORE, 12, 13, IGNORE, 21, 22, IGNORE, IGNORE, IGNORE]
    assert batch.cu_seqlens.tolist() == [0, 4, 7, 9] and batch.max_seqlen == 4
    assert batch.num_tokens == 7 and batch.num_loss_tokens == 4
    everything = collate([[a, b]], 9, pad_id=0, train_on_prompt=True)
    assert everything.targets[0].tolist() == [11, 12, 13, IGNORE, 21, 22, IGNORE, IGNORE, IGNORE]


def test_packed_loss_equals_the_losses_of_samples_run_one_by_one(model) -> None:
    samples = _samples()
    batch = collate(pack_rows(samples, 24), 24, pad_id=151643)
    assert batch.input_ids.shape[0] == 2  # really packed: 4 samples in 2 rows
    with torch.no_grad():
        packed, count = packed_loss(model, batch, varlen=False, chunk_size=5)
        expected = [_alone(model, s) for s in samples]
    assert count == sum(n for _, n in expected)
    torch.testing.assert_close(packed, sum(loss for loss, _ in expected), rtol=1e-5, atol=1e-4)


def test_packed_gradients_equal_one_by_one_gradients(model) -> None:
    samples = _samples(seed=1)
    batch = collate(pack_rows(samples, 40), 40, pad_id=151643)
    model.zero_grad()
    packed, _ = packed_loss(model, batch, varlen=False, chunk_size=7)
    packed.backward()
    packed_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    total = sum(_alone(model, s)[0] for s in samples)
    total.backward()
    torch.testing.assert_close(packed_grad, model.model.layers[0].self_attn.q_proj.weight.grad, rtol=1e-4, atol=1e-5)
    model.zero_grad()


def test_without_per_document_attention_the_losses_would_differ(model) -> None:
    """Guards the equality test above: plain causal attention over the row changes the answer."""
    samples = _samples()
    batch = collate(pack_rows(samples, 24), 24, pad_id=151643)
    with torch.no_grad():
        packed, _ = packed_loss(model, batch, varlen=False)
        hidden = model.model(input_ids=batch.input_ids, use_cache=False).last_hidden_state  # positions 0..L-1
        leaky, _ = chunked_lm_loss(hidden, batch.targets, model.lm_head)
    assert not torch.allclose(packed, leaky, rtol=1e-4)


def test_chunked_loss_equals_the_full_cross_entropy(model) -> None:
    hidden = torch.randn(3, 17, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, 151_000, (3, 17))
    targets[0, :5] = IGNORE
    full_logits = model.lm_head(hidden).float()
    full = F.cross_entropy(
        full_logits.reshape(-1, full_logits.shape[-1]), targets.reshape(-1), reduction="sum", ignore_index=IGNORE
    )
    (full_grad,) = torch.autograd.grad(full, hidden)
    chunked, count = chunked_lm_loss(hidden, targets, model.lm_head, chunk_size=8)
    (chunk_grad,) = torch.autograd.grad(chunked, hidden)
    assert count == 3 * 17 - 5
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(chunk_grad, full_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_kind", ["fused", "checkpointed"])
def test_both_loss_paths_give_the_full_cross_entropy_and_its_gradients(model, head_kind: str) -> None:
    """The fused linear-cross-entropy (plain Linear head) and the checkpointed path (any other head) agree
    with autograd through the whole logits, for the hidden states and for a trainable head."""
    torch.manual_seed(0)
    head = torch.nn.Linear(model.config.hidden_size, 1000, bias=False)
    module = head if head_kind == "fused" else torch.nn.Sequential(head)
    hidden = torch.randn(2, 13, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, 1000, (2, 13))
    targets[1, 3:9] = IGNORE
    full = F.cross_entropy(head(hidden).reshape(-1, 1000), targets.reshape(-1), reduction="sum", ignore_index=IGNORE)
    want_h, want_w = torch.autograd.grad(full * 0.5, (hidden, head.weight))
    total, count = chunked_lm_loss(hidden, targets, module, chunk_size=5)
    got_h, got_w = torch.autograd.grad(total * 0.5, (hidden, head.weight))
    assert count == 26 - 6
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


def test_assistant_only_masking_ignores_prompt_tokens(model) -> None:
    """Changing prompt tokens' targets cannot change the loss: they are never trained on."""
    base = Sample([5, 6, 7, 8, 9, 10], [False, False, False, True, True, True])
    batch = collate([[base]], 6, pad_id=0)
    assert batch.targets[0].tolist()[:2] == [IGNORE, IGNORE]
    assert batch.num_loss_tokens == 3
