"""The per-worker training function on CPU: loss goes down, checkpoints resume to the same result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import MODEL_CACHE
from safetensors.torch import load_file

from tuneforge.curation.pipeline import CurationOptions, InputFile, curate
from tuneforge.models import ModelResolver
from tuneforge.training.trainer import train_worker

DEMO = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data" / "event_dates.jsonl"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    root = tmp_path_factory.mktemp("dataset")
    item = InputFile(DEMO.name, DEMO, hashlib.sha256(DEMO.read_bytes()).hexdigest())
    result = curate(
        [item], tokenizer, CurationOptions(max_seq_len=256, validation_fraction=0.1), root / "v", root / "work"
    )
    assert result.ok
    return root / "v"


def _config(dataset_dir: Path, out: Path, **overrides: object) -> dict:
    values = {
        "base_model_path": str(MODEL_CACHE / "tiny-qwen2"),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(out),
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["all-linear"],
        "learning_rate": 5e-3,
        "max_steps": 8,
        "micro_batch_size": 2,
        "max_seq_len": 256,
        "warmup_ratio": 0.0,
        "seed": 7,
    }
    values.update(overrides)
    return values


def test_lora_training_reduces_the_loss_and_saves_safetensors(dataset_dir: Path, tmp_path: Path) -> None:
    seen: list[dict] = []
    final = train_worker(_config(dataset_dir, tmp_path, max_steps=12), report=lambda m, c: seen.append(dict(m)))
    assert [m["step"] for m in seen] == list(range(1, 13))
    losses = [m["loss"] for m in seen]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, [round(x, 3) for x in losses]
    assert "validation_loss" in final and final["tokens_per_second"] > 0
    checkpoint = tmp_path / "checkpoint-000012"
    assert (checkpoint / "adapter_model.safetensors").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 12
    assert not list(checkpoint.glob("*.bin"))


def test_resuming_from_a_checkpoint_ends_like_an_uninterrupted_run(dataset_dir: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train_worker(_config(dataset_dir, straight, checkpoint_every_steps=4), report=lambda m, c: None)
    resumed = tmp_path / "resumed"
    steps: list[int] = []
    train_worker(
        _config(dataset_dir, resumed, checkpoint_every_steps=4, resume_from=str(straight / "checkpoint-000004")),
        report=lambda m, c: steps.append(m["step"]),
    )
    assert steps == [5, 6, 7, 8]
    expected = load_file(straight / "checkpoint-000008" / "adapter_model.safetensors")
    actual = load_file(resumed / "checkpoint-000008" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
