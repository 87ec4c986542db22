"""Feedback on served answers: what the inference front answered (kept for a while), the tenant's ratings
and corrections of it, and which lines of which exported files each item became.

The inference front writes the served answers and the feedback (FeedbackService, `POST /v1/feedback`);
curation reads accepted feedback through this module to write it into a raw file of the tenant's
(FeedbackExportService) and records the lines it wrote, which a dataset version built from that file
names in its report. The prompt, the model and the sampling stored with an item are what the server
recorded when it answered, never what a client claims.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from tuneforge.common.names import check_resource_id, new_id
from tuneforge.store.metadata import MetadataStore, newest_first_page, tenant_row
from tuneforge.store.tables import FeedbackExportLineRow, FeedbackRow, ServedResponseRow, utcnow

RATINGS = ("up", "down")
MAX_CORRECTION_CHARS = 32768
MAX_COMMENT_CHARS = 4096
MAX_MODEL_CHARS = 200
#: A score from which an answer without a correction counts as approved (with `include_approved`).
APPROVED_MIN_SCORE = 4
#: Prefix of response ids: the OpenAI chat completion id's, so the HTTP API's `id` is the response id.
RESPONSE_ID_PREFIX = "chatcmpl"
FEEDBACK_ID_PREFIX = "fb"
#: Seconds between sweeps of expired served answers (done by the writer, at most this often).
PRUNE_INTERVAL_S = 300.0
INSTRUCTION, PREFERENCE = "instruction", "preference"


def new_response_id() -> str:
    """A fresh id for one served answer, e.g. `chatcmpl-3f2a9c0d1e4b5a6f7c8d9e0f`."""
    return new_id(RESPONSE_ID_PREFIX)


@dataclass(frozen=True)
class ServedResponse:
    """One answer as the inference front served it."""

    id: str
    tenant: str
    #: The exact model that answered (`support-bot:7`, or the base model id).
    model: str
    base_model: str
    #: The prompt: `{role, content}` messages as the server received them.
    messages: list[dict[str, str]]
    #: The decoding settings the server used (limits applied).
    sampling: dict[str, Any]
    answer: str
    finish_reason: str


@dataclass(frozen=True)
class FeedbackInput:
    """What a client sends about one answer; everything else comes from the server's record."""

    response_id: str
    rating: str = ""
    score: int = 0
    corrected_answer: str = ""
    comment: str = ""

    def validate(self) -> None:
        """INVALID_ARGUMENT naming every bad field at once."""
        problems: list[FieldViolation] = []
        try:
            check_resource_id(self.response_id, "response_id", RESPONSE_ID_PREFIX)
        except InvalidArgument as exc:
            problems += exc.violations
        if self.rating not in ("", *RATINGS):
            problems.append(
                FieldViolation("rating", f"must be one of {', '.join(RATINGS)} (or none), not {self.rating!r}")
            )
        if not 0 <= self.score <= 5:
            problems.append(FieldViolation("score", f"must be 1-5 (0 for none), not {self.score}"))
        if len(self.corrected_answer) > MAX_CORRECTION_CHARS:
            problems.append(FieldViolation("corrected_answer", f"at most {MAX_CORRECTION_CHARS} characters"))
        if len(self.comment) > MAX_COMMENT_CHARS:
            problems.append(FieldViolation("comment", f"at most {MAX_COMMENT_CHARS} characters"))
        for name in ("corrected_answer", "comment"):
            if "\x00" in getattr(self, name):
                problems.append(FieldViolation(name, "must not contain NUL characters"))
        if not problems and not (self.rating or self.score or self.corrected_answer.strip() or self.comment.strip()):
            problems.append(
                FieldViolation("rating", "give at least a rating, a score, a corrected answer or a comment")
            )
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


