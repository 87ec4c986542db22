"""Model versions beside adapters (#18 points 1-2): full fine-tunes register, serve, evaluate; merged models register.

One real full fine-tuning job of tiny-qwen2 (2 steps, 1 Ray Train worker on the session head) is run
once for the module; its model version is served by the session server in an engine of its own and
its tokens are compared with transformers' greedy `generate` on the stored directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import ACME_KEY, MODEL_CACHE
from safetensors.torch import load_file

from tuneforge.catalog.adapters import MERGED, AdapterRegistry
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.common.errors import FailedPrecondition
from tuneforge.models import ModelResolver, template_hash
from tuneforge.platform import BackgroundServer
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.v1 import curation_pb2, evaluation_pb2, inference_pb2, training_pb2

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"
MESSAGES = [("system", "You are terse."), ("user", "Name three colours.")]
TOKENS = 8


@pytest.fixture(scope="module")
def registry(platform_server: BackgroundServer, server_settings) -> AdapterRegistry:
    return AdapterRegistry(MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root))


@pytest.fixture(scope="module")
def full_job(platform_server: BackgroundServer) -> training_pb2.Job:
    """acme's full fine-tune `dates-full` of tiny-qwen2: 2 steps on one worker, finished and registered."""
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        stored = client.upload_file(DEMO / "event_dates.jsonl")
        version = client.create_dataset_version(
            "dates-full", [stored.id], "tiny-qwen2", max_seq_len=256, validation_fraction=0.1
        )
        dataset = client.wait_for_dataset_version(version.id, timeout=300)
        assert dataset.state == curation_pb2.DATASET_VERSION_STATE_READY, dataset.failure_reason
        spec = training_pb2.JobSpec(
            base_model="tiny-qwen2",
            dataset_version_id=dataset.id,
            adapter_name="dates-full",
            method=training_pb2.TRAINING_METHOD_FULL,
            hyperparameters=training_pb2.Hyperparameters(
                learning_rate=1e-3, max_steps=2, micro_batch_size=2, seed=5, eval_every_steps=2
            ),
            resources=training_pb2.ResourceSpec(num_workers=1, cpus_per_worker=1),
        )
        job = client.wait_for_job(client.create_job(spec).id, timeout=600)
        assert job.state == training_pb2.JOB_STATE_SUCCEEDED, job.error.message
        return job


def _generate(client: TuneforgeClient, model: str) -> inference_pb2.GenerateResponse:
    request = inference_pb2.GenerateRequest(model=model)
    for role, content in MESSAGES:
        request.messages.add(role=role, content=content)
    request.sampling.max_tokens = TOKENS
    return client.call(client.inference.Generate, request)


