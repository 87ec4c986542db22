"""gRPC glue for EvaluationService: suites (CreateSuite, GetSuite, ListSuites).

Runs and reports (CreateEvalRun and the rest) answer UNIMPLEMENTED until they are built — never a
made-up result; the checks, comparison and reports they will use are in this package already.
"""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import json_format, struct_pb2

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.evaluation.suite_store import SuiteInfo, SuiteStore
from tuneforge.evaluation.suites import Suite
from tuneforge.v1 import common_pb2, evaluation_pb2, evaluation_pb2_grpc


def suite_message(info: SuiteInfo) -> evaluation_pb2.Suite:
    return evaluation_pb2.Suite(
        id=info.id,
        name=info.name,
        num_items=info.num_items,
        category_counts=info.category_counts,
        builtin=info.builtin,
        digest=common_pb2.ContentDigest(sha256=info.sha256, size_bytes=info.size_bytes),
        times=resource_times(info.created_at, info.updated_at),
    )


def item_messages(suite: Suite) -> list[evaluation_pb2.SuiteItem]:
    items = []
    for item in suite.items:
        checks = []
        for check in item.checks:
            params = struct_pb2.Struct()
            json_format.ParseDict(check.get("params", {}), params)
            checks.append(evaluation_pb2.CheckSpec(type=check["type"], params=params))
        items.append(
            evaluation_pb2.SuiteItem(
                id=item.id,
                category=item.category,
                messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item.messages],
                checks=checks,
                reference=item.reference,
            )
        )
    return items


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    """Suites per tenant and the built-in ones."""

    def __init__(self, suites: SuiteStore) -> None:
        self.suites = suites

    async def CreateSuite(
        self, request: evaluation_pb2.CreateSuiteRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.CreateSuiteResponse:
        info = await asyncio.to_thread(
            self.suites.create, current_principal().tenant, request.name, request.jsonl, request.idempotency_key
        )
        return evaluation_pb2.CreateSuiteResponse(suite=suite_message(info))

    async def GetSuite(
        self, request: evaluation_pb2.GetSuiteRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.GetSuiteResponse:
        info, suite = await asyncio.to_thread(self.suites.get, current_principal().tenant, request.suite_id)
        return evaluation_pb2.GetSuiteResponse(suite=suite_message(info), items=item_messages(suite))

    async def ListSuites(
        self, request: evaluation_pb2.ListSuitesRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.ListSuitesResponse:
        page, token = await asyncio.to_thread(
            self.suites.list, current_principal().tenant, request.page_size, request.page_token
        )
        return evaluation_pb2.ListSuitesResponse(suites=[suite_message(s) for s in page], next_page_token=token)
