"""Feedback → data: accepted feedback written as raw files of the tenant's (FeedbackExportService).

The instruction file (OpenAI-chat JSONL: the prompt the server recorded, then the corrected or approved
answer) is an ordinary uploaded file: a dataset version built from it goes through the whole pipeline
(validation, PII scrub, deduplication, the leakage guard) like any other, and its report names the
feedback item behind each line (`feedback_lineage`, from the lines recorded here). Corrections that
differ from the served answer also become chosen-over-rejected pairs in a separate preference file,
kept for later preference tuning. Feedback is read through `tuneforge.catalog.feedback`; the inference
front owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tuneforge.catalog.feedback import INSTRUCTION, PREFERENCE, ExportBatch, FeedbackStore, export_batch
from tuneforge.common.auth import current_principal
from tuneforge.common.errors import FailedPrecondition
from tuneforge.common.names import new_id
from tuneforge.curation.files import FileCatalog, StoredFile, Upload
from tuneforge.curation.servicer import file_message
from tuneforge.v1 import feedback_pb2, feedback_pb2_grpc


@dataclass(frozen=True)
class FeedbackExport:
    """The files an export wrote and the items on their lines, in order."""

    instruction_file: StoredFile
    feedback_ids: list[str]
    preference_file: StoredFile | None
    preference_feedback_ids: list[str]


class FeedbackExporter:
    """Writes accepted feedback into new files of the tenant's and records each line's item."""

    def __init__(self, feedback: FeedbackStore, files: FileCatalog) -> None:
        self.feedback = feedback
        self.files = files

    def export(
        self,
        tenant: str,
        feedback_ids: Sequence[str] = (),
        model: str = "",
        include_approved: bool = False,
        include_exported: bool = False,
    ) -> FeedbackExport:
        items = self.feedback.accepted(tenant, list(feedback_ids), model, include_approved, include_exported)
        batch = export_batch(items, include_approved, self.feedback.rated_down(tenant, items))
        if not batch.instruction:
            raise FailedPrecondition(
                "no accepted feedback to export: none with a corrected answer"
                + ("" if include_approved else " (include_approved also exports answers rated up or 4-5)")
                + ("" if include_exported else " that no earlier export wrote (include_exported writes those again)")
            )
        stem = new_id("feedback")
        instruction = self._write(tenant, f"{stem}.jsonl", "openai_chat", batch.instruction, INSTRUCTION)
        preference = None
        if batch.preference:
            preference = self._write(tenant, f"{stem}-preference.jsonl", "auto", batch.preference, PREFERENCE)
        return FeedbackExport(
            instruction,
            [fid for fid, _ in batch.instruction],
            preference,
            [fid for fid, _ in batch.preference],
        )

    def _write(
        self, tenant: str, filename: str, data_format: str, lines: Sequence[tuple[str, dict[str, Any]]], kind: str
    ) -> StoredFile:
        upload = self.files.begin_upload(tenant, filename, data_format)
        assert isinstance(upload, Upload)  # no idempotency key: always a new upload
        try:
            upload.write(ExportBatch.jsonl(lines))
            stored = upload.finish()
        except BaseException:
            upload.abort()
            raise
        self.feedback.record_export(tenant, stored.id, [fid for fid, _ in lines], kind)
        return stored


class FeedbackExportServicer(feedback_pb2_grpc.FeedbackExportServiceServicer):
    """ExportFeedback for the caller's tenant: glue over FeedbackExporter."""

    def __init__(self, exporter: FeedbackExporter) -> None:
        self.exporter = exporter

    async def ExportFeedback(
        self, request: feedback_pb2.ExportFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.ExportFeedbackResponse:
        done = await asyncio.to_thread(
            self.exporter.export,
            current_principal().tenant,
            list(request.feedback_ids),
            request.model,
            request.include_approved,
            request.include_exported,
        )
        response = feedback_pb2.ExportFeedbackResponse(
            instruction_file=file_message(done.instruction_file),
            feedback_ids=done.feedback_ids,
            preference_feedback_ids=done.preference_feedback_ids,
        )
        if done.preference_file is not None:
            response.preference_file.CopyFrom(file_message(done.preference_file))
        return response
