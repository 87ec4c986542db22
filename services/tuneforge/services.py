"""The services a Tuneforge process can host, by the name `tuneforge serve NAME` takes.

`SERVICE_NAMES` (the gRPC services of each, for health checks) needs only the generated protobuf
modules, so client commands such as `tuneforge health` never import the components (and torch);
`COMPONENTS` imports them on first use.
"""

from __future__ import annotations

from typing import Any

from tuneforge.v1 import (
    curation_pb2,
    evaluation_pb2,
    export_pb2,
    feedback_pb2,
    generation_pb2,
    inference_pb2,
    training_pb2,
)

SERVICE_NAMES: dict[str, tuple[str, ...]] = {
    "curation": (
        curation_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackExportService"].full_name,
        generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    ),
    "training": (
        training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        training_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
        export_pb2.DESCRIPTOR.services_by_name["ExportService"].full_name,
    ),
    "inference": (
        inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
    ),
    "evaluation": (evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,),
}


def _components() -> dict[str, type]:
    from tuneforge.curation.server import CurationComponent
    from tuneforge.evaluation.server import EvaluationComponent
    from tuneforge.inference.server import InferenceComponent
    from tuneforge.training.server import TrainingComponent

    return {
        "curation": CurationComponent,
        "training": TrainingComponent,
        "inference": InferenceComponent,
        "evaluation": EvaluationComponent,
    }


def __getattr__(name: str) -> Any:
    if name == "COMPONENTS":  # the component classes, imported on first use
        components = _components()
        globals()["COMPONENTS"] = components
        return components
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def service_names(names: list[str]) -> list[str]:
    """The gRPC service names (for health checks) of the named components."""
    return [service for name in names for service in SERVICE_NAMES[name]]
