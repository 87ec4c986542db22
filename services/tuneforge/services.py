"""The services a Tuneforge process can host, by the name `tuneforge serve NAME` takes."""

from __future__ import annotations

from tuneforge.curation.server import CurationComponent
from tuneforge.evaluation.server import EvaluationComponent
from tuneforge.inference.server import InferenceComponent
from tuneforge.training.server import TrainingComponent

COMPONENTS: dict[str, type] = {
    "curation": CurationComponent,
    "training": TrainingComponent,
    "inference": InferenceComponent,
    "evaluation": EvaluationComponent,
}


def service_names(names: list[str]) -> list[str]:
    """The gRPC service names (for health checks) of the named components."""
    return [service for name in names for service in COMPONENTS[name].service_names]
