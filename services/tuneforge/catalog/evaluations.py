"""Finished evaluation runs as evidence for a version: how it compared with its base model, per category.

The evaluation service owns its runs and writes each finished run's comparison report
(`evals/<run>/report.json`, see `evaluation/compare.py`); promotion gates read that evidence here,
without importing the evaluation service. Only SUCCEEDED runs count, and only runs whose reference
model was the adapter's base model and which generated with the exact version (an alias a run
named is pinned to its version when the run starts, so `resolved_models` says which one it was).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import EvalRunRow

#: The run state whose report exists (evaluation's `SUCCEEDED`).
FINISHED = "succeeded"
#: The pseudo-category over all items of a suite.
OVERALL = "overall"


@dataclass(frozen=True)
class CategoryDifference:
    """One category of a run: the version's pass rate minus the base model's, with its 95% interval."""

    category: str
    estimate: float
    low: float
    high: float
    items: int


@dataclass(frozen=True)
class VersionComparison:
    """A finished run's comparison of one adapter version against its base model on one suite."""

    run_id: str
    suite_id: str
    categories: dict[str, CategoryDifference]
    judge_mean: float | None  # mean 1-5 judge score of the version over the whole suite; None without a judge


class EvaluationCatalog:
    """Reads finished runs' comparisons for the services that act on them (promotion gates)."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def latest_comparison(
        self, tenant: str, suite_id: str, adapter: str, version: int, base_model: str
    ) -> VersionComparison | None:
        """The newest finished run of `suite_id` that compared `adapter:version` with `base_model`."""
        with self.metadata.session() as session:
            rows = list(
                session.scalars(
                    select(EvalRunRow)
                    .where(EvalRunRow.tenant == tenant, EvalRunRow.suite_id == suite_id, EvalRunRow.state == FINISHED)
                    .order_by(EvalRunRow.created_at.desc(), EvalRunRow.id.desc())
                )
            )
            run_ids = [row.id for row in rows]
        files = self.artifacts.for_tenant(tenant)
        for run_id in run_ids:
            key = f"evals/{run_id}/report.json"
            if not files.exists(key):
                continue
            found = _comparison(json.loads(files.read_bytes(key)), run_id, suite_id, f"{adapter}:{version}", base_model)
            if found is not None:
                return found
        return None


def _comparison(
    report: dict[str, Any], run_id: str, suite_id: str, display: str, base_model: str
) -> VersionComparison | None:
    resolved: dict[str, str] = report.get("resolved_models") or {}
    if resolved.get(report.get("baseline", "")) != base_model:
        return None  # the reference was not the base model (another adapter, or another base)
    model = next((name for name, shown in resolved.items() if shown == display and name in report["models"]), None)
    if model is None or model == report["baseline"]:
        return None
    categories = {
        group: CategoryDifference(group, d["estimate"], d["low"], d["high"], int(entry["items"]))
        for group, entry in report["categories"].items()
        if (d := entry["difference"].get(model)) is not None
    }
    judge = ((report.get("scores") or {}).get(model, {}).get(OVERALL) or {}).get("judge")
    return VersionComparison(run_id, suite_id, categories, float(judge["mean"]) if judge else None)
