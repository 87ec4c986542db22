"""Promotion gates: an alias such as `prod` moves only to a version whose evaluation shows it earned it.

A gate names suites; for each, the version needs a finished evaluation run against its base model
(the evaluation service's comparison, read through `catalog/evaluations.py`) in which every target
category improved with its 95% interval above zero, no other category dropped by more than
`max_drop`, and, when set, the mean judge score reached `min_judge_score`. A tenant sets a gate per
adapter and alias; otherwise the platform default for the alias applies (`training.promotion_gates`,
empty by default). A refused move may be forced with a reason; the verdict, the runs, and who forced
it are recorded in the version's lineage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from tuneforge.catalog.adapters import AdapterRegistry, check_alias
from tuneforge.catalog.evaluations import OVERALL, EvaluationCatalog
from tuneforge.catalog.suites import SuiteCatalog
from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from tuneforge.common.settings import PromotionGateSettings
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import PromotionGateRow, utcnow

TENANT, PLATFORM = "tenant", "platform"
MAX_SUITES = 8
MAX_REASON = 1000


@dataclass(frozen=True)
class GateSpec:
    """What a version must show (see the module doc)."""

    suite_ids: list[str]
    target_categories: list[str] = field(default_factory=list)
    max_drop: float = 0.0
    min_judge_score: float | None = None


@dataclass(frozen=True)
class PromotionGate:
    """A gate as it applies to one adapter's alias: the tenant's own, or the platform default."""

    adapter: str
    alias: str
    spec: GateSpec
    source: str  # TENANT or PLATFORM
    updated_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class CategoryVerdict:
    """One category of one run under the gate."""

    suite_id: str
    run_id: str
    category: str
    target: bool
    estimate: float
    low: float
    high: float
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateVerdict:
    """Whether a version passes a gate, on which runs, and why not."""

    passed: bool
    run_ids: list[str]
    categories: list[CategoryVerdict]
    failures: list[str]
    judge_mean: float | None = None

    def summary(self) -> str:
        runs = ", ".join(self.run_ids) or "no run"
        return f"passed on {runs}" if self.passed else "; ".join(self.failures)


def check_spec(spec: GateSpec) -> GateSpec:
    """Refuses a malformed gate, every problem at once."""
    problems: list[tuple[str, str]] = []
    if not 1 <= len(spec.suite_ids) <= MAX_SUITES:
        problems.append(("gate.suite_ids", f"name 1 to {MAX_SUITES} suites"))
    if len(set(spec.suite_ids)) != len(spec.suite_ids):
        problems.append(("gate.suite_ids", "names a suite twice"))
    if any(not s or len(s) > 128 for s in spec.suite_ids):
        problems.append(("gate.suite_ids", "every suite id is 1-128 characters"))
    if len(spec.target_categories) > 64 or any(not c or len(c) > 100 for c in spec.target_categories):
        problems.append(("gate.target_categories", "at most 64 names of 1-100 characters"))
    if not (0 <= spec.max_drop <= 1):  # also refuses NaN
        problems.append(("gate.max_drop", "must be between 0 and 1 (a drop of the pass rate)"))
    if spec.min_judge_score is not None and not (1 <= spec.min_judge_score <= 5):
        problems.append(("gate.min_judge_score", "must be between 1 and 5 when set"))
    if problems:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in problems), [FieldViolation(f, d) for f, d in problems])
    return spec


def _percent(value: float) -> str:
    return f"{value:+.1%}"


class PromotionGates:
    """Stores tenants' gates, resolves the one that applies, and judges a version against it."""

    def __init__(
        self,
        metadata: MetadataStore,
        registry: AdapterRegistry,
        evaluations: EvaluationCatalog,
        suites: SuiteCatalog,
        defaults: dict[str, PromotionGateSettings] | None = None,
    ) -> None:
        self.metadata = metadata
        self.registry = registry
        self.evaluations = evaluations
        self.suites = suites
        self.defaults = defaults or {}

    def set_gate(self, tenant: str, adapter: str, alias: str, spec: GateSpec, by: str) -> PromotionGate:
        """Sets (or replaces) the tenant's gate on `adapter`'s `alias`; the suites must be the tenant's or built in."""
        check_alias(alias)
        self.registry.get_adapter(tenant, adapter)  # NOT_FOUND for another tenant's adapter
        check_spec(spec)
        for suite_id in spec.suite_ids:
            try:
                self.suites.stored(tenant, suite_id)
            except NotFound as exc:
                raise FailedPrecondition(
                    f"gate.suite_ids: {exc.message}; name a suite of yours or a built-in one"
                ) from exc
        now = utcnow()
        with self.metadata.session() as session:
            row = session.get(PromotionGateRow, (tenant, adapter, alias), with_for_update=True)
            if row is None:
                row = PromotionGateRow(tenant=tenant, adapter=adapter, alias=alias, created_at=now)
                session.add(row)
            row.gate_json, row.updated_by, row.updated_at = json.dumps(asdict(spec), sort_keys=True), by, now
            session.flush()
            return self._gate(row)

    @staticmethod
    def _gate(row: PromotionGateRow) -> PromotionGate:
        return PromotionGate(
            row.adapter,
            row.alias,
            GateSpec(**json.loads(row.gate_json)),
            TENANT,
            row.updated_by,
            row.created_at,
            row.updated_at,
        )

    def get_gate(self, tenant: str, adapter: str, alias: str) -> PromotionGate | None:
        """The gate that applies to `adapter`'s `alias`: the tenant's, else the platform default, else None."""
        check_alias(alias)
        self.registry.get_adapter(tenant, adapter)
        with self.metadata.session() as session:
            row = session.get(PromotionGateRow, (tenant, adapter, alias))
            if row is not None:
                return self._gate(row)
        default = self.defaults.get(alias)
        if default is None:
            return None
        spec = GateSpec(
            list(default.suite_ids), list(default.target_categories), default.max_drop, default.min_judge_score
        )
        return PromotionGate(adapter, alias, spec, PLATFORM)

    def delete_gate(self, tenant: str, adapter: str, alias: str) -> None:
        """Removes the tenant's gate (the platform default, if any, applies again)."""
        check_alias(alias)
        self.registry.get_adapter(tenant, adapter)
        with self.metadata.session() as session:
            row = session.get(PromotionGateRow, (tenant, adapter, alias))
            if row is None:
                raise NotFound("promotion gate", f"{adapter}:{alias}")
            session.delete(row)

    def judge(self, tenant: str, adapter: str, version: int, spec: GateSpec) -> GateVerdict:
        """`adapter:version` against the gate, on the newest finished run of each of its suites."""
        base_model = self.registry.get_adapter(tenant, adapter).base_model
        run_ids: list[str] = []
        categories: list[CategoryVerdict] = []
        failures: list[str] = []
        judged: list[float] = []
        for suite_id in spec.suite_ids:
            found = self.evaluations.latest_comparison(tenant, suite_id, adapter, version, base_model)
            if found is None:
                failures.append(
                    f"no finished evaluation run of suite {suite_id} compares {adapter}:{version} with its base "
                    f"model {base_model}: create one with models ['base', '{adapter}:{version}']"
                )
                continue
            run_ids.append(found.run_id)
            for target in spec.target_categories:
                if target not in found.categories:
                    failures.append(f"run {found.run_id} (suite {suite_id}) has no category {target!r}")
            for name, diff in sorted(found.categories.items()):
                target = name in spec.target_categories
                if not target and name == OVERALL:
                    continue  # the other categories are judged one by one
                interval = f"{_percent(diff.estimate)} [{_percent(diff.low)}, {_percent(diff.high)}]"
                if target:
                    passed = diff.low > 0
                    reason = f"improved {interval}" if passed else f"did not improve: {interval} reaches zero"
                else:
                    passed = diff.estimate >= -spec.max_drop - 1e-9
                    reason = (
                        f"changed {interval}"
                        if passed
                        else f"dropped {interval}, more than the {spec.max_drop:.1%} allowed"
                    )
                categories.append(
                    CategoryVerdict(
                        suite_id, found.run_id, name, target, diff.estimate, diff.low, diff.high, passed, reason
                    )
                )
                if not passed:
                    failures.append(f"category {name} {reason} (run {found.run_id}, suite {suite_id})")
            if spec.min_judge_score is not None:
                if found.judge_mean is None:
                    failures.append(
                        f"run {found.run_id} (suite {suite_id}) has no judge scores; run it with a judge model"
                    )
                else:
                    judged.append(found.judge_mean)
                    if found.judge_mean < spec.min_judge_score:
                        failures.append(
                            f"mean judge score {found.judge_mean:.2f} is below {spec.min_judge_score:.2f} "
                            f"(run {found.run_id}, suite {suite_id})"
                        )
        judge_mean = sum(judged) / len(judged) if judged else None
        return GateVerdict(not failures, run_ids, categories, failures, judge_mean)

    def promote(
        self, tenant: str, adapter: str, alias: str, version: int, *, by: str, force: bool = False, reason: str = ""
    ) -> tuple[Any, dict[str, Any] | None]:
        """Moves `alias` to `version` if the gate that applies lets it (or `force` with a `reason` overrides it).

        Returns the adapter and the promotion record stored in the version's lineage (None when no
        gate applies). A refused move is FAILED_PRECONDITION naming the failing categories and runs.
        """
        reason = reason.strip()
        if force and not reason:
            raise InvalidArgument.for_field("reason", "a forced move needs a reason; it is recorded with your key name")
        if len(reason) > MAX_REASON:
            raise InvalidArgument.for_field("reason", f"at most {MAX_REASON} characters")
        gate = self.get_gate(tenant, adapter, alias)
        if gate is None:
            return self.registry.set_alias(tenant, adapter, alias, version), None
        self.registry.get_version(tenant, adapter, version)  # NOT_FOUND before judging a version that is not there
        verdict = self.judge(tenant, adapter, version, gate.spec)
        if not verdict.passed and not force:
            raise FailedPrecondition(
                f"the {gate.source} promotion gate of {adapter}:{alias} refuses version {version}: "
                f"{verdict.summary()}. Evaluate an improving version, or move it with force and a reason"
            )
        record = {
            "alias": alias,
            "gate_source": gate.source,
            "passed": verdict.passed,
            "forced": force and not verdict.passed,
            "reason": reason if force and not verdict.passed else "",
            "by": by,
            "run_ids": verdict.run_ids,
            "categories": [asdict(c) for c in verdict.categories],
            "failures": verdict.failures,
            "judge_mean": verdict.judge_mean,
        }
        if record["judge_mean"] is not None and not math.isfinite(record["judge_mean"]):
            record["judge_mean"] = None
        info = self.registry.set_alias(tenant, adapter, alias, version, promotion=record)
        return info, {**record, "at": info.alias_moved_at[alias].isoformat()}
