"""OpenAI-compatible HTTP API: `POST /v1/chat/completions` (with `stream: true` as server-sent events)
and `GET /v1/models`, over the same InferenceFrontend as the gRPC API; `POST /v1/feedback` rates an
answer by its completion `id` and `GET /v1/feedback/{id}` reads the rating back (`inference/feedback.py`).

The API key is the OpenAI client's own `Authorization: Bearer …` header, checked against the same
keys file as gRPC; `model` names `adapter`, `adapter:<version|alias>` or the base model, in the
caller's tenant only (404 otherwise). Errors come back in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`) with the matching HTTP status: 400, 401, 404,
429 (the tenant's requests in flight, with `Retry-After`), 503 — so the official `openai` Python client
works against it unchanged: a request that can never succeed as sent (a prompt or `max_tokens` over
the limits, a field of the wrong type) is a 400 naming the field, never a 429 the client would retry.

Bodies are parsed by a typed model (`openai_types.py`): a parameter this server does not implement
(`tools`, `logprobs`, `n` > 1, …) is a 400 naming it, never silently ignored. `response_format`
(`json_object`, `json_schema`) is enforced while decoding (`structured.py`). `usage` is the engine's
count: the rendered prompt's token ids and the tokens generated; a stream carries it when asked
(`stream_options.include_usage`), in a last chunk of its own as OpenAI sends it. An answer that fails
or is cancelled after its first bytes ends its stream with an error event, never a `finish_reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tuneforge.catalog.feedback import FeedbackStore, new_response_id
from tuneforge.common.auth import acting_principal
from tuneforge.common.errors import InvalidArgument, ResourceExhausted, TuneforgeError, Unavailable
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings
from tuneforge.inference.engine import Event, Sampling
from tuneforge.inference.feedback import ResponseRecorder, feedback_input_from_json, feedback_json
from tuneforge.inference.frontend import InferenceFrontend, run_in
from tuneforge.inference.openai_types import parse_chat_request

log = get_logger(__name__)

STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
}
FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length"}
MAX_BODY_BYTES = 4 * 1024 * 1024


def _error(status: int, kind: str, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


async def _chain(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    if first.finish_reason:
        await rest.aclose()  # frees the tenant's place now, not when the generator is collected
        return
    async for event in rest:
        yield event


def _why(event: Event) -> str:
    """What ended an answer that did not finish: the engine's error, or the cancellation."""
    return event.error or f"the answer ended early ({event.finish_reason})"


def _usage(event: Event) -> dict[str, int]:
    """OpenAI's usage: the rendered prompt's token ids and the tokens generated (the engine's counts)."""
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


def _error_event(exc: Exception) -> bytes:
    """An SSE event carrying an error in OpenAI's shape (what the openai client raises mid-stream)."""
    if isinstance(exc, TuneforgeError):
        status, kind = STATUS.get(exc.status, (500, "server_error"))
        message = exc.message if status != 500 else "internal error"
    else:
        log.error("openai_http_stream_failed", error=repr(exc))
        status, kind, message = 500, "server_error", "internal error"
    error = {"message": message, "type": kind, "param": None, "code": status}
    return f"data: {json.dumps({'error': error})}\n\n".encode()


def _from_domain(exc: TuneforgeError) -> web.Response:
    status, kind = STATUS.get(exc.status, (500, "server_error"))
    param = exc.violations[0].field if isinstance(exc, InvalidArgument) and exc.violations else None
    if isinstance(exc, ResourceExhausted) and not exc.retryable:  # larger than the whole replica: retrying cannot help
        status, kind, param = 400, "invalid_request_error", exc.field or None
    message = exc.message if status != 500 else "internal error"
    response = _error(status, kind, message, param, exc.status.lower())
    if status == 429:  # a real rate limit (the tenant's requests in flight): say when to come back
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