def _transformers_greedy(directory: Path) -> str:
    """What transformers itself generates from a model directory (greedy, fp32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in MESSAGES], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _code(call) -> str:
    with pytest.raises(TuneforgeError) as info:
        call()
    return info.value.code


def _inference(platform_server: BackgroundServer):
    return next(c for c in platform_server.server.components if hasattr(c, "engine"))


def test_a_full_fine_tune_registers_with_its_lineage_and_serves_transformers_tokens(
    acme: TuneforgeClient, full_job: training_pb2.Job, registry: AdapterRegistry, platform_server: BackgroundServer
) -> None:
    assert full_job.adapter_version == "dates-full:1"
    got = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="dates-full", version=1)
    ).adapter_version
    assert got.kind == inference_pb2.MODEL_KIND_FULL_FINE_TUNE and got.rank == 0
    lineage = got.lineage
    assert lineage.base_model == "tiny-qwen2" and lineage.job_id == full_job.id
    assert lineage.dataset_version_id == full_job.spec.dataset_version_id and lineage.base_model_revision
    tokenizer = ModelResolver(MODEL_CACHE).load_tokenizer(ModelResolver(MODEL_CACHE).resolve("tiny-qwen2"))
    assert lineage.template_hash == template_hash(tokenizer)
    assert lineage.spec.method == training_pb2.TRAINING_METHOD_FULL and "validation_loss" in got.metrics
    names = {f.name for f in got.files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".pt") for n in names) and all(len(f.digest.sha256) == 64 for f in got.files)

    # listed as a model, not among adapters
    models = acme.call(
        acme.adapters.ListAdapters, training_pb2.ListAdaptersRequest(kinds=[inference_pb2.MODEL_KIND_FULL_FINE_TUNE])
    ).adapters
    # other modules of the session register acme models too: only the kinds asked for come back
    assert ("dates-full", inference_pb2.MODEL_KIND_FULL_FINE_TUNE) in [(m.name, m.kind) for m in models]
    assert {m.kind for m in models} == {inference_pb2.MODEL_KIND_FULL_FINE_TUNE}
    assert "dates-full" not in [
        a.name for a in acme.call(acme.adapters.ListAdapters, training_pb2.ListAdaptersRequest()).adapters
    ]

    # served by an engine of its own: the tokens transformers generates from the stored directory
    info = registry.resolve("acme", "dates-full:1")
    directory = registry.artifacts.for_tenant("acme").path(info.artifact_key)
    answer = _generate(acme, "dates-full")
    assert answer.resolved_model == "dates-full:1"
    assert answer.text == _transformers_greedy(directory)
    tuned = load_file(directory / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(
        tuned, load_file(MODEL_CACHE / "tiny-qwen2" / "model.safetensors")["model.embed_tokens.weight"]
    )

    listed = {m.name: m for m in acme.list_models()}
    entry = listed["dates-full"]
    assert entry.kind == inference_pb2.MODEL_KIND_FULL_FINE_TUNE and entry.loaded and entry.base_model == "tiny-qwen2"
    base = listed["tiny-qwen2"]
    assert base.is_base and base.loaded and base.kind == inference_pb2.MODEL_KIND_UNSPECIFIED

    # the OpenAI HTTP API lists it too, with its kind and that it is loaded
    url = f"http://127.0.0.1:{_inference(platform_server).http.port}/v1/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ACME_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        data = {m["id"]: m for m in json.loads(response.read())["data"]}
    assert data["dates-full"]["kind"] == "full_fine_tune" and data["dates-full"]["loaded"] is True
    assert data["tiny-qwen2"]["kind"] == "base"


def test_an_evaluation_run_names_the_model_version(acme: TuneforgeClient, full_job: training_pb2.Job) -> None:
    item = {
        "id": "one",
        "category": "dates",
        "messages": [{"role": "user", "content": "Say a date."}],
        "checks": [{"type": "exclude_keywords", "params": {"keywords": ["never-said"]}}],
    }
    data = json.dumps(item).encode()
    suite = acme.call(acme.evaluation.CreateSuite, evaluation_pb2.CreateSuiteRequest(name="ft-suite", jsonl=data)).suite
    request = evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base", "dates-full:1"])
    request.sampling.max_tokens = 4
    run = acme.call(acme.evaluation.CreateEvalRun, request).run
    stream = evaluation_pb2.StreamEvalRunRequest(run_id=run.id)
    final = [m.run for m in acme.stream(acme.evaluation.StreamEvalRun, stream, timeout=600)][-1]
    assert final.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED, final.failure_reason
    results = acme.call(acme.evaluation.ListEvalResults, evaluation_pb2.ListEvalResultsRequest(run_id=run.id)).results
    assert {r.model for r in results} >= {"dates-full:1"}


def test_a_full_fine_tune_exports_as_safetensors_and_gguf(
    acme: TuneforgeClient, full_job: training_pb2.Job, registry: AdapterRegistry, tmp_path: Path
) -> None:
    """The job's model version leaves the platform: its weights as safetensors, and as GGUF (F16)."""
    import gguf
    import numpy as np

    from tuneforge.v1 import export_pb2

    info = registry.resolve("acme", full_job.adapter_version)
    stored = load_file(registry.artifacts.for_tenant("acme").path(info.artifact_key) / "model.safetensors")
    requests = [
        export_pb2.ExportModelRequest(model=full_job.adapter_version, format="safetensors"),
        export_pb2.ExportModelRequest(model=full_job.adapter_version, format="gguf", quant="f16"),
    ]
    exports = [acme.call(acme.exports.ExportModel, request).export for request in requests]
    for export in exports:
        done = acme.wait_for_export(export.id, timeout=300)
        assert done.state == export_pb2.EXPORT_STATE_SUCCEEDED, done.error
    safetensors_export, gguf_export = exports

    acme.download_export(safetensors_export.id, tmp_path / "safetensors")
    exported: dict[str, torch.Tensor] = {}
    for shard in (tmp_path / "safetensors").glob("*.safetensors"):
        exported.update(load_file(shard))
    assert exported.keys() == stored.keys()
    assert all(torch.equal(exported[name].float(), stored[name].float()) for name in stored)

    acme.download_export(gguf_export.id, tmp_path / "gguf")
    (path,) = (tmp_path / "gguf").glob("*.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    embedding = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32).reshape(
        stored["model.embed_tokens.weight"].shape
    )
    expected = stored["model.embed_tokens.weight"].to(torch.float16).float().numpy()
    assert np.array_equal(embedding, expected)  # the tuned weights, rounded once to F16


