"""The GPU test tier: the training path as users run it, on a CUDA device (`pytest -m gpu`).

Skipped where no CUDA device is present. Needs only the training stack (torch, transformers, peft,
pyarrow, and deepspeed for the ZeRO-3 test), so it runs on a bare GPU machine too:
`python -m pytest -m gpu tests/test_training_gpu.py`. Each training run goes through
`python -m tuneforge.training.trainer` under torchrun, so NCCL is initialised exactly as Ray Train
initialises it for a GPU worker (NCCL even for one worker).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU tier needs a CUDA device"),
]

SERVICES = Path(__file__).resolve().parents[1] / "services"
VOCAB = 2048


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Qwen2 (random weights, head_dim 64 as in Qwen2.5) with a word-level tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("gpu-model")
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    vocab = {"<pad>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset version's shards (token ids and assistant-only loss masks), lengths from the reference law."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("gpu-dataset")
    g = torch.Generator().manual_seed(1)
    for split, count in (("train", 400), ("validation", 24)):
        lengths = torch.exp(torch.randn(count, generator=g) * 0.8 + 5.0).clamp(16, 1024).long().tolist()
        ids, masks = [], []
        for n in lengths:
            ids.append(torch.randint(2, VOCAB, (n,), generator=g).tolist())
            prompt = n // 3
            masks.append([False] * prompt + [True] * (n - prompt))
        table = pa.table({"input_ids": ids, "loss_mask": masks})
        pq.write_table(table, out / f"{split}-00000.parquet")
    return out


def _config(model_dir: Path, dataset_dir: Path, out: Path, **overrides: object) -> dict:
    values = {
        "base_model_path": str(model_dir),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(out),
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": ["all-linear"],
        "learning_rate": 2e-3,
        "max_steps": 6,
        "micro_batch_size": 2,
        "max_seq_len": 1024,
        "warmup_ratio": 0.0,
        "seed": 3,
    }
    values.update(overrides)
    return values


def _torchrun(config: dict, tmp_path: Path, name: str) -> list[dict]:
    """Runs the trainer under `torchrun --nproc_per_node 1` (NCCL); returns rank 0's step records."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SERVICES), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    command += ["-m", "tuneforge.training.trainer", "--config", str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"step"')]


def test_lora_trains_under_nccl_and_resumes_like_an_uninterrupted_run(
    model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    steps = _torchrun(_config(model_dir, dataset_dir, straight, checkpoint_every_steps=3), tmp_path, "straight")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(s["loss"]) and s["tokens_per_second"] > 0 for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert "validation_loss" in steps[-1] and steps[-1]["peak_gpu_memory_gib"] > 0
    resumed = tmp_path / "resumed"
    again = _torchrun(
        _config(
            model_dir, dataset_dir, resumed, checkpoint_every_steps=3, resume_from=str(straight / "checkpoint-000003")
        ),
        tmp_path,
        "resumed",
    )
    assert [s["step"] for s in again] == [4, 5, 6]
    for a, b in zip(again, steps[3:], strict=True):
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])  # the schedule continues
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)  # same rows in the same order
    expected = load_file(straight / "checkpoint-000006" / "adapter_model.safetensors")
    actual = load_file(resumed / "checkpoint-000006" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    # LoRA's B matrices start at zero, so they are the whole update: compare them as one vector
    # (flash attention's backward accumulates in a nondeterministic order; a wrong resume is off by O(1))
    b_names = [n for n in expected if "lora_B" in n]
    error = _relative_error(
        torch.cat([actual[n].flatten() for n in b_names]), torch.cat([expected[n].flatten() for n in b_names])
    )
    assert error < 2e-2, error


def test_varlen_attention_equals_sdpa_with_a_block_diagonal_mask() -> None:
    from tuneforge.training.attention import register_varlen_attention, varlen_attention_forward, varlen_available

    assert varlen_available()
    register_varlen_attention()
    torch.manual_seed(0)
    lengths = [5, 300, 17, 1, 700, 1001]
    total, heads, kv_heads, dim = sum(lengths), 28, 4, 128  # Qwen2.5-7B's heads and GQA groups
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    out, _ = varlen_attention_forward(
        torch.nn.Module(), q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu, max_length_q=max(lengths)
    )
    document = torch.repeat_interleave(torch.arange(len(lengths), device="cuda"), torch.tensor(lengths, device="cuda"))
    position = torch.arange(total, device="cuda")
    mask = (document[:, None] == document[None, :]) & (position[:, None] >= position[None, :])
    groups = heads // kv_heads
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1), attn_mask=mask
    ).transpose(1, 2)
    assert out.shape == reference.shape
    assert _relative_error(out, reference) < 1e-2


