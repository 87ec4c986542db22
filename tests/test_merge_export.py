"""Merging LoRA adapters into their base and exporting models (#18 point 3).

Merge equality runs on tiny-qwen2 (the real Qwen2.5 vocabulary) with adapters built directly with
PEFT. The GGUF round trips run on small models with a small byte-level BPE tokenizer trained here:
transformers' GGUF reader parses a 152k-token vocabulary for ~25 s, which a 400-token one skips,
while the code path (names, permutations, tokenizer metadata, quantization) is the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import MODEL_CACHE

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneforge.models import ModelResolver
from tuneforge.models.export import check_format, check_quant, export_gguf, export_safetensors
from tuneforge.models.merge import merge_lora

ALL_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_qwen2() -> str:
    return ModelResolver(MODEL_CACHE).resolve("tiny-qwen2").source


def make_lora(base: str, out: Path, targets: list[str], seed: int = 0) -> torch.nn.Module:
    """A LoRA adapter with random (non-zero) A and B on `targets`, saved to `out`; returns the PEFT model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    peft_model.save_pretrained(out)
    return peft_model


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert error <= tolerance, f"relative error {error:.2e} above {tolerance:.0e}"


@pytest.mark.parametrize("targets", [ALL_SEVEN, ["q_proj", "v_proj"]], ids=["all-seven", "q-v"])
def test_merged_logits_equal_base_plus_adapter(tiny_qwen2: str, tmp_path: Path, targets: list[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapted = make_lora(tiny_qwen2, tmp_path / "adapter", targets)
    ids = torch.randint(0, 151_000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapted(ids).logits
        with adapted.disable_adapter():
            base = adapted(ids).logits
    assert ((expected - base).abs().max() / base.abs().max()).item() > 1e-2  # the adapter changes the output

    result = merge_lora(tiny_qwen2, tmp_path / "adapter", tmp_path / "merged", max_shard_bytes=20_000_000)
    names = {f["name"] for f in result.files}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) >= 2  # sharded, with its index
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert_relative_close(merged(ids).logits, expected, 1e-4)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_qwen2).chat_template

    if targets == ALL_SEVEN:  # bf16: the fp32 merge, rounded once to bf16
        merge_lora(tiny_qwen2, tmp_path / "adapter", tmp_path / "bf16", dtype="bfloat16")
        half = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
        assert half.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        with torch.no_grad():
            assert_relative_close(half(ids).logits.float(), expected, 2e-2)


def test_merge_refuses_a_base_the_adapter_was_not_trained_on(tiny_qwen2: str, tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    with pytest.raises(InvalidArgument, match="dtype"):
        merge_lora(tiny_qwen2, tmp_path / "adapter", tmp_path / "out", dtype="int4")
    with pytest.raises(FailedPrecondition, match=r"adapter_model\.safetensors"):  # only safetensors are read
        merge_lora(tiny_qwen2, tmp_path / "adapter", tmp_path / "out")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FailedPrecondition, match="template hashes differ"):
        merge_lora(tiny_qwen2, tmp_path / "adapter", tmp_path / "out", expected_template_hash="0" * 64)


def small_model(directory: Path, architecture: str) -> Path:
    """A tiny model of `architecture` with a 400-token byte-level BPE tokenizer and the ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (Path(__file__).resolve().parents[1] / "services/tuneforge/demo_data/event_dates.jsonl").read_text()
    backend.train_from_iterator(corpus.splitlines(), trainer)
    template = (Path(ModelResolver(MODEL_CACHE).resolve("tiny-qwen2").source) / "chat_template.jinja").read_text()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    shape = {
        "vocab_size": 448,  # more rows than tokens: the export pads the token list as llama.cpp does
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    torch.manual_seed(3)
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **shape))
        with torch.no_grad():  # random q/k/v biases, so a lost bias shows in the logits
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **shape))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_gguf_round_trip_through_transformers(tmp_path: Path, architecture: str) -> None:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = small_model(tmp_path / "model", architecture)
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    original_tokenizer = AutoTokenizer.from_pretrained(source)
    ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = original(ids).logits

    out = tmp_path / "gguf"
    for quant, tolerance in (("f16", 2e-3), ("q8_0", 3e-2)):
        path = export_gguf(source, out / f"model-{quant}.gguf", quant, name="small")
        reader = gguf.GGUFReader(path)
        kinds = {t.name: t.tensor_type for t in reader.tensors}
        matrix = gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0
        assert kinds["blk.0.attn_q.weight"] == matrix and kinds["blk.0.attn_norm.weight"] == 0  # F32 norms
        assert ("output.weight" in kinds) == (architecture == "llama")  # tied embeddings are not written twice
        loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32)
        with torch.no_grad():
            assert_relative_close(loaded(ids).logits, expected, tolerance)

    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf")
    text = "<|im_start|>user\nThe meeting is on 2026-09-04, naïve café 東京<|im_end|>"
    assert tokenizer(text).input_ids == original_tokenizer(text).input_ids
    assert tokenizer.chat_template == original_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"


def test_export_checks_and_safetensors_copy(tmp_path: Path) -> None:
    assert check_quant("gguf", "") == "f16" and check_quant("safetensors", "") == ""
    with pytest.raises(InvalidArgument, match=r"^format"):
        check_format("onnx")
    with pytest.raises(InvalidArgument, match=r"^quant"):
        check_quant("gguf", "q4_k")
    with pytest.raises(InvalidArgument, match=r"^quant"):
        check_quant("safetensors", "q8_0")
    source = small_model(tmp_path / "model", "qwen2")
    copied = export_safetensors(source, tmp_path / "copy")
    assert {p.name for p in copied} >= {"config.json", "model.safetensors", "tokenizer.json"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(FailedPrecondition, match="GGUF export supports"):
        export_gguf(tmp_path / "empty", tmp_path / "x.gguf")
    # a SentencePiece (Unigram) vocabulary would be written as gpt2 BPE and tokenize wrongly: refused
    sentencepiece = tmp_path / "sentencepiece"
    shutil.copytree(source, sentencepiece)
    spec = json.loads((sentencepiece / "tokenizer.json").read_text())
    spec["model"] = {"type": "Unigram", "vocab": [["<unk>", 0.0]], "unk_id": 0}
    spec["pre_tokenizer"] = spec["decoder"] = {"type": "Metaspace", "replacement": "▁"}
    (sentencepiece / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(FailedPrecondition, match="byte-level BPE"):
        export_gguf(sentencepiece, tmp_path / "sp.gguf")
    assert not (tmp_path / "sp.gguf").exists()


def test_merge_and_export_over_grpc(platform_server, acme, globex, tmp_path: Path, monkeypatch) -> None:
    """MergeAdapter and ExportModel as resources with progress, downloads checked by hash, tenancy, bad input."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.client import TuneforgeError
    from tuneforge.models import template_hash
    from tuneforge.v1 import export_pb2, inference_pb2, training_pb2

    base = ModelResolver(MODEL_CACHE).resolve("tiny-qwen2").source
    adapted = make_lora(base, tmp_path / "adapter", ["q_proj", "v_proj"], seed=5)
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(AutoTokenizer.from_pretrained(base))}
    component = next(c for c in platform_server.server.components if hasattr(c, "exports"))
    component.registry.register("acme", "exp-bot", tmp_path / "adapter", lineage, {"validation_loss": 0.7})

    def fails(client, method, request, code: str, field: str = "") -> None:
        with pytest.raises(TuneforgeError) as info:
            if method is client.exports.DownloadExport:  # the one server stream
                list(client.stream(method, request))
            else:
                client.call(method, request)
        assert info.value.code == code, (request, info.value)
        if field:
            assert field in [v[0] for v in info.value.violations], info.value

    merge = acme.call(
        acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot:1", idempotency_key="merge-1")
    ).export
    assert merge.state in (export_pb2.EXPORT_STATE_QUEUED, export_pb2.EXPORT_STATE_RUNNING)
    again = acme.call(
        acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot:1", idempotency_key="merge-1")
    ).export
    assert again.id == merge.id  # a retry with the key is the same export
    seen: list[float] = []
    merge = acme.wait_for_export(merge.id, timeout=300, on_progress=lambda e: seen.append(e.progress))
    assert merge.state == export_pb2.EXPORT_STATE_SUCCEEDED, merge.error
    assert merge.progress == 1.0 and seen == sorted(seen) and merge.model_version == "exp-bot-merged:1"
    version = acme.call(
        acme.adapters.GetAdapterVersion,
        training_pb2.GetAdapterVersionRequest(adapter="exp-bot-merged", version=1),
    ).adapter_version
    assert version.kind == inference_pb2.MODEL_KIND_MERGED
    assert version.lineage.source_adapter_version == "exp-bot:1" and version.lineage.base_model == "tiny-qwen2"

    # the merged model, downloaded, computes what base + adapter compute
    merged_dir = tmp_path / "merged"
    acme.download_export(merge.id, merged_dir)
    with monkeypatch.context() as patch:  # a file that does not hash as recorded: refused, no part left behind
        real_call = acme.call

        def tampered(method, request, timeout=None):  # type: ignore[no-untyped-def]
            answer = real_call(method, request, timeout)
            if method is acme.exports.GetExport:
                answer.export.files[-1].digest.sha256 = "0" * 64
            return answer

        patch.setattr(acme, "call", tampered)
        with pytest.raises(ValueError, match="did not arrive whole"):
            acme.download_export(merge.id, tmp_path / "tampered")
    assert [p for p in (tmp_path / "tampered").rglob("*") if p.is_file()] == []
    ids = torch.randint(0, 151_000, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = adapted(ids).logits
        actual = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
    assert_relative_close(actual, expected, 1e-4)

    # exports queue behind each other on the one worker: the third is cancelled while it waits
    requests = [
        export_pb2.ExportModelRequest(model="exp-bot-merged:1", format="gguf", quant="q8_0"),
        export_pb2.ExportModelRequest(model="exp-bot", format="safetensors"),  # an adapter: merged on the way
        export_pb2.ExportModelRequest(model="exp-bot-merged", format="gguf"),
    ]
    gguf_export, st_export, doomed = (acme.call(acme.exports.ExportModel, r).export for r in requests)
    cancelled = acme.call(acme.exports.CancelExport, export_pb2.CancelExportRequest(export_id=doomed.id)).export
    assert cancelled.state in (export_pb2.EXPORT_STATE_CANCELLED, export_pb2.EXPORT_STATE_RUNNING)
    assert acme.wait_for_export(doomed.id, timeout=300).state == export_pb2.EXPORT_STATE_CANCELLED
    fails(
        acme, acme.exports.DownloadExport, export_pb2.DownloadExportRequest(export_id=doomed.id), "FAILED_PRECONDITION"
    )
    fails(acme, acme.exports.CancelExport, export_pb2.CancelExportRequest(export_id=doomed.id), "FAILED_PRECONDITION")

    gguf_export = acme.wait_for_export(gguf_export.id, timeout=300)
    assert gguf_export.state == export_pb2.EXPORT_STATE_SUCCEEDED, gguf_export.error
    assert [f.name for f in gguf_export.files] == ["exp-bot-merged-1-Q8_0.gguf"] and gguf_export.quant == "q8_0"
    (path,) = acme.download_export(gguf_export.id, tmp_path / "gguf")
    reader = gguf.GGUFReader(path)
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen2"
    assert "tokenizer.chat_template" in reader.fields and "tokenizer.ggml.merges" in reader.fields
    assert {t.tensor_type for t in reader.tensors if t.name.endswith("attn_q.weight")} == {
        gguf.GGMLQuantizationType.Q8_0
    }
    st_export = acme.wait_for_export(st_export.id, timeout=300)
    assert st_export.state == export_pb2.EXPORT_STATE_SUCCEEDED, st_export.error
    assert st_export.source == "exp-bot:1" and "model.safetensors" in [f.name for f in st_export.files]
    listed = acme.call(acme.exports.ListExports, export_pb2.ListExportsRequest()).exports
    assert {merge.id, gguf_export.id, st_export.id, doomed.id} <= {e.id for e in listed}

    # another tenant sees none of it
    assert not globex.call(globex.exports.ListExports, export_pb2.ListExportsRequest()).exports
    for method, request in [
        (globex.exports.GetExport, export_pb2.GetExportRequest(export_id=merge.id)),
        (globex.exports.CancelExport, export_pb2.CancelExportRequest(export_id=gguf_export.id)),
        (globex.exports.DownloadExport, export_pb2.DownloadExportRequest(export_id=gguf_export.id)),
        (globex.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot:1")),
        (globex.exports.ExportModel, export_pb2.ExportModelRequest(model="exp-bot-merged:1", format="gguf")),
    ]:
        fails(globex, method, request, "NOT_FOUND")

    # bad input names its field
    for method, request, field in [
        (acme.exports.ExportModel, export_pb2.ExportModelRequest(model="exp-bot:1", format="onnx"), "format"),
        (
            acme.exports.ExportModel,
            export_pb2.ExportModelRequest(model="exp-bot:1", format="gguf", quant="q4"),
            "quant",
        ),
        (
            acme.exports.ExportModel,
            export_pb2.ExportModelRequest(model="exp-bot:1", format="safetensors", quant="f16"),
            "quant",
        ),
        (acme.exports.ExportModel, export_pb2.ExportModelRequest(model="Bad Name!", format="gguf"), "model"),
        (acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter=""), "adapter"),
        (acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot-merged:1"), "adapter"),
        (acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot:1", dtype="int4"), "dtype"),
        (
            acme.exports.MergeAdapter,
            export_pb2.MergeAdapterRequest(adapter="exp-bot:1", model_name="No!"),
            "model_name",
        ),
        (acme.exports.GetExport, export_pb2.GetExportRequest(export_id="job-123"), "export_id"),
        (
            acme.exports.MergeAdapter,
            export_pb2.MergeAdapterRequest(adapter="exp-bot:1", model_name="exp-bot"),
            "model_name",
        ),
    ]:
        fails(acme, method, request, "INVALID_ARGUMENT", field)
    fails(acme, acme.exports.MergeAdapter, export_pb2.MergeAdapterRequest(adapter="exp-bot:9"), "NOT_FOUND")

    # the command line: `tuneforge adapters merge` and `tuneforge models export`
    from conftest import ACME_KEY

    from tuneforge.cli import main

    login = ["--address", platform_server.address, "--api-key", ACME_KEY]
    assert main(["adapters", *login, "merge", "exp-bot:1", "--name", "cli-merged"]) == 0
    out = str(tmp_path / "cli")
    assert main(["models", *login, "export", "cli-merged:1", "--format", "safetensors", "--out", out]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file() and (tmp_path / "cli" / "chat_template.jinja").is_file()
    assert main(["models", *login, "export", "cli-merged:1", "--format", "gguf", "--quant", "q2_k"]) == 1


def test_an_export_runs_only_under_its_lease_and_is_taken_over_when_its_holder_dies(tmp_path: Path) -> None:
    """A RUNNING export whose holder's lease is live is left alone; once that lease expires, it is resumed here."""
    import asyncio
    from datetime import timedelta

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.leases import Leases
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.store.tables import LeaseRow, ModelExportRow, utcnow
    from tuneforge.training.exports import EXPORT_LEASE, ModelExports

    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    metadata.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    registry = AdapterRegistry(metadata, artifacts)
    registry.register_model("acme", "full-bot", small_model(tmp_path / "model", "qwen2"), {"base_model": "tiny-qwen2"})
    exports = ModelExports(metadata, artifacts, registry, ModelResolver(MODEL_CACHE), Leases(metadata))
    info = exports.create_export("acme", "full-bot:1", "safetensors")
    with metadata.session() as session:  # a replica took it, started it, and then died holding the lease
        session.get(ModelExportRow, info.id).state = "running"
        now = utcnow()
        session.add(
            LeaseRow(name=EXPORT_LEASE + info.id, holder="dead", acquired_at=now, expires_at=now + timedelta(days=1))
        )

    async def offer() -> str:
        """What the sweep does with an unfinished export: start it (where the lease is had) and let it run."""
        (unfinished,) = await asyncio.to_thread(exports.unfinished)
        exports.start(unfinished)
        await exports._tasks[info.id]
        return (await asyncio.to_thread(exports.get, "acme", info.id)).state

    async def scenario() -> None:
        try:
            assert await offer() == "running"  # the holder's lease is live: this replica does nothing
            assert exports.get("acme", info.id).progress == 0
            with metadata.session() as session:  # the dead holder's lease runs out
                session.get(LeaseRow, EXPORT_LEASE + info.id).expires_at = utcnow()
            assert await offer() == "succeeded"
        finally:
            await exports.stop()

    asyncio.run(scenario())
    done = exports.get("acme", info.id)
    assert "model.safetensors" in [f["name"] for f in done.files]
    assert [name for name, path in exports.files("acme", info.id) if path.is_file()] == [f["name"] for f in done.files]
    with pytest.raises(NotFound):
        exports.get("globex", info.id)
    metadata.close()


def test_a_merge_whose_holder_died_after_registering_is_not_registered_twice(tmp_path: Path) -> None:
    """The holder registered the merged model and died before marking the merge SUCCEEDED: the next
    holder finds that version by the export's id and finishes with it instead of adding a second."""
    import asyncio

    from transformers import AutoTokenizer

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.models import template_hash
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.leases import Leases
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.store.tables import ModelExportRow
    from tuneforge.training.exports import ModelExports

    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    metadata.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    registry = AdapterRegistry(metadata, artifacts)
    base = ModelResolver(MODEL_CACHE).resolve("tiny-qwen2").source
    make_lora(base, tmp_path / "adapter", ["q_proj", "v_proj"], seed=2)
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(AutoTokenizer.from_pretrained(base))}
    registry.register("acme", "crash-bot", tmp_path / "adapter", lineage, {})
    exports = ModelExports(metadata, artifacts, registry, ModelResolver(MODEL_CACHE), Leases(metadata))
    info = exports.create_merge("acme", "crash-bot:1")

    async def run_once() -> str:
        (unfinished,) = await asyncio.to_thread(exports.unfinished)
        exports.start(unfinished)
        await exports._tasks[info.id]
        return (await asyncio.to_thread(exports.get, "acme", info.id)).state

    async def scenario() -> None:
        try:
            assert await run_once() == "succeeded"
            with metadata.session() as session:  # as if the SUCCEEDED update never landed
                row = session.get(ModelExportRow, info.id)
                row.state, row.model_version = "running", ""
            assert await run_once() == "succeeded"
        finally:
            await exports.stop()

    asyncio.run(scenario())
    versions, _ = registry.list_versions("acme", "crash-bot-merged")
    assert [v.version for v in versions] == [1]
    assert exports.get("acme", info.id).model_version == "crash-bot-merged:1"
    metadata.close()