def test_aliases_deletes_and_every_call_of_another_tenant(
    acme: TuneforgeClient, globex: TuneforgeClient, full_job: training_pb2.Job
) -> None:
    adapters = acme.adapters
    moved = acme.call(
        adapters.SetAdapterAlias, training_pb2.SetAdapterAliasRequest(adapter="dates-full", alias="prod", version=1)
    )
    assert moved.adapter.aliases["prod"] == 1 and moved.adapter.kind == inference_pb2.MODEL_KIND_FULL_FINE_TUNE
    assert _generate(acme, "dates-full:prod").resolved_model == "dates-full:1"
    assert "dates-full:prod" in {m.name for m in acme.list_models()}
    pinned = training_pb2.DeleteAdapterVersionRequest(adapter="dates-full", version=1)
    assert _code(lambda: acme.call(adapters.DeleteAdapterVersion, pinned)) == "FAILED_PRECONDITION"

    # globex sees none of it: every call answers NOT_FOUND, lists leave it out
    other = globex.adapters
    calls = {
        "GetAdapter": lambda: globex.call(other.GetAdapter, training_pb2.GetAdapterRequest(name="dates-full")),
        "GetAdapterVersion": lambda: globex.call(
            other.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="dates-full", version=1)
        ),
        "ListAdapterVersions": lambda: globex.call(
            other.ListAdapterVersions, training_pb2.ListAdapterVersionsRequest(adapter="dates-full")
        ),
        "SetAdapterAlias": lambda: globex.call(
            other.SetAdapterAlias, training_pb2.SetAdapterAliasRequest(adapter="dates-full", alias="x", version=1)
        ),
        "DeleteAdapterVersion": lambda: globex.call(other.DeleteAdapterVersion, pinned),
        "Generate": lambda: _generate(globex, "dates-full:1"),
        "Generate(alias)": lambda: _generate(globex, "dates-full:prod"),
    }
    assert {name: _code(call) for name, call in calls.items()} == dict.fromkeys(calls, "NOT_FOUND")
    every_kind = training_pb2.ListAdaptersRequest(
        kinds=[inference_pb2.MODEL_KIND_FULL_FINE_TUNE, inference_pb2.MODEL_KIND_MERGED]
    )
    assert list(globex.call(other.ListAdapters, every_kind).adapters) == []
    assert not any(m.name.startswith("dates-full") for m in globex.list_models())


# -- model versions registered directly (no job): a perturbed tiny-qwen2 --------------------------------


@pytest.fixture(scope="module")
def noisy_dir() -> Path:
    """tiny-qwen2 with noise on every weight, saved as a whole model (answers differently from the base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = MODEL_CACHE / "tiny-qwen2"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    torch.manual_seed(11)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    out = Path(tempfile.mkdtemp(prefix="noisy-model-"))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def noisy(registry: AdapterRegistry, noisy_dir: Path) -> str:
    """acme's full-fine-tune line `noisy` with versions 1 and 2 (the same weights)."""
    lineage = {"base_model": "tiny-qwen2", "job_id": "job-noisy"}
    for _ in range(2):
        registry.register_model("acme", "noisy", noisy_dir, lineage, {"validation_loss": 1.0})
    return "noisy"