@dataclass(frozen=True)
class FeedbackItem:
    """A stored feedback item with the answer it is about."""

    id: str
    tenant: str
    response_id: str
    rating: str
    score: int
    corrected_answer: str
    comment: str
    model: str
    base_model: str
    messages: list[dict[str, str]]
    answer: str
    sampling: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    exported_file_ids: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        """Rated up or scored 4-5, and not rated down."""
        return self.rating != "down" and (self.rating == "up" or self.score >= APPROVED_MIN_SCORE)

    def training_answer(self, include_approved: bool) -> str | None:
        """The answer a training record of this item teaches: its correction, or (when approved answers
        are included) the served answer; None when the item is not accepted."""
        if self.corrected_answer.strip():
            return self.corrected_answer
        if include_approved and self.approved and self.answer.strip():
            return self.answer
        return None


@dataclass(frozen=True)
class FeedbackFilter:
    """Filters of ListFeedback (and of an export); they combine with AND."""

    model: str = ""
    rating: str = ""
    min_score: int = 0
    only_corrected: bool = False
    only_unexported: bool = False

    def validate(self) -> None:
        if len(self.model) > MAX_MODEL_CHARS:
            raise InvalidArgument.for_field("model", f"at most {MAX_MODEL_CHARS} characters")
        if self.rating not in ("", *RATINGS):
            raise InvalidArgument.for_field("rating", f"must be one of {', '.join(RATINGS)} (or none)")
        if not 0 <= self.min_score <= 5:
            raise InvalidArgument.for_field("min_score", "must be 1-5 (0 for any)")


@dataclass
class ExportBatch:
    """The JSONL lines an export writes, each with the feedback item it came from."""

    instruction: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    preference: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @staticmethod
    def jsonl(lines: Sequence[tuple[str, dict[str, Any]]]) -> bytes:
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in lines).encode()


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Identity of a prompt: answers to the same messages can be compared with each other."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def export_batch(
    items: Iterable[FeedbackItem],
    include_approved: bool,
    rated_down: Mapping[str, Sequence[FeedbackItem]] | None = None,
) -> ExportBatch:
    """Instruction records (the prompt and the corrected or approved answer, OpenAI-chat layout) and
    preference pairs of the accepted items: a correction chosen over the answer it corrects, and an
    approved answer chosen over each answer rated down for the same prompt (`rated_down`, by `prompt_key`)."""
    batch = ExportBatch()
    for item in items:
        answer = item.training_answer(include_approved)
        if answer is None:
            continue
        batch.instruction.append((item.id, {"messages": [*item.messages, {"role": "assistant", "content": answer}]}))
        rejected = [(item.answer, item.id)] if item.corrected_answer.strip() else []
        rejected += [
            (other.answer, other.id)
            for other in (rated_down or {}).get(prompt_key(item.messages), ())
            if other.id != item.id  # its own answer, rated down, is already the rejected side of its correction
        ]
        paired: set[str] = set()
        for text, rejected_id in rejected:
            if text.strip() != answer.strip() and text not in paired:  # a blank answer is a rejected one too
                paired.add(text)
                pair = {
                    "messages": item.messages,
                    "chosen": answer,
                    "rejected": text,
                    "model": item.model,
                    "feedback_id": item.id,
                    "rejected_feedback_id": rejected_id,
                }
                batch.preference.append((item.id, pair))
    return batch


