"""Adapter slots that scale (#17 point 4): grouped LoRA matmuls, slot memory, the host-memory adapter cache.

The grouped paths (`padded`, `segment`) are checked against the per-row gather the engine used before
(each row reads its own copy of its adapter: `_per_row`), on random slot mixes with the base slot,
repeated adapters and ranks below `max_rank`; then through tiny-qwen2 against PEFT itself.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from pydantic import ValidationError
from safetensors.torch import save_file

from tuneforge.common.errors import FailedPrecondition
from tuneforge.common.settings import InferenceSettings
from tuneforge.inference import lora
from tuneforge.inference.lora import (
    DEFAULT_TARGETS,
    AdapterWeights,
    BatchedLoraLinear,
    HostAdapterCache,
    SlotSelection,
    check_slot_memory,
    inject,
    read_adapter,
    slot_memory_bytes,
    write_slot,
)

KERNELS = ["padded", "segment"]


class TwoLayers(torch.nn.Module):
    """q_proj (32 → 48) then v_proj (48 → 40): two adapted Linears sharing one selection."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(32, 48, bias=True)
        self.v_proj = torch.nn.Linear(48, 40, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v_proj(torch.tanh(self.q_proj(x)))


def _fill(layers: dict[str, BatchedLoraLinear], ranks: dict[int, int], generator: torch.Generator) -> None:
    """Random adapters in the given slots at the given ranks (zero-padded to max_rank); slot 0 stays zero."""
    with torch.no_grad():
        for layer in layers.values():
            for slot, rank in ranks.items():
                a = torch.randn(rank, layer.base.in_features, generator=generator)
                b = torch.randn(layer.base.out_features, rank, generator=generator)
                scale = float(torch.rand(1, generator=generator)) * 2 + 0.25
                write_slot({"x": layer}, slot, AdapterWeights(rank, scale, {"x": (a, b)}))


def _per_row(layer: BatchedLoraLinear, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The engine's former path: every row gathers its own copy of its adapter's A and B."""
    out = layer.base(x)
    shaped = x.reshape(rows.shape[0], -1, x.shape[-1])
    a = layer.lora_a.index_select(0, rows)
    b = layer.lora_b.index_select(0, rows)
    delta = torch.bmm(torch.bmm(shaped, a.transpose(1, 2)), b.transpose(1, 2))
    delta = delta * layer.scaling.index_select(0, rows).view(-1, 1, 1)
    return out + delta.reshape(out.shape)


def _model(kernel: str, slots: int = 6, max_rank: int = 8, seed: int = 0) -> tuple[TwoLayers, dict]:
    torch.manual_seed(seed)
    model = TwoLayers()
    injected = inject(model, slots, max_rank, ("q_proj", "v_proj"), kernel)
    generator = torch.Generator().manual_seed(seed)
    _fill(injected["layers"], {1: 8, 2: 3, 3: 5, 4: 1, 5: 8}, generator)
    return model, injected


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", range(6))
def test_grouped_layers_equal_the_per_row_gather(kernel: str, seed: int) -> None:
    _unused, injected = _model(kernel, seed=seed)
    layer, selection = injected["layers"]["q_proj"], injected["selection"]
    generator = torch.Generator().manual_seed(100 + seed)
    batch = int(torch.randint(1, 12, (1,), generator=generator))
    steps = int(torch.randint(1, 6, (1,), generator=generator))
    rows = torch.randint(0, 6, (batch,), generator=generator)
    rows[0] = 0  # the base slot is always in the mix
    if batch > 2:
        rows[-1] = rows[1]  # and an adapter used by several rows
    x = torch.randn(batch, steps, 32, generator=generator)
    with torch.no_grad():
        expected = _per_row(layer, x, rows)
        selection.rows = rows  # the engine's assignment: [B] slot ids, x [B, S, in]
        got = layer(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # one id per token, tokens of a request contiguous: [1, T, in]
        selection.set(rows.repeat_interleave(steps).tolist())
        per_token = layer(x.reshape(1, batch * steps, 32))
        torch.testing.assert_close(per_token.view_as(expected), expected, rtol=1e-5, atol=1e-5)
        # tokens on the base slot are exactly the base model's
        base_rows = rows == 0
        assert torch.equal(got[base_rows], layer.base(x)[base_rows])
        selection.rows = None
        assert selection.rows is None
        assert torch.equal(layer(x), layer.base(x))


@pytest.mark.parametrize("kernel", KERNELS)
def test_one_long_group_beside_short_ones_equals_the_reference(kernel: str) -> None:
    """A prefill chunk of one adapter beside decode tokens of others (per-token ids), the chunked padding."""
    _unused, injected = _model(kernel, seed=7)
    layer, selection = injected["layers"]["q_proj"], injected["selection"]
    slots = torch.tensor([3] * 40 + [1, 0, 2, 5, 1, 4, 0])
    x = torch.randn(1, slots.numel(), 32)
    with torch.no_grad():
        selection.set(slots)
        got = layer(x)
        expected = _per_row(layer, x.view(-1, 1, 32), slots).view_as(got)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if kernel == "padded":
        plan = selection.plan(x, 32)
        adapted = int((slots != 0).sum())
        groups = 5
        assert plan.index.numel() <= 2 * adapted + groups  # padding never more than doubles the work
        assert plan.slots.numel() <= 2 * groups


def test_each_adapter_is_gathered_once_per_step_however_many_rows_use_it() -> None:
    _unused, injected = _model("padded")
    selection = injected["selection"]
    selection.set([2, 2, 0, 5, 2, 5, 0, 2])
    plan = selection.plan(torch.zeros(8, 1, 32), 32)
    assert plan.slots.tolist() == [2, 5]  # one gather of each adapter; no row of the base slot
    assert sorted(plan.index[plan.mask.bool()].tolist()) == [0, 1, 3, 4, 5, 7]


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_grouping_is_worked_out_once_per_step_not_per_layer(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, injected = _model(kernel)
    selection = injected["selection"]
    built: list[int] = []
    real = SlotSelection._build

    def counting(self: SlotSelection, *args: object) -> object:
        built.append(1)
        return real(self, *args)

    monkeypatch.setattr(SlotSelection, "_build", counting)
    x = torch.randn(4, 3, 32)
    rows = torch.tensor([1, 0, 4, 1])
    with torch.no_grad():
        for _step in range(3):
            selection.rows = rows
            model(x)  # q_proj and v_proj
    assert len(built) == 3


def test_slot_ids_are_checked_when_set() -> None:
    _unused, injected = _model("padded")
    selection, layer = injected["selection"], injected["layers"]["q_proj"]
    with pytest.raises(ValueError, match=r"0\.\.5"):
        selection.set([0, 6])
    with pytest.raises(ValueError, match=r"0\.\.5"):
        selection.set(torch.tensor([-1]))
    with pytest.raises(ValueError, match="host slot ids"):
        selection.set(torch.tensor([1, 2]), host=[1])
    selection.set([1, 2, 3])
    with pytest.raises(ValueError, match="cannot be split over 3 rows"):
        layer(torch.randn(4, 32))
    assert selection.plan(torch.zeros(0, 32), 32) is None  # no tokens, nothing to group
    # a CPU tensor given as the host copy is used as is (no device→host copy of `rows`)
    rows = torch.tensor([1, 2])
    selection.set(rows, host=rows.tolist())
    assert selection.rows is rows


def test_bfloat16_slots_follow_the_float32_reference() -> None:
    model, injected = _model("padded", seed=3)
    layer, selection = injected["layers"]["q_proj"], injected["selection"]
    rows = torch.tensor([1, 0, 2, 1, 5])
    x = torch.randn(5, 2, 32)
    with torch.no_grad():
        expected = _per_row(layer, x, rows)
        model.to(torch.bfloat16)
        for kernel in KERNELS:
            selection.kernel = kernel
            selection.rows = rows
            got = layer(x.to(torch.bfloat16))
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), expected, rtol=3e-2, atol=3e-1)


# -- through a real model ----------------------------------------------------------------------


def _peft_adapter(base: torch.nn.Module, directory: Path, seed: int, targets: list[str], rank: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    )
    peft_model.save_pretrained(directory)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_mixed_batch_through_tiny_qwen2_matches_each_adapter_under_peft(kernel: str, tmp_path: Path) -> None:
    """Rows on two adapters (ranks 8 and 4, different targets) and the base, in one pass, as PEFT computes each."""
    from conftest import MODEL_CACHE
    from peft import PeftModel

    from tuneforge.models import ModelResolver

    resolver = ModelResolver(MODEL_CACHE)
    ref = resolver.resolve("tiny-qwen2")

    def fresh() -> torch.nn.Module:
        return resolver.load_model(ref, dtype="float32", device="cpu").eval()

    first = _peft_adapter(fresh(), tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"], 8)
    second = _peft_adapter(fresh(), tmp_path / "b", 2, ["q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"], 4)
    model = fresh()
    injected = inject(model, 4, 8, DEFAULT_TARGETS, kernel)
    layers, selection = injected["layers"], injected["selection"]
    write_slot(layers, 1, read_adapter(first, layers, 8))
    write_slot(layers, 3, read_adapter(second, layers, 8))
    prompts = torch.tensor([[9707, 1879, 13, 2585, 11], [40, 1075, 279, 3974, 13], [785, 6722, 315, 9625, 374]])
    batch = prompts[[0, 1, 2, 0, 1]]
    slots = [1, 0, 3, 3, 1]
    with torch.inference_mode():
        selection.set(slots)
        got = model(input_ids=batch).logits
        selection.set(None)
        expected = []
        for prompt, directory in zip(batch, [first, None, second, second, first], strict=True):
            alone = fresh() if directory is None else PeftModel.from_pretrained(fresh(), directory)
            expected.append(alone(input_ids=prompt.unsqueeze(0)).logits[0])
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected[2], expected[4])  # the adapters really change the output


# -- slot memory -------------------------------------------------------------------------------


def _qwen7b_on_meta() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    with torch.device("meta"):
        return Qwen2ForCausalLM(config).to(torch.bfloat16)


def test_slot_memory_of_the_qwen_7b_architecture() -> None:
    model = _qwen7b_on_meta()
    # per decoder layer, in + out of the seven projections; k/v project to 4 heads of 128
    per_rank = (3584 + 3584) * 2 + (3584 + 512) * 2 + 3 * (3584 + 18944)
    assert per_rank == 90112
    expected = 33 * (64 * per_rank * 28 + 7 * 28) * 2
    assert slot_memory_bytes(model, 33, 64) == expected  # the README's 32 adapters at r64: 9.9 GiB
    assert round(expected / 2**30, 1) == 9.9
    assert slot_memory_bytes(model, 33, 16, ("q_proj", "v_proj")) == 33 * (16 * (7168 + 4096) * 28 + 2 * 28) * 2


def test_slots_that_do_not_fit_name_what_to_lower() -> None:
    model = _qwen7b_on_meta()
    need = slot_memory_bytes(model, 33, 64)
    free = 8 * 2**30
    with pytest.raises(ValueError) as raised:
        check_slot_memory(model, 33, 64, free_bytes=free, reserve_bytes=2**30)
    message = str(raised.value)
    for text in ("inference.max_adapters", "inference.max_rank", "inference.lora_targets", "9.93 GiB", "8.00 GiB"):
        assert text in message
    assert "32 adapters + the base slot at rank 64 over 196 Linear layers" in message
    # the figures it suggests do fit
    adapters = int(message.split("(at rank 64 ")[1].split(" fit")[0])
    rank = int(message.split("with 32 adapters rank ")[1].split(" fits")[0])
    assert adapters == (free - 2**30) // (need // 33) - 1
    assert check_slot_memory(model, adapters + 1, 64, free_bytes=free, reserve_bytes=2**30) <= free - 2**30
    assert check_slot_memory(model, 33, rank, free_bytes=free, reserve_bytes=2**30) <= free - 2**30
    with pytest.raises(ValueError):
        check_slot_memory(model, adapters + 2, 64, free_bytes=free, reserve_bytes=2**30)
    with pytest.raises(ValueError):
        check_slot_memory(model, 33, rank + 1, free_bytes=free, reserve_bytes=2**30)
    # fewer targets fit where all seven do not
    assert check_slot_memory(model, 33, 64, ("q_proj", "v_proj"), free_bytes=free) < free
    # nothing to measure on CPU: the figure comes back unchecked
    assert check_slot_memory(TwoLayers(), 9, 8, ("q_proj",)) == 9 * (8 * (32 + 48) + 1) * 4
    with pytest.raises(ValueError, match=r"inference\.lora_targets"):
        check_slot_memory(TwoLayers(), 9, 8, ("gate_proj",))


def test_lora_targets_setting() -> None:
    assert tuple(InferenceSettings().lora_targets) == DEFAULT_TARGETS
    assert InferenceSettings(lora_targets=["q_proj", "v_proj"]).lora_targets == ["q_proj", "v_proj"]
    for bad in ([], ["model.layers.0.q_proj"], ["q_proj", "q_proj"]):
        with pytest.raises(ValidationError, match="lora_targets"):
            InferenceSettings(lora_targets=bad)
    with pytest.raises(ValidationError):
        InferenceSettings(adapter_host_cache_mb=-1)


# -- adapters read from disk and the host cache ---------------------------------------------


def _adapter_dir(directory: Path, layer_dims: dict[str, tuple[int, int]], rank: int, seed: int) -> Path:
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fan_in, fan_out) in layer_dims.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator)
    save_file(tensors, directory / "adapter_model.safetensors")
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}))
    return directory


DIMS = {"q_proj": (32, 48), "v_proj": (48, 40)}


def _layers(dtype: torch.dtype = torch.float32) -> dict[str, BatchedLoraLinear]:
    model = TwoLayers().to(dtype)
    return inject(model, 4, 8, ("q_proj", "v_proj"))["layers"]


def _bytes(rank: int, element: int = 4) -> int:
    return sum((fan_in + fan_out) * rank for fan_in, fan_out in DIMS.values()) * element


def test_adapters_targeting_modules_the_replica_does_not_adapt_name_the_setting(tmp_path: Path) -> None:
    layers = inject(TwoLayers(), 3, 8, ("q_proj",))["layers"]
    directory = _adapter_dir(tmp_path / "a", DIMS, 4, 0)
    with pytest.raises(FailedPrecondition, match=r"v_proj.*inference.lora_targets is q_proj; add 'v_proj'"):
        read_adapter(directory, layers, 8)
    with pytest.raises(FailedPrecondition, match=r"rank 4 .*inference.max_rank"):
        read_adapter(directory, _layers(), 2)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_second_read_comes_from_memory_not_the_files(tmp_path: Path) -> None:
    layers = _layers(torch.bfloat16)
    directory = _adapter_dir(tmp_path / "a", DIMS, 4, 0)
    cache = HostAdapterCache(2**20)
    hits, misses = (
        _sample("tuneforge_inference_adapter_host_cache_hits_total"),
        _sample("tuneforge_inference_adapter_host_cache_misses_total"),
    )
    first = cache.read("acme/a:1", directory, layers, 8)
    shutil.rmtree(directory)  # the files are gone: only the cache can answer now
    second = cache.read("acme/a:1", directory, layers, 8)
    assert second is first
    assert (cache.hits, cache.misses) == (1, 1)
    assert _sample("tuneforge_inference_adapter_host_cache_hits_total") == hits + 1
    assert _sample("tuneforge_inference_adapter_host_cache_misses_total") == misses + 1
    # kept in the slots' dtype, and copied into a slot exactly
    a, b = first.tensors["q_proj"]
    assert a.dtype == torch.bfloat16 and not a.is_pinned()  # CPU slots: nothing to pin for
    assert cache.bytes == _bytes(4, 2) == first.nbytes
    write_slot(layers, 2, second)
    assert torch.equal(layers["q_proj"].lora_a[2, :4], a) and torch.equal(layers["q_proj"].lora_b[2, :, :4], b)
    assert float(layers["q_proj"].scaling[2]) == 2.0
    assert not layers["q_proj"].lora_a[2, 4:].any()
    # a corrupt or missing adapter is not cached
    with pytest.raises(FailedPrecondition):
        cache.read("acme/gone:1", tmp_path / "nothing", layers, 8)
    assert "acme/gone:1" not in cache and len(cache) == 1
    assert cache.discard("acme/a:1") and cache.bytes == 0 and not cache.discard("acme/a:1")


def test_the_byte_bound_drops_the_least_recently_used(tmp_path: Path) -> None:
    layers = _layers()
    size = _bytes(4)
    cache = HostAdapterCache(2 * size + size // 2)  # room for two
    dirs = {key: _adapter_dir(tmp_path / key, DIMS, 4, seed) for seed, key in enumerate("abcd")}
    before = _sample("tuneforge_inference_adapter_host_cache_evictions_total")
    cache.read("a", dirs["a"], layers, 8)
    cache.read("b", dirs["b"], layers, 8)
    cache.read("a", dirs["a"], layers, 8)  # a is now the most recently used
    cache.read("c", dirs["c"], layers, 8)
    assert cache.keys() == ["a", "c"] and cache.bytes == 2 * size
    assert _sample("tuneforge_inference_adapter_host_cache_evictions_total") == before + 1
    # an adapter larger than the whole cache is served but not kept, and evicts nothing
    small = HostAdapterCache(size)
    small.read("a", dirs["a"], layers, 8)
    big = _adapter_dir(tmp_path / "big", DIMS, 8, 9)  # rank 8: twice the bound
    assert small.read("big", big, layers, 8).rank == 8
    assert small.keys() == ["a"] and small.bytes == size
    # 0 MiB keeps nothing
    none = HostAdapterCache(0)
    none.read("a", dirs["a"], layers, 8)
    assert len(none) == 0 and none.bytes == 0


def test_concurrent_reads_of_one_adapter_read_its_files_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = _layers()
    directory = _adapter_dir(tmp_path / "a", DIMS, 4, 0)
    reads: list[Path] = []
    entered, proceed = threading.Event(), threading.Event()
    real = lora.read_adapter

    def slow_read(path: Path, *args: object) -> AdapterWeights:
        reads.append(path)
        entered.set()
        assert proceed.wait(30)
        return real(path, *args)

    monkeypatch.setattr(lora, "read_adapter", slow_read)
    cache = HostAdapterCache(2**20)
    results: list[AdapterWeights] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.read("acme/a:1", directory, layers, 8))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    assert entered.wait(30)
    proceed.set()
    for thread in threads:
        thread.join(30)
    assert len(reads) == 1 and len(results) == 8
    assert all(result is results[0] for result in results)
    assert (cache.misses, cache.hits) == (1, 7)


def test_concurrent_reads_of_many_adapters_keep_the_bound(tmp_path: Path) -> None:
    layers = _layers()
    size = _bytes(4)
    cache = HostAdapterCache(3 * size)
    dirs = [_adapter_dir(tmp_path / str(i), DIMS, 4, i) for i in range(8)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for step in range(40):
                i = (offset + step * 3) % 8
                weights = cache.read(f"k{i}", dirs[i], layers, 8)
                expected = real_weights[i]
                assert torch.equal(weights.tensors["v_proj"][1], expected)
                assert cache.bytes <= 3 * size
        except BaseException as exc:  # reported below
            errors.append(exc)

    real_weights = [read_adapter(d, layers, 8).tensors["v_proj"][1] for d in dirs]
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(cache) == 3 and cache.bytes == 3 * size
    assert cache.hits + cache.misses == 6 * 40


def test_a_failed_read_lets_a_waiting_reader_try_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = _layers()
    directory = _adapter_dir(tmp_path / "a", DIMS, 4, 0)
    calls: list[int] = []
    entered, proceed = threading.Event(), threading.Event()
    real = lora.read_adapter

    def flaky(path: Path, *args: object) -> AdapterWeights:
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            assert proceed.wait(30)
            raise FailedPrecondition("adapter files cannot be read: transient")
        return real(path, *args)

    monkeypatch.setattr(lora, "read_adapter", flaky)
    cache = HostAdapterCache(2**20)
    outcome: list[object] = []

    def first() -> None:
        try:
            cache.read("k", directory, layers, 8)
        except FailedPrecondition as exc:
            outcome.append(exc)

    one = threading.Thread(target=first)
    one.start()
    assert entered.wait(30)
    two = threading.Thread(target=lambda: outcome.append(cache.read("k", directory, layers, 8)))
    two.start()
    proceed.set()
    one.join(30)
    two.join(30)
    assert len(calls) == 2 and len(outcome) == 2
    assert any(isinstance(item, FailedPrecondition) for item in outcome)
    assert any(isinstance(item, AdapterWeights) for item in outcome)
    assert "k" in cache


# -- on a GPU (`pytest -m gpu`) ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_pinned_copies_and_both_kernels_in_bfloat16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoLayers().to("cuda", torch.bfloat16)
    injected = inject(model, 4, 8, ("q_proj", "v_proj"))
    layers, selection = injected["layers"], injected["selection"]
    cache = HostAdapterCache(2**20)
    weights = cache.read("a", _adapter_dir(tmp_path / "a", DIMS, 4, 0), layers, 8)
    assert weights.tensors["q_proj"][0].is_pinned()
    write_slot(layers, 1, weights)
    assert torch.equal(layers["q_proj"].lora_a[1, :4].cpu(), weights.tensors["q_proj"][0])
    rows = torch.tensor([1, 0, 1, 1])
    x = torch.randn(4, 3, 32, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = _per_row(layers["q_proj"], x, rows.cuda())
        for kernel in KERNELS:
            selection.kernel = kernel
            selection.set(rows.cuda(), host=rows)
            torch.testing.assert_close(layers["q_proj"](x), expected, rtol=2e-2, atol=5e-2)


# -- the chart ---------------------------------------------------------------------------------


def test_the_chart_passes_targets_and_the_host_cache_to_the_front_and_the_serve_replicas(tmp_path: Path) -> None:
    import yaml

    from tuneforge import deploy
    from tuneforge.common.settings import load_settings

    default = InferenceSettings()
    values = "inference.loraTargets={q_proj,v_proj},inference.adapterHostCacheMb=512"
    docs = [d for d in yaml.safe_load_all(deploy.render_chart(values)) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tuneforge-settings"]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    (path := tmp_path / "inference.yaml").write_text(config["data"]["inference.yaml"])
    front = load_settings(path).inference
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    replica = load_settings(None, **app["args"]["settings"]).inference
    for loaded in (front, replica):
        assert (loaded.lora_targets, loaded.adapter_host_cache_mb) == (["q_proj", "v_proj"], 512)
    # the chart's defaults are the settings' own
    docs = [d for d in yaml.safe_load_all(deploy.render_chart()) if d]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    replica = load_settings(None, **app["args"]["settings"]).inference
    assert (replica.lora_targets, replica.adapter_host_cache_mb) == (
        default.lora_targets,
        default.adapter_host_cache_mb,
    )