def test_a_model_version_answers_as_transformers_does_on_its_own_weights(
    acme: TuneforgeClient, noisy: str, noisy_dir: Path
) -> None:
    answer = _generate(acme, "noisy:1")
    assert answer.resolved_model == "noisy:1" and answer.text == _transformers_greedy(noisy_dir)
    assert answer.text != _generate(acme, "").text  # not the base model's answer


def test_a_corrupt_model_directory_is_refused_at_load_and_the_replica_serves_on(
    acme: TuneforgeClient, registry: AdapterRegistry, noisy: str, noisy_dir: Path
) -> None:
    # a stored file changed after registration: its hash no longer matches
    changed = registry.register_model("acme", "changed", noisy_dir, {"base_model": "tiny-qwen2"})
    stored = registry.artifacts.for_tenant("acme").path(changed.artifact_key) / "model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-64] + b"\0" * 64)
    with pytest.raises(TuneforgeError) as corrupted:
        _generate(acme, "changed:1")
    assert corrupted.value.code == "FAILED_PRECONDITION"
    assert "changed:1: file model.safetensors does not match the hash" in corrupted.value.message
    # registered damaged (its hashes match): the load itself fails, with the version named
    damaged = Path(tempfile.mkdtemp(prefix="damaged-model-"))
    for file in noisy_dir.iterdir():
        shutil.copyfile(file, damaged / file.name)
    (damaged / "model.safetensors").write_bytes((noisy_dir / "model.safetensors").read_bytes()[:4096])
    registry.register_model("acme", "damaged", damaged, {"base_model": "tiny-qwen2"})
    with pytest.raises(TuneforgeError) as unloadable:
        _generate(acme, "damaged")
    assert unloadable.value.code == "FAILED_PRECONDITION"
    assert "model version damaged:1 could not be loaded" in unloadable.value.message
    # the replica serves on: the base model and a sound model version
    assert _generate(acme, "").resolved_model == "tiny-qwen2"
    assert _generate(acme, "noisy:1").text == _transformers_greedy(noisy_dir)


def test_engines_are_bounded_and_a_model_replica_refuses_adapters_of_the_original_base(
    registry: AdapterRegistry, noisy: str, server_settings
) -> None:
    from test_inference_api import _make_adapter

    from tuneforge.inference.base_model import load_base_model, load_registered_model
    from tuneforge.inference.engine import Engine
    from tuneforge.inference.frontend import InferenceFrontend
    from tuneforge.inference.model_engines import engine_loader

    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer), "job_id": "job-x"}
    registry.register("acme", "on-base", _make_adapter(resolver, 7, ["q_proj", "v_proj"]), lineage)

    # a replica of the model version's own application (cluster): its engine's base is the model version
    _, loaded = load_registered_model(registry, resolver, "acme/noisy:1", "float32", "cpu")
    engine = Engine(loaded.model, loaded.tokenizer, max_adapters=1)
    replica = InferenceFrontend(engine, loaded.name, loaded.template_hash, registry, registry.artifacts)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            asyncio.run(replica.resolve("acme", "on-base:1"))
        assert "trained on 'tiny-qwen2'; this replica serves 'noisy:1'" in refused.value.message
    finally:
        engine.stop()
        replica.close()

    # one process: at most `max_model_engines` model versions loaded, the least recently used unloaded
    base = load_base_model(resolver, "tiny-qwen2", "float32", "cpu")
    engine = Engine(base.model, base.tokenizer, max_adapters=1)
    front = InferenceFrontend(
        engine,
        base.name,
        base.template_hash,
        registry,
        registry.artifacts,
        model_loader=engine_loader(resolver, server_settings.inference),
        max_model_engines=1,
    )

    async def scenario() -> list[list[tuple[str, bool]]]:
        seen = []
        for ref in ("noisy:1", "noisy:2"):
            target = await front.resolve("acme", ref)
            prompt = await front.render_prompt(MESSAGES, target=target)
            sampling = front.sampling(max_tokens=2)
            [e async for e in front.stream("acme", target, prompt, sampling)]
            entries = await front.model_entries("acme")
            seen.append([(e.name, e.loaded) for e in entries if e.name.startswith("noisy")])
        return seen

    async def deleted_version_unloaded() -> int:
        await front.resolve("acme", "swept:1")
        registry.delete_version("acme", "swept", 1)
        return await front.sweep_deleted()

    try:
        first, second = asyncio.run(scenario())
        assert front.models is not None and front.models.loaded() == ["acme/noisy:2"]
        assert first == [("noisy", False)] and second == [("noisy", True)]  # `noisy` is its latest, version 2
        source = registry.artifacts.for_tenant("acme").path(registry.resolve("acme", "noisy:1").artifact_key)
        registry.register_model("acme", "swept", source, {"base_model": "tiny-qwen2"})
        assert asyncio.run(deleted_version_unloaded()) == 1 and front.models.loaded() == []
    finally:
        front.stop_models()
        engine.stop()
        front.close()


