"""gRPC server interceptors: metrics and access log, domain-error mapping, authentication.

Each wraps the RPC's behaviour in an async context (`_around`), so unary and streaming calls share
one code path. Order in the server (outermost first): metrics → errors → auth, so that an
authentication failure is mapped like any other error and counted with its final status code.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from tuneforge.common import errors
from tuneforge.common.auth import KeyResolver, acting_principal, bearer_token, bind_principal, reset_principal
from tuneforge.common.logging import get_logger

log = get_logger("tuneforge.rpc")

#: The one table from domain errors to status codes.
STATUS_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DATA_LOSS": grpc.StatusCode.DATA_LOSS,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}

#: Methods anyone may call: probes and tooling must work without a key.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RPC_TOTAL = Counter("tuneforge_grpc_requests_total", "gRPC calls handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "tuneforge_grpc_request_seconds",
    "Time from the start of a gRPC call to its last message",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

Around = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


class UndecodableRequest:
    """What the request deserializer hands on for bytes that are not the method's request message.

    grpc.aio would answer a deserializer's exception with UNKNOWN naming the Python exception
    class; instead the innermost wrapper turns this into INVALID_ARGUMENT inside the interceptors
    (after authentication, so an anonymous caller still gets UNAUTHENTICATED).
    """

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type

    def refusal(self) -> errors.InvalidArgument:
        return errors.InvalidArgument.for_field(
            "request", f"is not a {self.message_type} message: its protobuf bytes do not decode"
        )


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize` that returns an UndecodableRequest instead of raising."""
    if deserialize is None or getattr(deserialize, "_tuneforge_safe", False):
        return deserialize
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = descriptor.full_name if descriptor is not None else "request"

    def safe(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, and whatever else a parser raises on bytes
            return UndecodableRequest(message_type)

    safe._tuneforge_safe = True  # type: ignore[attr-defined]
    return safe


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, UndecodableRequest):
            raise request.refusal()
        yield request


def _checked(request: Any, innermost: bool) -> Any:
    """The request for the servicer: an undecodable one refused, a request stream checked as it is read."""
    if not innermost:
        return request
    if isinstance(request, UndecodableRequest):
        raise request.refusal()
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


def _wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with every call of its behaviour run inside `around(context)`.

    Requests that do not decode reach the wrappers as UndecodableRequest; the wrapper around the
    servicer itself refuses them, inside every interceptor's context.
    """

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(context):
            result = behaviour(_checked(request, innermost), context)
            return await result if inspect.isawaitable(result) else result

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with around(context):
            result = behaviour(_checked(request, innermost), context)
            if inspect.isawaitable(result):
                result = await result
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif result is not None:
                for item in result:
                    yield item

    unary._tuneforge_wrapped = streaming._tuneforge_wrapped = True  # type: ignore[attr-defined]
    deserialize = _safe_deserializer(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary:
        behaviour = handler.unary_unary
        wrapped = grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
    elif handler.unary_stream:
        behaviour = handler.unary_stream
        wrapped = grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)
    elif handler.stream_unary:
        behaviour = handler.stream_unary
        wrapped = grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
    else:
        behaviour = handler.stream_stream
        wrapped = grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
    innermost = not getattr(behaviour, "_tuneforge_wrapped", False)
    return wrapped


class _AroundInterceptor(grpc.aio.ServerInterceptor):
    """Base: wraps each non-public method's handler with `self.around`."""

    wrap_public = False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (not self.wrap_public and method.startswith(PUBLIC_METHOD_PREFIXES)):
            return handler
        return _wrap(handler, lambda context: self.around(method, context))

    def around(self, method: str, context: grpc.aio.ServicerContext) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError


class MetricsInterceptor(_AroundInterceptor):
    """Counts calls by method and status code, times them, and writes one access-log line per call."""

    wrap_public = True

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        structlog.contextvars.bind_contextvars(request_id=secrets.token_hex(8), method=method)
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except BaseException:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            elapsed = time.perf_counter() - start
            RPC_TOTAL.labels(method, code).inc()
            RPC_SECONDS.labels(method).observe(elapsed)
            if not method.startswith(PUBLIC_METHOD_PREFIXES):
                log.info("rpc", code=code, ms=round(elapsed * 1000, 2))


def status_for(exc: errors.TuneforgeError) -> grpc.Status:
    """A gRPC status (with `google.rpc` details in its trailing metadata) for a domain error."""
    code = STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
    details: list[any_pb2.Any] = []
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.location(), description=v.description)
                for v in exc.violations
            ]
        )
        details.append(_pack(bad_request))
    if isinstance(exc, errors.NotFound):
        details.append(_pack(error_details_pb2.ResourceInfo(resource_type=exc.kind, resource_name=exc.resource_id)))
    status = status_pb2.Status(code=code.value[0], message=exc.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class ErrorMappingInterceptor(_AroundInterceptor):
    """Turns domain errors into status codes with rich details; anything unexpected becomes INTERNAL."""

    wrap_public = True

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        try:
            yield
        except errors.TuneforgeError as exc:
            status = status_for(exc)
            if status.code is grpc.StatusCode.INTERNAL:
                log.error("rpc_failed", error=exc.message)
            await context.abort(status.code, status.details, status.trailing_metadata)
        except NotImplementedError:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{method} is part of the contract but not offered by this server"
            )
        except grpc.aio.AbortError:
            raise
        except Exception:
            reference = structlog.contextvars.get_contextvars().get("request_id", "")
            log.exception("rpc_internal_error")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (reference {reference}); the server log has the details"
            )


class AuthInterceptor(_AroundInterceptor):
    """Resolves the caller's API key to a Principal and binds it for the call; public methods pass."""

    def __init__(self, resolver: KeyResolver) -> None:
        self.resolver = resolver

    @asynccontextmanager
    async def around(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        metadata = context.invocation_metadata()
        principal = acting_principal(self.resolver.resolve(bearer_token(metadata)), method, metadata)
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, key=principal.key_name)
        token = bind_principal(principal)
        try:
            yield
        finally:
            reset_principal(token)
