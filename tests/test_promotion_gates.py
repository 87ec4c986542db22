"""Promotion gates (#18 point 4): an alias moves only to a version whose evaluation against its base earned it.

The evidence comes from real evaluation runs of the session server on tiny-qwen2 with random
adapters. Which answers each model gives is read from a first (probe) run; the gate's suite is then
built from them: `target` items pass only with version 2's answers, `guard` items fail only with
version 1's. So version 1 regresses on `guard` without improving `target`, and version 2 improves
`target` without dropping `guard` — decided by the evaluation service's checks and intervals.
"""

from __future__ import annotations

import json

import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import common_pb2, evaluation_pb2, training_pb2

PROMPTS = [
    "Name a colour.",
    "What is two plus two?",
    "Write a word about the sea.",
    "Say something about cats.",
    "Describe the weather today.",
    "Give me a number.",
    "Tell me a fruit.",
    "What day is it?",
    "Translate 'hello' to French.",
    "Name a city in Asia.",
    "Which planet is red?",
    "Say hi.",
]
MODELS = ["base", "gated:1", "gated:2"]


def _suite(client: TuneforgeClient, name: str, items: list[dict]) -> str:
    data = "\n".join(json.dumps(i) for i in items).encode()
    return client.call(client.evaluation.CreateSuite, evaluation_pb2.CreateSuiteRequest(name=name, jsonl=data)).suite.id


def _run(client: TuneforgeClient, suite_id: str) -> str:
    request = evaluation_pb2.CreateEvalRunRequest(suite_id=suite_id, models=MODELS)
    request.sampling.max_tokens = 6
    run = client.call(client.evaluation.CreateEvalRun, request).run
    stream = evaluation_pb2.StreamEvalRunRequest(run_id=run.id)
    final = [m.run for m in client.stream(client.evaluation.StreamEvalRun, stream, timeout=600)][-1]
    assert final.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED, final.failure_reason
    return run.id


def _outputs(client: TuneforgeClient, run_id: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    token = ""
    while True:
        page = client.call(
            client.evaluation.ListEvalResults, evaluation_pb2.ListEvalResultsRequest(run_id=run_id, page_token=token)
        )
        for result in page.results:
            found.setdefault(result.model, {})[result.item_id] = result.output.strip()
        token = page.next_page_token
        if not token:
            return found


def _alias(client: TuneforgeClient, version: int, **extra: object) -> training_pb2.SetAdapterAliasResponse:
    request = training_pb2.SetAdapterAliasRequest(adapter="gated", alias="prod", version=version, **extra)
    return client.call(client.adapters.SetAdapterAlias, request)


def _code(call) -> tuple[str, str]:
    with pytest.raises(TuneforgeError) as info:
        call()
    return info.value.code, str(info.value)


@pytest.fixture(scope="module")
def gated(platform_server, server_settings) -> None:
    """acme's adapter `gated` with two random versions on tiny-qwen2."""
    from conftest import MODEL_CACHE
    from test_inference_api import _make_adapter

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.models import ModelResolver, template_hash
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    registry = AdapterRegistry(
        MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root)
    )
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer), "job_id": "job-gate"}
    for seed in (41, 42):
        registry.register("acme", "gated", _make_adapter(resolver, seed, "all-linear"), lineage)