def test_packed_rows_on_gpu_give_each_sample_its_own_loss(model_dir: Path) -> None:
    """Through the model: varlen attention over a packed row equals the samples run one by one."""
    from transformers import AutoModelForCausalLM

    from tuneforge.training.attention import register_varlen_attention
    from tuneforge.training.packing import Sample, collate
    from tuneforge.training.step import packed_loss

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation=register_varlen_attention()
    ).cuda()
    g = torch.Generator().manual_seed(2)
    samples = [Sample(torch.randint(2, VOCAB, (n,), generator=g).tolist(), [True] * n) for n in (40, 200, 9, 300)]
    with torch.no_grad():
        packed, count = packed_loss(model, collate([samples], 1024, 0).to("cuda"), varlen=True)
        alone = [packed_loss(model, collate([[s]], len(s.input_ids), 0).to("cuda"), varlen=True) for s in samples]
    assert count == sum(n for _, n in alone)
    assert float(packed) == pytest.approx(sum(float(loss) for loss, _ in alone), rel=1e-2)


def test_the_fp8_base_layer_stays_within_its_error_bound_on_gpu() -> None:
    from tuneforge.training.fp8 import Fp8FrozenLinear, fp8_supported

    assert fp8_supported(torch.device("cuda"))
    torch.manual_seed(0)
    linear = torch.nn.Linear(3584, 18944, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    fp8 = Fp8FrozenLinear(linear)
    x = torch.randn(4096, 3584, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x_ref = x.detach().double().requires_grad_(True)
    y = fp8(x)
    y_ref = x_ref @ linear.weight.double().t()
    assert _relative_error(y, y_ref) < 0.06  # e4m3: 3 mantissa bits, per-token and per-channel scales
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad.double())
    assert _relative_error(x.grad, x_ref.grad) < 0.06
    spiky = torch.randn(64, 3584, device="cuda", dtype=torch.bfloat16)
    spiky[0] *= 1e3
    with torch.no_grad():
        assert _relative_error(fp8(spiky)[1:], (spiky.double() @ linear.weight.double().t())[1:]) < 0.06


def test_full_fine_tuning_with_zero3_and_cpu_offload_checkpoints_and_resumes(
    model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    full = {
        "method": "full",
        "deepspeed_stage": 3,
        "offload_optimizer": True,
        "offload_parameters": True,
        "learning_rate": 1e-4,
        "max_steps": 4,
        "checkpoint_every_steps": 2,
    }
    out = tmp_path / "zero3"
    steps = _torchrun(_config(model_dir, dataset_dir, out, **full), tmp_path, "zero3")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(s["loss"]) for s in steps)
    weights = load_file(out / "checkpoint-000004" / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (VOCAB, 256)  # whole, gathered from the partitions
    base = load_file(model_dir / "model.safetensors")
    assert not torch.equal(weights["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])
    resumed = tmp_path / "zero3-resumed"
    again = _torchrun(
        _config(model_dir, dataset_dir, resumed, **full, resume_from=str(out / "checkpoint-000002")), tmp_path, "again"
    )
    assert [s["step"] for s in again] == [3, 4]
    assert again[0]["learning_rate"] == pytest.approx(steps[2]["learning_rate"])
    assert again[0]["loss"] == pytest.approx(steps[2]["loss"], rel=2e-2)  # the step-2 weights, the same rows
