"""Builds one dataset version in a worker process: everything it needs is in the metadata row."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.logging import get_logger
from tuneforge.common.names import new_id
from tuneforge.curation.pipeline import CurationOptions, InputFile, curate
from tuneforge.curation.report import write_failed_build_report
from tuneforge.models import ModelResolver, template_hash
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow, utcnow

log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to reach the stores and models (plain values: it is pickled)."""

    database_url: str
    artifact_root: str
    model_cache_dir: str
    trust_remote_code: tuple[str, ...] = field(default_factory=tuple)
    #: Processes one build fans its batches out to (0 = one per CPU core).
    processes: int = 0


def build_version(config: WorkerConfig, tenant: str, version_id: str) -> str:
    """Runs the pipeline for (tenant, version_id) and records READY or FAILED; returns the state."""
    metadata = MetadataStore(config.database_url)
    artifacts = ArtifactStore(Path(config.artifact_root))
    try:
        return _build(metadata, artifacts, config, tenant, version_id)
    finally:
        metadata.close()


def _update(metadata: MetadataStore, tenant: str, version_id: str, **values: Any) -> None:
    with metadata.session() as session:
        row = session.get(DatasetVersionRow, (tenant, version_id))
        if row is None:
            return
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = utcnow()


def _suite_prompts(
    metadata: MetadataStore, artifacts: ArtifactStore, tenant: str, suite_id: str, sha256: str
) -> list[list[dict[str, str]]]:
    """The prompts of the evaluation suite a version keeps out of its training data (as requested)."""
    from tuneforge.evaluation.suite_store import SuiteStore

    info, suite = SuiteStore(metadata, artifacts).get(tenant, suite_id)
    if info.sha256 != sha256:
        raise RuntimeError(f"evaluation suite {suite_id} changed since the version was requested")
    return [item.messages for item in suite.items]


def _build(
    metadata: MetadataStore, artifacts: ArtifactStore, config: WorkerConfig, tenant: str, version_id: str
) -> str:
    with metadata.session() as session:
        row = session.get(DatasetVersionRow, (tenant, version_id))
        if row is None or row.state != "processing":
            return row.state if row is not None else "missing"
        inputs_spec = json.loads(row.inputs_json)
        options_values = json.loads(row.options_json)
        leakage_suite = options_values.pop("leakage_suite_id", ""), options_values.pop("leakage_suite_sha256", "")
        base_model, dataset, expected_template = row.base_model, row.dataset, row.template_hash
        data_format, bytes_total = row.data_format, row.bytes_total
    work = artifacts.make_temp_dir(f"build-{version_id}")
    try:
        models = ModelResolver(Path(config.model_cache_dir), list(config.trust_remote_code))
        resolved = models.resolve(base_model)
        tokenizer = models.load_tokenizer(resolved)
        if template_hash(tokenizer) != expected_template:
            raise RuntimeError(f"the tokenizer of {base_model} changed since the version was requested")
        inputs = [InputFile(i["name"], Path(i["path"]), i["sha256"], i.get("format", data_format)) for i in inputs_spec]
        missing = [i.name for i in inputs if not i.path.is_file()]
        if missing:
            raise RuntimeError(f"input files are gone: {', '.join(missing)}")
        eval_prompts = _suite_prompts(metadata, artifacts, tenant, *leakage_suite) if leakage_suite[0] else None
        processed = 0
        last_update = 0.0

        def progress(nbytes: int) -> None:
            nonlocal processed, last_update
            processed += nbytes
            if time.monotonic() - last_update > 1.0:
                last_update = time.monotonic()
                _update(metadata, tenant, version_id, bytes_processed=processed)

        out = work / "out"
        result = curate(
            inputs,
            tokenizer,
            CurationOptions(**options_values),
            out,
            work / "staging",
            progress=progress,
            eval_prompts=eval_prompts,
            metadata={
                "version_id": version_id,
                "dataset": dataset,
                "base_model": base_model,
                "template_hash": expected_template,
                "inputs": [{"name": i.name, "sha256": i.sha256} for i in inputs],
            },
        )
        manifest = {
            "id": version_id,
            "dataset": dataset,
            "base_model": base_model,
            "template_hash": expected_template,
            "inputs": [{"name": i.name, "sha256": i.sha256} for i in inputs],
            "format": data_format,
            "options": CurationOptions(**options_values).canonical(),
            "counts": result.counts,
            "shards": result.report["shards"],
            "pipeline_version": result.report["pipeline_version"],
            "status": "ready" if result.ok else "failed",
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(work / "staging", ignore_errors=True)
        artifacts.for_tenant(tenant).publish_dir(f"datasets/{version_id}", out)
        state = "ready" if result.ok else "failed"
        _update(
            metadata,
            tenant,
            version_id,
            state=state,
            counts_json=json.dumps(result.counts),
            failure_reason=result.failure_reason,
            bytes_processed=bytes_total,
        )
        log.info(
            "dataset_version_built",
            tenant=tenant,
            version=version_id,
            state=state,
            **{k: v for k, v in result.counts.items() if isinstance(v, int)},
        )
        return state
    except Exception as exc:
        reference = new_id("err")  # what an operator greps the server log for
        log.exception("dataset_version_failed", tenant=tenant, version=version_id, reference=reference)
        reason = f"the build failed (reference {reference}): {str(exc)[:300] or type(exc).__name__}"
        try:  # the report and the issues found so far stay readable through the API
            failed = work / "failed"
            write_failed_build_report(
                failed,
                reason,
                work / "staging" / "issues.jsonl",
                {"version_id": version_id, "dataset": dataset, "base_model": base_model, "reference": reference},
            )
            artifacts.for_tenant(tenant).publish_dir(f"datasets/{version_id}", failed)
        except Exception:
            log.exception("dataset_failure_report_not_written", tenant=tenant, version=version_id)
        _update(metadata, tenant, version_id, state="failed", failure_reason=reason)
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """`python -m tuneforge.curation.worker TENANT VERSION_ID` with the WorkerConfig as JSON on stdin.

    The config travels on stdin, not argv, because the database URL may hold a password.
    """
    import sys

    from tuneforge.common.logging import configure_logging

    configure_logging("INFO", "json")
    tenant, version_id = sys.argv[1:3]
    values = json.loads(sys.stdin.read())
    values["trust_remote_code"] = tuple(values.get("trust_remote_code", ()))
    state = build_version(WorkerConfig(**values), tenant, version_id)
    return 0 if state in ("ready", "failed") else 1


if __name__ == "__main__":
    raise SystemExit(main())