@pytest.mark.slow  # evaluation runs generating through the model
def test_a_gate_refuses_a_regressing_version_and_accepts_an_improving_one(
    acme: TuneforgeClient, globex: TuneforgeClient, gated: None
) -> None:
    probe = [
        {
            "id": f"p{i}",
            "category": "probe",
            "messages": [{"role": "user", "content": p}],
            "checks": [{"type": "max_words", "params": {"n": 1000}}],
        }
        for i, p in enumerate(PROMPTS)
    ]
    answers = _outputs(acme, _run(acme, _suite(acme, "gate-probe", probe)))
    base, v1, v2 = (answers[m] for m in MODELS)
    usable = [
        i
        for i in range(len(PROMPTS))
        if v1[f"p{i}"]
        and v2[f"p{i}"]  # the base model may say nothing (tiny-qwen2 often ends at once)
        and not base[f"p{i}"].startswith(v2[f"p{i}"])
        and not v1[f"p{i}"].startswith(v2[f"p{i}"])
        and v1[f"p{i}"].lower() not in base[f"p{i}"].lower()
        and v1[f"p{i}"].lower() not in v2[f"p{i}"].lower()
    ]
    assert len(usable) >= 6, answers  # the random adapters answer differently from the base and each other

    def item(kind: str, i: int, check: dict) -> dict:
        return {
            "id": f"{kind}{i}",
            "category": kind,
            "messages": [{"role": "user", "content": PROMPTS[i]}],
            "checks": [check],
        }

    items = [item("target", i, {"type": "starts_with", "params": {"text": v2[f"p{i}"]}}) for i in usable]
    items += [item("guard", i, {"type": "exclude_keywords", "params": {"keywords": [v1[f"p{i}"]]}}) for i in usable]
    suite_id = _suite(acme, "gate-suite", items)

    gate = training_pb2.PromotionGate(suite_ids=[suite_id], target_categories=["target"], max_drop=0.05)
    stored = acme.call(
        acme.adapters.SetPromotionGate,
        training_pb2.SetPromotionGateRequest(adapter="gated", alias="prod", gate=gate),
    ).gate
    assert (stored.source, stored.updated_by, list(stored.suite_ids)) == (
        common_pb2.PROMOTION_GATE_SOURCE_TENANT,
        "acme-ci",
        [suite_id],
    )
    got = acme.call(acme.adapters.GetPromotionGate, training_pb2.GetPromotionGateRequest(adapter="gated", alias="prod"))
    assert got.gate == stored

    code, message = _code(lambda: _alias(acme, 2))  # no evidence yet
    assert code == "FAILED_PRECONDITION" and "no finished evaluation run" in message

    run_id = _run(acme, suite_id)
    code, message = _code(lambda: _alias(acme, 1))
    assert code == "FAILED_PRECONDITION"
    assert "category guard dropped" in message and "category target did not improve" in message and run_id in message

    promoted = _alias(acme, 2)
    assert promoted.adapter.aliases["prod"] == 2
    verdict = promoted.promotion
    assert verdict.passed and not verdict.forced and list(verdict.run_ids) == [run_id] and not verdict.failures
    by_category = {c.category: c for c in verdict.categories}
    assert set(by_category) == {"target", "guard"}
    assert by_category["target"].target and by_category["target"].difference_ci_low > 0
    assert by_category["guard"].passed and by_category["guard"].difference == 0
    lineage = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="gated", version=2)
    ).adapter_version.lineage
    assert list(lineage.promotions) == [verdict]
    listed = {m.name: m for m in acme.list_models()}
    assert listed["gated:prod"].version == 2 and listed["gated:prod"].promotion == verdict

    code, _ = _code(lambda: _alias(acme, 1, force=True))  # an override needs a reason
    assert code == "INVALID_ARGUMENT"
    forced = _alias(acme, 1, force=True, reason="hotfix while v3 trains").promotion
    assert (forced.passed, forced.forced, forced.reason, forced.moved_by) == (
        False,
        True,
        "hotfix while v3 trains",
        "acme-ci",
    )
    assert forced.move_time.seconds > 0 and any("guard" in f for f in forced.failures)
    assert {c.category: c.passed for c in forced.categories} == {"target": False, "guard": False}
    v1_lineage = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="gated", alias="prod")
    ).adapter_version
    assert v1_lineage.version == 1 and list(v1_lineage.lineage.promotions) == [forced]
    listed = {m.name: m for m in acme.list_models()}
    assert listed["gated:prod"].version == 1 and listed["gated:prod"].promotion == forced

    # another tenant sees none of it: every call on acme's adapter is NOT_FOUND
    for call in (
        lambda: globex.call(
            globex.adapters.SetPromotionGate,
            training_pb2.SetPromotionGateRequest(adapter="gated", alias="prod", gate=gate),
        ),
        lambda: globex.call(
            globex.adapters.GetPromotionGate, training_pb2.GetPromotionGateRequest(adapter="gated", alias="prod")
        ),
        lambda: globex.call(
            globex.adapters.DeletePromotionGate, training_pb2.DeletePromotionGateRequest(adapter="gated", alias="prod")
        ),
        lambda: _alias(globex, 2),
        lambda: _alias(globex, 2, force=True, reason="not mine"),
    ):
        assert _code(call)[0] == "NOT_FOUND"

    acme.call(acme.adapters.DeletePromotionGate, training_pb2.DeletePromotionGateRequest(adapter="gated", alias="prod"))
    code, _ = _code(
        lambda: acme.call(
            acme.adapters.GetPromotionGate, training_pb2.GetPromotionGateRequest(adapter="gated", alias="prod")
        )
    )
    assert code == "NOT_FOUND"
    moved = _alias(acme, 2)  # without a gate the alias moves freely, and nothing is recorded
    assert moved.adapter.aliases["prod"] == 2 and not moved.HasField("promotion")
    listed = {m.name: m for m in acme.list_models()}  # the earlier gated move to 2 is not this move
    assert listed["gated:prod"].version == 2 and not listed["gated:prod"].HasField("promotion")
    assert listed["gated"].version == 0 and not listed["gated"].HasField("promotion")