def test_a_merged_model_registers_with_the_adapter_version_it_came_from(
    acme: TuneforgeClient, globex: TuneforgeClient, registry: AdapterRegistry, noisy_dir: Path
) -> None:
    from test_inference_api import _make_adapter

    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer), "job_id": "job-src"}
    adapter_dir = _make_adapter(resolver, 9, "all-linear")
    source = registry.register("acme", "merge-src", adapter_dir, lineage, {"validation_loss": 2.5})
    merged = registry.register_merged("acme", "merge-out", source, noisy_dir, lineage={"dtype": "float32"})
    assert merged.kind == MERGED and merged.is_model and merged.metrics == {"validation_loss": 2.5}
    assert merged.lineage["source_adapter_version"] == "merge-src:1" and merged.lineage["dtype"] == "float32"
    assert merged.lineage["template_hash"] == lineage["template_hash"] and merged.lineage["job_id"] == "job-src"

    shown = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="merge-out", alias="latest")
    ).adapter_version
    assert shown.kind == inference_pb2.MODEL_KIND_MERGED and shown.lineage.source_adapter_version == "merge-src:1"
    kinds = training_pb2.ListAdaptersRequest(kinds=[inference_pb2.MODEL_KIND_MERGED])
    lines = acme.call(acme.adapters.ListAdapters, kinds).adapters  # other modules merge for acme too
    assert "merge-out" in [a.name for a in lines] and {a.kind for a in lines} == {inference_pb2.MODEL_KIND_MERGED}
    assert "merge-out" in {m.name for m in acme.list_models()}
    request = training_pb2.GetAdapterVersionRequest(adapter="merge-out", version=1)
    assert _code(lambda: globex.call(globex.adapters.GetAdapterVersion, request)) == "NOT_FOUND"
    assert _code(lambda: _generate(globex, "merge-out")) == "NOT_FOUND"

    # one kind per line, whole models only, adapters only as a merge's source
    with pytest.raises(FailedPrecondition, match="holds adapter versions, not merged ones"):
        registry.register_merged("acme", "merge-src", source, noisy_dir)
    with pytest.raises(FailedPrecondition, match="not a model directory"):
        registry.register_model("acme", "no-model", adapter_dir, {"base_model": "tiny-qwen2"})
    with pytest.raises(FailedPrecondition, match="not an adapter"):
        registry.register_merged("acme", "merge-out", merged, noisy_dir)


def test_the_cli_lists_shows_aliases_and_deletes_model_versions(platform_server, noisy: str, capsys) -> None:
    import argparse

    from tuneforge.cli import models

    parser = argparse.ArgumentParser(prog="tuneforge")
    models.register(parser.add_subparsers(dest="command", required=True))

    def cli(*args: str) -> tuple[int, str]:
        parsed = parser.parse_args(["models", "--address", platform_server.address, "--api-key", ACME_KEY, *args])
        code = parsed.func(parsed)
        return code, capsys.readouterr().out

    code, out = cli("list")
    line = next(x for x in out.splitlines() if x.startswith("noisy "))
    assert code == 0 and "full_fine_tune" in line and "tiny-qwen2" in line
    assert "merge-src" not in out  # adapters are not models
    code, out = cli("show", "noisy:1")
    assert code == 0 and "MODEL_KIND_FULL_FINE_TUNE" in out and "model.safetensors" in out
    code, out = cli("alias", "noisy", "canary", "1")
    assert code == 0 and "noisy:canary → 1" in out
    code, out = cli("delete", "noisy:2")
    assert code == 0 and "deleted noisy:2" in out
