"""Small conversions between domain values and protobuf messages, shared by every servicer."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tuneforge.v1 import common_pb2


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
