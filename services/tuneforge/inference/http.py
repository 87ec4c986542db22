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
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tuneforge.catalog.feedback import FeedbackStore, new_response_id
from tuneforge.common.auth import acting_principal
from tuneforge.common.errors import InvalidArgument, TuneforgeError, Unavailable
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings
from tuneforge.inference.engine import Event, Sampling
from tuneforge.inference.feedback import ResponseRecorder, feedback_input_from_json, feedback_json
from tuneforge.inference.frontend import InferenceFrontend

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


def _from_domain(exc: TuneforgeError) -> web.Response:
    status, kind = STATUS.get(exc.status, (500, "server_error"))
    param = exc.violations[0].field if isinstance(exc, InvalidArgument) and exc.violations else None
    message = exc.message if status != 500 else "internal error"
    response = _error(status, kind, message, param, exc.status.lower())
    if status == 429:  # a real rate limit (the tenant's requests in flight): say when to come back
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


#: What the HTTP layer's own refusals (unknown route, method, oversize body) are, in OpenAI's shape.
HTTP_KINDS = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
#: Seconds a client told 429 waits before retrying.
RETRY_AFTER_S = 1
#: OpenAI roles and what the chat template knows them as (`developer` is OpenAI's newer name for system).
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body; INVALID_ARGUMENT naming `body` when it is not JSON."""
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument.for_field("body", f"is not JSON: {exc}") from exc


def _optional(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """`body[name]` when present and not null, checked to be `kind` (bools are not numbers here)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidArgument.for_field(name, f"must be {what}, got {type(value).__name__}")
    return value


def _message_text(message: Any, index: int) -> tuple[str, str]:
    """(role, text) of one message; content is a string or a list of text parts."""
    if not isinstance(message, dict):
        raise InvalidArgument.for_field(f"messages[{index}]", "must be an object with role and content")
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidArgument.for_field(f"messages[{index}].role", "must be a string")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            field = f"messages[{index}].content[{part_index}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidArgument.for_field(field, "only text parts ({type: text, text: ...}) are supported")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise InvalidArgument.for_field(f"messages[{index}].content", "must be a string or a list of text parts")
    return ROLE_NAMES.get(role, role), content


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
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidArgument.for_field("body", "must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidArgument.for_field("messages", "must be a list of {role, content}")
        pairs = [_message_text(message, index) for index, message in enumerate(messages)]
        if _optional(body, "n", int, "an integer") not in (None, 1):
            raise InvalidArgument.for_field("n", "only 1 is supported")
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise InvalidArgument.for_field("stop", "must be a string or a list of strings")
        temperature = _optional(body, "temperature", (int, float), "a number")
        top_p = _optional(body, "top_p", (int, float), "a number")
        max_tokens = _optional(body, "max_completion_tokens", int, "an integer")
        if max_tokens is None:
            max_tokens = _optional(body, "max_tokens", int, "an integer")
        seed = _optional(body, "seed", int, "an integer")
        self.frontend.check_messages(pairs)  # cheap checks before a model version may be loaded
        sampling = self.frontend.sampling(
            temperature=1.0 if temperature is None else float(temperature),
            top_p=float(top_p or 0.0),
            max_tokens=max_tokens or 0,
            stop=stop or [],
            seed=seed,
            prefix="",
        )
        model = body.get("model") or ""
        if not isinstance(model, str):
            raise InvalidArgument.for_field("model", "must be a string")
        target = await self.frontend.resolve(tenant, model)
        prompt = await self.frontend.render_prompt(pairs, target=target)  # with the target's chat template
        completion_id = new_response_id()  # the response id feedback names
        created = int(time.time())
        events = self.frontend.stream(tenant, target, prompt, sampling)
        # taken before any byte is sent, so a failure up to the first token (a backend that is down) still
        # gets its HTTP status (503) instead of a broken event stream
        first = await anext(events)
        if first.finish_reason == "error":
            return _error(503, "service_unavailable", f"generation failed on this replica: {first.error}; retry")
        events = _chain(first, events)
        if not body.get("stream"):
            parts: list[str] = []
            async for event in events:
                parts.append(event.delta)
                if event.finish_reason:
                    if event.finish_reason == "error":
                        return _error(503, "service_unavailable", event.error)
                    await self._record(tenant, completion_id, target.name, pairs, sampling, parts, event)
                    return web.json_response(
                        {
                            "id": completion_id,
                            "object": "chat.completion",
                            "created": created,
                            "model": target.name,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "".join(parts)},
                                    "finish_reason": FINISH.get(event.finish_reason, "stop"),
                                }
                            ],
                            "usage": {
                                "prompt_tokens": event.prompt_tokens,
                                "completion_tokens": event.completion_tokens,
                                "total_tokens": event.prompt_tokens + event.completion_tokens,
                            },
                        }
                    )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": target.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""}, None)
        parts = []
        try:
            async for event in events:
                parts.append(event.delta)
                if event.delta:
                    await send({"content": event.delta}, None)
                if event.finish_reason == "error":
                    raise Unavailable(f"generation failed on this replica: {event.error}; retry")
                if event.finish_reason:
                    await self._record(tenant, completion_id, target.name, pairs, sampling, parts, event)
                    usage = {
                        "prompt_tokens": event.prompt_tokens,
                        "completion_tokens": event.completion_tokens,
                        "total_tokens": event.prompt_tokens + event.completion_tokens,
                    }
                    await send({}, FINISH.get(event.finish_reason, "stop"), usage)
        except TuneforgeError as exc:
            # the status line is gone: the error travels as an event, which the openai client raises
            status, kind = STATUS.get(exc.status, (500, "server_error"))
            error = {"message": exc.message if status != 500 else "internal error", "type": kind, "code": status}
            await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

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