#: What the HTTP layer's own refusals (unknown route, method, oversize body) are, in OpenAI's shape.
HTTP_KINDS = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
#: Seconds a client told 429 waits before retrying.
RETRY_AFTER_S = 1


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body; INVALID_ARGUMENT naming `body` when it is not JSON."""
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument.for_field("body", f"is not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidArgument.for_field("body", "is nested too deeply") from None


class OpenAIServer:
    """The aiohttp application and its listener, next to the gRPC server in the same process."""

    def __init__(
        self,
        frontend: InferenceFrontend,
        settings: Settings,
        feedback: FeedbackStore | None = None,
        responses: ResponseRecorder | None = None,
    ) -> None:
        from tuneforge.common.server import key_resolver

        self.frontend = frontend
        #: Feedback on answers (`/v1/feedback`, 404 without it) and where answers are recorded for it.
        self.feedback = feedback
        self.responses = responses
        self.keys = key_resolver(settings)
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        if feedback is not None:
            self.app.router.add_post("/v1/feedback", self.submit_feedback)
            self.app.router.add_get("/v1/feedback/{feedback_id}", self.get_feedback)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("openai_http_listening", host=host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except TuneforgeError as exc:
            return _from_domain(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason
            if exc.status == 413:
                message = f"the request body is over {MAX_BODY_BYTES // 2**20} MiB"
            elif exc.status == 404:
                message = (
                    f"no route {request.method} {request.path}: this server offers /v1/chat/completions, "
                    "/v1/models and /v1/feedback"
                )
            return _error(exc.status, HTTP_KINDS.get(exc.status, "invalid_request_error"), message)
        except Exception as exc:
            log.error("openai_http_error", path=request.path, error=repr(exc))
            return _error(500, "server_error", "internal error")

    def _tenant(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        # a service key acts only on the gRPC service-to-service paths, never here
        return acting_principal(self.keys.resolve(key), f"HTTP {request.path}", None).tenant

    async def models(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        entries = await self.frontend.model_entries(tenant)
        data = [  # OpenAI's model object, with what Tuneforge adds: the kind and whether it is loaded now
            {
                "id": entry.name,
                "object": "model",
                "created": 0,
                "owned_by": "tuneforge" if entry.is_base else tenant,
                "kind": entry.kind or "base",
                "loaded": entry.loaded,
            }
            for entry in entries
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        tenant = self._tenant(request)
        raw = await request.read()  # at most MAX_BODY_BYTES (413 past it)
        # parsed and validated on a thread: up to 4 MiB of JSON (see openai_types.py for what is refused)
        inputs = await run_in(self.frontend.executors.prompts, parse_chat_request, raw)
        pairs = inputs.pairs
        self.frontend.check_messages(pairs)  # cheap checks before a model version may be loaded
        sampling = self.frontend.sampling(
            temperature=inputs.temperature,
            top_p=inputs.top_p,
            max_tokens=inputs.max_tokens,
            stop=inputs.stop,
            seed=inputs.seed,
            prefix="",
        )
        response_format = None
        if inputs.response_format is not None:
            kind, schema, name = inputs.response_format
            response_format = await self.frontend.check_response_format(
                kind, schema, name, "response_format.json_schema.schema", "response_format.type"
            )
        target = await self.frontend.resolve(tenant, inputs.model)
        prompt = await self.frontend.render_prompt(pairs, target=target)  # with the target's chat template
        completion_id = new_response_id()  # the response id feedback names
        created = int(time.time())
        events = self.frontend.stream(tenant, target, prompt, sampling, response_format)
        # taken before any byte is sent, so a failure up to the first token (a backend that is down, a schema
        # the engine's tokenizer cannot take) still gets its HTTP status instead of a broken event stream
        first = await anext(events)
        if first.finish_reason not in ("", *FINISH):  # an engine error or a cancellation: never a reply
            await events.aclose()
            return _error(503, "service_unavailable", f"generation failed on this replica: {_why(first)}; retry")
        events = _chain(first, events)
        if not inputs.stream:
            async with contextlib.aclosing(events):
                return await self._whole(events, tenant, completion_id, created, target.name, pairs, sampling)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": target.name,
                "choices": choices,
            }
            if inputs.include_usage:  # as OpenAI: null on every chunk, the counts on a last one of their own
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "finish_reason": finish}]

        parts = []
        try:
            await send(choice({"role": "assistant", "content": ""}))
            async for event in events:
                parts.append(event.delta)
                if event.delta:
                    await send(choice({"content": event.delta}))
                if not event.finish_reason:
                    continue
                if event.finish_reason not in FINISH:  # the stream ends with an error, never with "stop"
                    raise Unavailable(f"generation failed on this replica: {_why(event)}; retry")
                await self._record(tenant, completion_id, target.name, pairs, sampling, parts, event)
                await send(choice({}, FINISH[event.finish_reason]))
                if inputs.include_usage:
                    await send([], _usage(event))
                break
            else:
                raise Unavailable("generation ended without a result; retry")
        except ConnectionResetError:
            return response  # the client went away: nobody to tell (closing the events frees its batch row)
        except Exception as exc:
            # the status line is gone: the error travels as an event, which the openai client raises
            await response.write(_error_event(exc))
        finally:
            await events.aclose()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _whole(
        self,
        events: AsyncIterator[Event],
        tenant: str,
        completion_id: str,
        created: int,
        model: str,
        pairs: list[tuple[str, str]],
        sampling: Sampling,
    ) -> web.Response:
        """A non-streaming answer: the whole completion once it has finished (503 if it failed instead)."""
        parts: list[str] = []
        async for event in events:
            parts.append(event.delta)
            if not event.finish_reason:
                continue
            if event.finish_reason not in FINISH:
                return _error(503, "service_unavailable", f"generation failed on this replica: {_why(event)}")
            await self._record(tenant, completion_id, model, pairs, sampling, parts, event)
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(parts)},
                            "finish_reason": FINISH[event.finish_reason],
                        }
                    ],
                    "usage": _usage(event),
                }
            )
        raise Unavailable("generation ended without a result; retry")

    async def _record(
        self,
        tenant: str,
        response_id: str,
        model: str,
        pairs: list[tuple[str, str]],
        sampling: Sampling,
        parts: list[str],
        event: Event,
    ) -> None:
        """Keeps a finished answer under its completion id for feedback (before its last bytes go out)."""
        if self.responses is not None:
            await self.responses.record(
                tenant, response_id, model, pairs, sampling, "".join(parts), event.finish_reason
            )

    async def submit_feedback(self, request: web.Request) -> web.Response:
        """`POST /v1/feedback`: rates the caller's answer `response_id` (400 naming a bad field, 404 for an
        unknown or another tenant's answer)."""
        tenant = self._tenant(request)
        assert self.feedback is not None
        body = await _json_body(request)
        item = await asyncio.to_thread(self.feedback.submit, tenant, feedback_input_from_json(body))
        return web.json_response(feedback_json(item))

    async def get_feedback(self, request: web.Request) -> web.Response:
        """`GET /v1/feedback/{id}`: one of the caller's feedback items."""
        tenant = self._tenant(request)
        assert self.feedback is not None
        item = await asyncio.to_thread(self.feedback.get, tenant, request.match_info["feedback_id"])
        return web.json_response(feedback_json(item))