def test_a_gate_is_validated_and_names_only_suites_the_tenant_can_read(acme: TuneforgeClient, gated: None) -> None:
    def set_gate(**fields: object) -> None:
        gate = training_pb2.PromotionGate(**fields)
        acme.call(
            acme.adapters.SetPromotionGate,
            training_pb2.SetPromotionGateRequest(adapter="gated", alias="canary", gate=gate),
        )

    with pytest.raises(TuneforgeError) as bad:
        set_gate(suite_ids=[], max_drop=2.0, min_judge_score=9)
    assert bad.value.code == "INVALID_ARGUMENT"
    assert {f for f, _ in bad.value.violations} == {"gate.suite_ids", "gate.max_drop", "gate.min_judge_score"}
    with pytest.raises(TuneforgeError) as missing:
        set_gate(suite_ids=["suite-0123456789abcdef"])
    assert missing.value.code == "FAILED_PRECONDITION" and "suite-0123456789abcdef" in str(missing.value)
    with pytest.raises(TuneforgeError) as reserved:
        acme.call(acme.adapters.GetPromotionGate, training_pb2.GetPromotionGateRequest(adapter="gated", alias="latest"))
    assert reserved.value.code == "INVALID_ARGUMENT"


def test_the_platform_default_gate_applies_where_a_tenant_set_none(server_settings, gated: None) -> None:
    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.catalog.evaluations import EvaluationCatalog
    from tuneforge.catalog.suites import SuiteCatalog
    from tuneforge.common.errors import FailedPrecondition
    from tuneforge.common.settings import PromotionGateSettings
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.training.promotion import PLATFORM, PromotionGates

    metadata, artifacts = MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root)
    registry = AdapterRegistry(metadata, artifacts)
    default = PromotionGateSettings(suite_ids=["builtin/core-zh-en"], target_categories=["overall"])
    gates = PromotionGates(
        metadata,
        registry,
        EvaluationCatalog(metadata, artifacts),
        SuiteCatalog(metadata, artifacts),
        {"stable": default},
    )
    gate = gates.get_gate("acme", "gated", "stable")
    assert gate is not None and gate.source == PLATFORM and gate.spec.suite_ids == ["builtin/core-zh-en"]
    assert gates.get_gate("acme", "gated", "beta") is None  # other aliases stay free
    with pytest.raises(FailedPrecondition) as refused:
        gates.promote("acme", "gated", "stable", 2, by="acme-ci")
    assert "platform promotion gate" in refused.value.message and "builtin/core-zh-en" in refused.value.message
    assert "stable" not in registry.get_adapter("acme", "gated").aliases


def test_the_cli_sets_shows_and_forces_through_a_gate(platform_server, gated: None, capsys) -> None:
    from conftest import ACME_KEY

    from tuneforge.cli import main

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["adapters", "--address", platform_server.address, "--api-key", ACME_KEY, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("gate", "set", "gated", "cli", "--suite", "builtin/core-zh-en", "--target", "overall")
    assert code == 0 and "gate on gated:cli (set by acme-ci)" in out and "builtin/core-zh-en" in out
    assert "gated:cli" in cli("gate", "show", "gated", "cli")[1]
    code, _, err = cli("alias", "gated", "cli", "2")
    assert code == 1 and "FAILED_PRECONDITION" in err and "no finished evaluation run" in err
    assert cli("alias", "gated", "cli", "2", "--force")[0] == 2  # a reason is required
    code, out, _ = cli("alias", "gated", "cli", "2", "--force", "--reason", "smoke test")
    assert code == 0 and "gated:cli → 2" in out and "gate FAILED, forced by acme-ci: smoke test" in out
    assert cli("gate", "delete", "gated", "cli")[0] == 0
    assert cli("gate", "show", "gated", "cli")[0] == 1