def _item(row: FeedbackRow, exported: Sequence[str] = ()) -> FeedbackItem:
    return FeedbackItem(
        id=row.id,
        tenant=row.tenant,
        response_id=row.response_id,
        rating=row.rating,
        score=row.score,
        corrected_answer=row.corrected_answer,
        comment=row.comment,
        model=row.model,
        base_model=row.base_model,
        messages=json.loads(row.messages_json),
        answer=row.answer,
        sampling=json.loads(row.sampling_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
        exported_file_ids=tuple(exported),
    )


class FeedbackStore:
    """Served answers, feedback items and export lineage, tenant-scoped (another tenant's ids are NOT_FOUND)."""

    def __init__(self, metadata: MetadataStore, window_s: float = 7 * 24 * 3600.0) -> None:
        #: How long a served answer can be rated; 0 records none.
        self.metadata = metadata
        self.window_s = window_s
        self._last_prune = 0.0

    # -- served answers (inference front) --------------------------------------------------------

    def record_response(self, response: ServedResponse) -> None:
        """Keeps `response` for `window_s` so feedback on it is stored with what produced it."""
        if self.window_s <= 0:
            return
        now = utcnow()
        with self.metadata.session() as session:
            session.add(
                ServedResponseRow(
                    id=response.id,
                    tenant=response.tenant,
                    model=response.model,
                    base_model=response.base_model,
                    messages_json=json.dumps(response.messages, ensure_ascii=False),
                    sampling_json=json.dumps(response.sampling, sort_keys=True),
                    answer=response.answer,
                    finish_reason=response.finish_reason,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.window_s),
                )
            )
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
            self._last_prune = time.monotonic()
            self.prune_expired()

    def prune_expired(self, now: datetime | None = None) -> int:
        """Forgets served answers past their window (feedback already given keeps its own copy)."""
        with self.metadata.session() as session:
            result = session.execute(delete(ServedResponseRow).where(ServedResponseRow.expires_at < (now or utcnow())))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # -- feedback --------------------------------------------------------------------------------

    def submit(self, tenant: str, given: FeedbackInput) -> FeedbackItem:
        """Stores (or replaces) the tenant's feedback on one of its served answers."""
        given.validate()
        now = utcnow()
        for _ in range(2):  # a concurrent first submit for the same response loses the race once
            try:
                with self.metadata.session() as session:
                    row = session.scalars(
                        select(FeedbackRow).where(
                            FeedbackRow.tenant == tenant, FeedbackRow.response_id == given.response_id
                        )
                    ).one_or_none()
                    if row is None:
                        served = session.get(ServedResponseRow, given.response_id)
                        if served is None or served.tenant != tenant or served.expires_at < now:
                            raise NotFound("response", given.response_id)
                        row = FeedbackRow(
                            id=new_id(FEEDBACK_ID_PREFIX),
                            tenant=tenant,
                            response_id=given.response_id,
                            model=served.model,
                            base_model=served.base_model,
                            messages_json=served.messages_json,
                            sampling_json=served.sampling_json,
                            answer=served.answer,
                            created_at=now,
                        )
                        session.add(row)
                    row.rating, row.score = given.rating, given.score
                    row.corrected_answer, row.comment = given.corrected_answer, given.comment
                    row.updated_at = now
                    session.flush()
                    return _item(row, self._exported(session, tenant, [row.id]).get(row.id, ()))
            except IntegrityError:
                continue
        raise FailedPrecondition(f"feedback on {given.response_id} is being submitted concurrently; retry")

    def get(self, tenant: str, feedback_id: str, field: str = "feedback_id") -> FeedbackItem:
        with self.metadata.session() as session:
            row = tenant_row(session, FeedbackRow, tenant, feedback_id, field, FEEDBACK_ID_PREFIX, "feedback")
            return _item(row, self._exported(session, tenant, [row.id]).get(row.id, ()))

    def list(
        self, tenant: str, filters: FeedbackFilter | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[FeedbackItem], str]:
        """One page of the tenant's feedback, newest first, and the next page's token ('' at the end)."""
        filters = filters or FeedbackFilter()
        filters.validate()
        query = select(FeedbackRow).where(FeedbackRow.tenant == tenant)
        if filters.model:
            query = query.where(
                or_(
                    FeedbackRow.model == filters.model,
                    FeedbackRow.model.startswith(filters.model + ":", autoescape=True),
                )
            )
        if filters.rating:
            query = query.where(FeedbackRow.rating == filters.rating)
        if filters.min_score:
            query = query.where(FeedbackRow.score >= filters.min_score)
        if filters.only_corrected:
            query = query.where(FeedbackRow.corrected_answer != "")
        if filters.only_unexported:
            exported = select(FeedbackExportLineRow.feedback_id).where(FeedbackExportLineRow.tenant == tenant)
            query = query.where(FeedbackRow.id.not_in(exported))
        with self.metadata.session() as session:
            rows, token = newest_first_page(session, query, FeedbackRow, page_size, page_token)
            exported_by = self._exported(session, tenant, [row.id for row in rows])
            return [_item(row, exported_by.get(row.id, ())) for row in rows], token

    @staticmethod
    def _exported(session: Any, tenant: str, feedback_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The files each item was exported into, in the order they were written."""
        if not feedback_ids:
            return {}
        rows = session.execute(
            select(FeedbackExportLineRow.feedback_id, FeedbackExportLineRow.file_id)
            .where(FeedbackExportLineRow.tenant == tenant, FeedbackExportLineRow.feedback_id.in_(list(feedback_ids)))
            .order_by(FeedbackExportLineRow.created_at, FeedbackExportLineRow.file_id)
        )
        found: dict[str, list[str]] = {}
        for feedback_id, file_id in rows:
            if file_id not in found.setdefault(feedback_id, []):
                found[feedback_id].append(file_id)
        return {key: tuple(value) for key, value in found.items()}

    # -- exports (curation) ----------------------------------------------------------------------

    def accepted(
        self, tenant: str, feedback_ids: Sequence[str], model: str, include_approved: bool, include_exported: bool
    ) -> list[FeedbackItem]:
        """The items an export writes, oldest first: the named ones (each must be accepted), or every
        accepted item on `model` (not exported before unless `include_exported`)."""
        if feedback_ids:
            if len(set(feedback_ids)) != len(feedback_ids):
                raise InvalidArgument.for_field("feedback_ids", "lists an item more than once")
            items = [self.get(tenant, fid, f"feedback_ids[{i}]") for i, fid in enumerate(feedback_ids)]
            refused = [
                f"feedback_ids[{i}] ({item.id})"
                for i, item in enumerate(items)
                if item.training_answer(include_approved) is None
            ]
            if refused:
                raise FailedPrecondition(
                    f"{', '.join(refused)}: no corrected answer"
                    + (
                        ""
                        if include_approved
                        else " (set include_approved to export answers rated up or 4-5 as served)"
                    )
                )
            return items
        items: list[FeedbackItem] = []
        token = ""
        filters = FeedbackFilter(model=model, only_unexported=not include_exported)
        while True:
            page, token = self.list(tenant, filters, 1000, token)
            items += [item for item in page if item.training_answer(include_approved) is not None]
            if not token:
                return items[::-1]

    def rated_down(self, tenant: str, items: Sequence[FeedbackItem]) -> dict[str, list[FeedbackItem]]:
        """The tenant's answers rated down for the prompts of `items` (by `prompt_key`), oldest first:
        the rejected sides of preference pairs whose chosen side is an approved answer."""
        wanted = {json.dumps(item.messages, ensure_ascii=False) for item in items}
        found: dict[str, list[FeedbackItem]] = {}
        if not wanted:
            return found
        with self.metadata.session() as session:
            rows = session.scalars(
                select(FeedbackRow)
                .where(
                    FeedbackRow.tenant == tenant,
                    FeedbackRow.rating == "down",
                    FeedbackRow.messages_json.in_(sorted(wanted)),
                )
                .order_by(FeedbackRow.created_at, FeedbackRow.id)
            )
            for row in rows:
                item = _item(row)
                found.setdefault(prompt_key(item.messages), []).append(item)
        return found

    def record_export(self, tenant: str, file_id: str, feedback_ids: Sequence[str], kind: str) -> None:
        """Which item each line (1-based) of an exported file came from."""
        now = utcnow()
        with self.metadata.session() as session:
            session.add_all(
                FeedbackExportLineRow(
                    file_id=file_id, line=line, tenant=tenant, feedback_id=feedback_id, kind=kind, created_at=now
                )
                for line, feedback_id in enumerate(feedback_ids, start=1)
            )

    def lineage(self, tenant: str, file_ids: Sequence[str]) -> list[dict[str, Any]]:
        """`{file_id, line, feedback_id, kind}` of every line exports wrote into these files."""
        if not file_ids:
            return []
        with self.metadata.session() as session:
            rows = session.scalars(
                select(FeedbackExportLineRow)
                .where(FeedbackExportLineRow.tenant == tenant, FeedbackExportLineRow.file_id.in_(list(file_ids)))
                .order_by(FeedbackExportLineRow.file_id, FeedbackExportLineRow.line)
            )
            return [{"file_id": r.file_id, "line": r.line, "feedback_id": r.feedback_id, "kind": r.kind} for r in rows]
