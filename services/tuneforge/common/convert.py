"""Small conversions between domain values and protobuf messages, shared by every servicer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from tuneforge.v1 import common_pb2, inference_pb2


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for an aware datetime (None stays None)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def resource_times(created: datetime, updated: datetime) -> common_pb2.ResourceTimes:
    """The ResourceTimes message of a resource."""
    return common_pb2.ResourceTimes(create_time=timestamp(created), update_time=timestamp(updated))


#: A registry line's kind (catalog/adapters.py) as the ModelKind enum, and back.
MODEL_KINDS = {
    "adapter": inference_pb2.MODEL_KIND_ADAPTER,
    "full_fine_tune": inference_pb2.MODEL_KIND_FULL_FINE_TUNE,
    "merged": inference_pb2.MODEL_KIND_MERGED,
}
MODEL_KIND_NAMES = {value: name for name, value in MODEL_KINDS.items()}


#: Where a promotion gate came from, as the promotion records of a version's lineage name it.
GATE_SOURCES = {
    "tenant": common_pb2.PROMOTION_GATE_SOURCE_TENANT,
    "platform": common_pb2.PROMOTION_GATE_SOURCE_PLATFORM,
}


def promotion_message(record: dict[str, Any]) -> common_pb2.Promotion:
    """A promotion record of an adapter version's lineage (training's `PromotionGates.promote`) as a message."""
    message = common_pb2.Promotion(
        alias=record["alias"],
        passed=record["passed"],
        forced=record["forced"],
        reason=record["reason"],
        moved_by=record["by"],
        move_time=timestamp(datetime.fromisoformat(record["at"])),
        run_ids=record["run_ids"],
        categories=[
            common_pb2.GateCategoryResult(
                suite_id=c["suite_id"],
                run_id=c["run_id"],
                category=c["category"],
                target=c["target"],
                difference=c["estimate"],
                difference_ci_low=c["low"],
                difference_ci_high=c["high"],
                passed=c["passed"],
                reason=c["reason"],
            )
            for c in record["categories"]
        ],
        failures=record["failures"],
        gate_source=GATE_SOURCES[record["gate_source"]],
    )
    if record.get("judge_mean") is not None:
        message.judge_score = record["judge_mean"]
    return message


def sampling_message(sampling: dict[str, Any]) -> inference_pb2.SamplingParams:
    """SamplingParams of a stored sampling dict (temperature, top_p, max_tokens, stop, seed; absent: unset)."""
    message = inference_pb2.SamplingParams(
        temperature=sampling.get("temperature", 0.0),
        top_p=sampling.get("top_p", 0.0),
        max_tokens=sampling.get("max_tokens", 0),
        stop=sampling.get("stop", ()),
    )
    if sampling.get("seed") is not None:
        message.seed = sampling["seed"]
    return message
