"""What the inference front and the Serve replicas say to each other over Serve's HTTP proxy.

Both ends import this module, so the format lives in one place:

- `POST {serve_url}/generate`, body `{tenant, prompt_ids, sampling, response_format?}`, header
  `serve_multiplexed_model_id: tenant/adapter:version` (empty for the base model) — the header
  Serve's proxy routes on, so the request lands on a replica that already holds that adapter.
  The replica answers once the first token exists: `200 application/x-ndjson`, one engine event
  per line (the last one carries `finish_reason`), or a line `{"error": …}` when it fails later.
  Errors before the first token are a JSON body `{"error": {"status", "message", "violations"}}`
  with the matching HTTP status.
- `GET {serve_url}/ready`: what the replica serves (base model, template hash, limits), for the
  front's readiness check.

Every request carries `Authorization: Bearer <inference.serve_token>` when a token is configured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidArgument, TuneforgeError
from tuneforge.inference.engine import Event, Sampling
from tuneforge.inference.structured import ResponseFormat

GENERATE_PATH = "/generate"
READY_PATH = "/ready"
#: The header Serve's HTTP proxy reads the multiplexed model id from (Ray's SERVE_MULTIPLEXED_MODEL_ID).
MODEL_ID_HEADER = "serve_multiplexed_model_id"
NDJSON = "application/x-ndjson"

#: HTTP status of an error answered by a replica (the front turns the body back into the same error).
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 412,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}

_EVENT_FIELDS = {f.name for f in fields(Event)}
_SAMPLING_FIELDS = {f.name for f in fields(Sampling)}


class ReplicaError(TuneforgeError):
    """An error a Serve replica answered, carrying the replica's status code and message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_body(
    tenant: str, prompt_ids: list[int], sampling: Sampling, response_format: ResponseFormat | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant": tenant, "prompt_ids": list(prompt_ids), "sampling": asdict(sampling)}
    if response_format is not None and response_format.constrained:
        body["response_format"] = response_format.to_wire()  # the replica compiles it for its own tokenizer
    return body


def response_format_of(body: dict[str, Any]) -> ResponseFormat | None:
    """The `response_format` of a `/generate` body (None: free text); INVALID_ARGUMENT naming a bad one.

    Blocking for a large schema (it is checked again here): call it off the event loop.
    """
    given = body.get("response_format")
    if given is None:
        return None
    checked = ResponseFormat.from_wire(given)
    return checked if checked.constrained else None


def parse_request(body: Any) -> tuple[str, list[int], Sampling]:
    """(tenant, prompt ids, sampling) of a `/generate` body; INVALID_ARGUMENT naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidArgument.for_field("body", "must be a JSON object {tenant, prompt_ids, sampling}")
    tenant, prompt_ids, sampling = body.get("tenant"), body.get("prompt_ids"), body.get("sampling", {})
    if not isinstance(tenant, str) or not tenant:
        raise InvalidArgument.for_field("tenant", "must be a non-empty string")
    if not isinstance(prompt_ids, list) or not prompt_ids or not all(isinstance(i, int) for i in prompt_ids):
        raise InvalidArgument.for_field("prompt_ids", "must be a non-empty list of token ids")
    if not isinstance(sampling, dict) or set(sampling) - _SAMPLING_FIELDS:
        raise InvalidArgument.for_field("sampling", f"must be an object with keys among {sorted(_SAMPLING_FIELDS)}")
    try:
        return tenant, prompt_ids, Sampling(**{**sampling, "stop": tuple(sampling.get("stop") or ())})
    except TypeError as exc:
        raise InvalidArgument.for_field("sampling", str(exc)) from exc


def event_line(event: Event, model: str) -> bytes:
    return (json.dumps({**asdict(event), "model": model}) + "\n").encode()


def event_from(item: dict[str, Any]) -> Event:
    return Event(**{k: v for k, v in item.items() if k in _EVENT_FIELDS})


def error_body(exc: TuneforgeError) -> dict[str, Any]:
    violations = [asdict(v) for v in exc.violations] if isinstance(exc, InvalidArgument) else []
    return {"error": {"status": exc.status, "message": exc.message, "violations": violations}}


def error_from(body: Any) -> TuneforgeError | None:
    """The error a replica's `{"error": …}` body describes, or None when the body is not one of ours."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("status"), str):
        return None
    message = str(error.get("message", ""))
    if error["status"] == "INVALID_ARGUMENT":
        return InvalidArgument(message, [FieldViolation(**v) for v in error.get("violations") or []])
    return ReplicaError(error["status"], message)
