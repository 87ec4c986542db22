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


def test_checkpoint_digests_are_recorded_at_save_time_and_listing_reads_no_weights(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.training import runner

    train_worker(_config(dataset_dir, tmp_path, max_steps=2, checkpoint_every_steps=1), report=lambda m, c: None)
    weights = tmp_path / "checkpoint-000002" / "adapter_model.safetensors"
    recorded = json.loads((weights.parent / "trainer_state.json").read_text())["weights"]
    assert recorded == {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
    }

    def rehash(path: Path) -> dict:
        raise AssertionError(f"{path} re-read to list it")

    monkeypatch.setattr(runner, "weights_digest", rehash)
    listed = runner.list_checkpoints(tmp_path)
    assert [(c["step"], c["sha256"]) for c in listed][-1] == (2, recorded["sha256"])
    # a checkpoint saved before digests were recorded is still listed (hashed once more)
    state = json.loads((weights.parent / "trainer_state.json").read_text())
    del state["weights"]
    (weights.parent / "trainer_state.json").write_text(json.dumps(state))
    monkeypatch.undo()
    assert runner.list_checkpoints(tmp_path)[-1]["sha256"] == recorded["sha256"]


def test_an_fp8_base_trains_the_same_adapter_files_and_the_loss_goes_down(dataset_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    seen: list[dict] = []
    train_worker(
        _config(dataset_dir, tmp_path, max_steps=12, base_precision="fp8"), report=lambda m, c: seen.append(dict(m))
    )
    losses = [m["loss"] for m in seen]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, [round(x, 3) for x in losses]
    adapter = load_file(tmp_path / "checkpoint-000012" / "adapter_model.safetensors")
    # only adapter matrices are saved: nothing of the float8 base leaks into the adapter file
    assert (
        adapter and all("lora_" in k for k in adapter) and all(t.dtype != torch.float8_e4m3fn for t in adapter.values())
    )


def test_resuming_from_a_checkpoint_ends_bit_for_bit_like_an_uninterrupted_run(
    dataset_dir: Path, tmp_path: Path
) -> None:
    # dropout on: the resumed run must draw the same masks (the generators' state is in the checkpoint)
    straight = tmp_path / "straight"
    train_worker(_config(dataset_dir, straight, checkpoint_every_steps=4, lora_dropout=0.1), report=lambda m, c: None)
    resumed = tmp_path / "resumed"
    steps: list[int] = []
    train_worker(
        _config(
            dataset_dir,
            resumed,
            checkpoint_every_steps=4,
            lora_dropout=0.1,
            resume_from=str(straight / "checkpoint-000004"),
        ),
        report=lambda m, c: steps.append(m["step"]),
    )
    assert steps == [5, 6, 7, 8]
    expected = load_file(straight / "checkpoint-000008" / "adapter_model.safetensors")
    actual = load_file(resumed / "checkpoint-000008" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(actual[name], expected[name])] == []
    assert (straight / "checkpoint-000008" / "adapter_model.safetensors").read_bytes() == (
        resumed / "checkpoint-000008" / "adapter_model.safetensors"
    ).read_bytes()


@pytest.mark.slow
def test_two_ray_train_workers_on_gloo(dataset_dir: Path, tmp_path: Path, local_ray) -> None:
    from tuneforge.training.ray_train import Scaling, run_with_ray

    result = run_with_ray(
        _config(dataset_dir, tmp_path / "out", max_steps=4, checkpoint_every_steps=2),
        Scaling(num_workers=2, cpus_per_worker=1, max_failures=0),
        storage_path=str(tmp_path / "ray"),
        name="two-workers",
    )
    assert result.error is None
    assert result.metrics["step"] == 4 and result.metrics["total_steps"] == 4
    with result.checkpoint.as_directory() as directory:
        assert (Path(directory) / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(dataset_dir: Path, tmp_path: Path, local_ray) -> None:
    from tuneforge.training.ray_train import Scaling, run_with_ray

    out = tmp_path / "out"
    result = run_with_ray(
        _config(dataset_dir, out, max_steps=6, checkpoint_every_steps=2, crash_after_step=3),
        Scaling(num_workers=2, cpus_per_worker=1, max_failures=2),
        storage_path=str(tmp_path / "ray"),
        name="killed",
    )
    assert result.error is None
    assert (out / ".crashed-after-3").exists()  # the worker really died once
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # died after step 3, restarted from the step-2 checkpoint
    assert [(r["event"], r["step"]) for r in log] == [
        ("started", 0),
        *[("step", s) for s in (1, 2, 3)],
        ("started", 2),
        *[("step", s) for s in (3, 4, 5, 6)],
    ]
    assert [r.get("checkpoint") for r in log if r["event"] == "step"][:2] == [None, "checkpoint-000002"]
    assert result.metrics["step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_full_fine_tuning_on_two_cpu_workers(
    dataset_dir: Path,
    tmp_path: Path,
    local_ray,
    stage: int,
) -> None:
    from tuneforge.training.ray_train import Scaling, run_with_ray

    out = tmp_path / "out"
    result = run_with_ray(
        _config(dataset_dir, out, method="full", deepspeed_stage=stage, max_steps=3, learning_rate=1e-3),
        Scaling(num_workers=2, cpus_per_worker=1, max_failures=0),
        storage_path=str(tmp_path / "ray"),
        name=f"zero{stage}",
    )
    assert result.error is None
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "step"]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    weights = load_file(out / "checkpoint-000003" / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]
    assert embed.shape == (151936, 64)  # the whole model, gathered from the ZeRO shards
    base = load_file(MODEL_CACHE / "tiny-qwen2" / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(embed, base)  # full fine-tuning changed the base weights
    if stage == 3:
        _registers_and_serves_what_transformers_generates(out / "checkpoint-000003", tmp_path)


def _registers_and_serves_what_transformers_generates(checkpoint: Path, tmp_path: Path) -> None:
    """The gathered ZeRO-3 checkpoint registers as a model version; an engine on it generates transformers tokens."""
    from transformers import AutoModelForCausalLM

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.inference.base_model import load_registered_model
    from tuneforge.inference.engine import Engine, Sampling
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.training.runner import register_full_fine_tune

    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    store.migrate()
    registry = AdapterRegistry(store, ArtifactStore(tmp_path / "artifacts"))
    resolver = ModelResolver(MODEL_CACHE)
    lineage = {"base_model": "tiny-qwen2", "job_id": "job-zero3"}
    version = register_full_fine_tune(
        registry, resolver, "acme", "zero3", checkpoint, resolver.resolve("tiny-qwen2"), lineage, {}
    )
    assert version.kind == "full_fine_tune" and "optimizer.pt" not in {f["name"] for f in version.files}
    _, loaded = load_registered_model(registry, resolver, "acme/zero3:1", "float32", "cpu")
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "A date?"}], add_generation_prompt=True)
    prompt = prompt if isinstance(prompt, list) else prompt["input_ids"]
    engine = Engine(loaded.model, loaded.tokenizer, max_adapters=1)
    try:
        served, _ = engine.generate(prompt, None, Sampling(max_tokens=8))
    finally:
        engine.stop()
    reference = AutoModelForCausalLM.from_pretrained(loaded.resolved.source, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert served == loaded.tokenizer.decode(expected[0, len(prompt) :], skip_special_tokens=True)


def test_two_torchrun_processes_train_like_one_process_given_both_rows(dataset_dir: Path, tmp_path: Path) -> None:
    """DDP under a real process group (gloo here, NCCL on GPU) averages gradients over ranks.

    Two processes with one row each per step see exactly the rows one process sees with two rows a
    step, so their adapters must match; without gradient synchronisation rank 0 would only have
    learned from its own rows.
    """
    import os
    import subprocess
    import sys

    alone = tmp_path / "alone"
    train_worker(_config(dataset_dir, alone, max_steps=4, micro_batch_size=2), report=lambda m, c: None)
    together = tmp_path / "together"
    config = tmp_path / "train.json"
    config.write_text(json.dumps(_config(dataset_dir, together, max_steps=4, micro_batch_size=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*torchrun, "-m", "tuneforge.training.trainer", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"step"')]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # rank 0 reports
    expected = load_file(alone / "checkpoint-000004" / "adapter_model.safetensors")
    actual = load_file(together / "checkpoint-000004" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6)


def test_each_epoch_is_packed_once_and_every_rank_gets_the_same_number_of_batches(
    dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.training import trainer
    from tuneforge.training.trainer import EpochPlan, TrainConfig, load_samples

    samples = load_samples(dataset_dir, "train")
    config = TrainConfig(**_config(dataset_dir, dataset_dir, micro_batch_size=2))
    calls: list[int] = []
    real = trainer.pack_rows
    monkeypatch.setattr(trainer, "pack_rows", lambda s, n: calls.append(len(s)) or real(s, n))
    plans = [EpochPlan(samples, config, rank, 3) for rank in range(3)]
    counts = {len(plan.batches(0)) for plan in plans}
    assert len(counts) == 1  # equal shares: no rank waits in a collective the others never reach
    per_epoch = counts.pop()
    plan = plans[0]
    stream = plan.stream(skip=0)
    first_two_epochs = [next(stream) for _ in range(2 * per_epoch)]
    assert len(calls) == 3 + 1  # each plan's epoch 0 once, then epoch 1 once, however many batches were read
    rows = [id(s) for batch in first_two_epochs[:per_epoch] for row in batch for s in row]
    assert len(rows) == len(set(rows))  # an epoch trains each sample once
    assert first_two_epochs[:per_epoch] != first_two_epochs[per_epoch:]  # epochs are shuffled differently
    resumed = EpochPlan(samples, config, 0, 3).stream(skip=per_epoch + 1)
    assert next(resumed) == first_two_epochs[per_epoch + 1]  # replaying the order lands on the same batch


def test_running_out_of_gpu_memory_names_the_step_the_rows_and_what_to_change(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.training import trainer

    real = trainer.PackedLossModule.forward
    calls: list[int] = []

    def forward(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(trainer.PackedLossModule, "forward", forward)
    with pytest.raises(trainer.TrainingOutOfMemory) as raised:
        train_worker(_config(dataset_dir, tmp_path, max_steps=4, micro_batch_size=2), report=lambda m, c: None)
    message = str(raised.value)
    assert message.startswith("out of GPU memory at step 3 on rank 0 (micro-batch of 2 row(s) x 256 tokens")
    assert "gradient_checkpointing" in message and "base_precision fp8" in message and "ZeRO-3" in message
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)


def test_each_reported_step_carries_its_own_batches_tokens_and_loss(dataset_dir: Path, tmp_path: Path) -> None:
    """Steps are read back from the device one step late: each report must still describe its own step."""
    from transformers import AutoModelForCausalLM

    from tuneforge.training.packing import collate
    from tuneforge.training.step import packed_loss
    from tuneforge.training.trainer import EpochPlan, TrainConfig, load_samples

    values = _config(dataset_dir, tmp_path, max_steps=6, checkpoint_every_steps=3)
    seen: list[tuple[dict, Path | None]] = []
    train_worker(values, report=lambda m, c: seen.append((dict(m), c)))
    config = TrainConfig(**values)
    batches = EpochPlan(load_samples(dataset_dir, "train"), config, 0, 1).batches(0)
    expected = [sum(len(sample.input_ids) for row in batch for sample in row) for batch in batches[:6]]
    assert len(set(expected)) > 1  # the batches differ, so a report shifted by a step would show it
    assert [m["tokens"] for m, _ in seen] == expected
    assert [m["step"] for m, c in seen if c is not None] == [3, 6]
    assert all(c.name == f"checkpoint-{m['step']:06d}" for m, c in seen if c is not None)
    # LoRA's B starts at zero: step 1's loss is the base model's loss on the first batch
    model = AutoModelForCausalLM.from_pretrained(values["base_model_path"], dtype=torch.float32)
    with torch.no_grad():
        total, count = packed_loss(model, collate(batches[0], 256, 0, False), varlen=False)
    torch.testing.assert_close(seen[0][0]["loss"], float(total) / count, rtol=1e-4, atol=1e-5)
