"""Playground: one prompt answered side by side by the base model and up to three adapters, streamed,
each answer with a rating form (FeedbackService: thumbs, a 1-5 score, a corrected answer, a comment).

The page posts one request per column to `/api/generate`, which relays InferenceService's
GenerateStream with the signed-in key as NDJSON lines (`{"resolved_model"}`, `{"delta"}`…, then
`{"done", "text", "finish_reason", "usage", "json"}`), read progressively by the page. The last line
says whether the answer is JSON, and pretty-prints it when it is valid.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from tuneforge.client import TuneforgeError
from tuneforge.v1 import common_pb2, feedback_pb2, inference_pb2
from tuneforge.web.app import BACKEND, render, session_of

#: Adapters (or aliases) a prompt can be compared on next to the base model.
MAX_COMPARED = 3
MAX_PROMPT_CHARS = 32_000
#: What an answer fenced as a Markdown code block looks like (models often wrap JSON so).
FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def json_verdict(text: str) -> dict[str, Any] | None:
    """None for an answer that is not meant as JSON; else whether it parses, pretty-printed if it does."""
    body = text.strip()
    fenced = FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("{", "[")):
        return None
    try:
        value = json.loads(body)
    except ValueError as exc:
        return {"valid": False, "error": str(exc)}
    return {"valid": True, "pretty": json.dumps(value, indent=2, ensure_ascii=False)}


class BadField(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float, integer: bool = False) -> Any:
    value = body.get(name, default)
    if value in ("", None):
        value = default
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise BadField(name, f"{name} must be a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise BadField(name, f"{name} must be between {low:g} and {high:g}")
    return number


def generate_request(body: dict[str, Any]) -> inference_pb2.GenerateStreamRequest:
    """The GenerateStream request a playground column asks for; BadField names what is wrong."""
    model = body.get("model", "")
    if not isinstance(model, str) or len(model) > 200:
        raise BadField("model", "model must be an adapter name, `name:version|alias`, or empty for the base model")
    system, user = body.get("system", ""), body.get("user", "")
    if not isinstance(system, str) or len(system) > MAX_PROMPT_CHARS:
        raise BadField("system", f"system must be text of at most {MAX_PROMPT_CHARS} characters")
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_PROMPT_CHARS:
        raise BadField("user", f"user must be non-empty text of at most {MAX_PROMPT_CHARS} characters")
    sampling = inference_pb2.SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0, 0.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 0.0),
        max_tokens=_number(body, "max_tokens", 1, 4096, 128, integer=True),
    )
    if body.get("seed") not in (None, ""):
        sampling.seed = _number(body, "seed", 0, 2**63 - 1, 0, integer=True)
    messages = [common_pb2.ChatMessage(role="system", content=system)] if system.strip() else []
    messages.append(common_pb2.ChatMessage(role="user", content=user))
    return inference_pb2.GenerateStreamRequest(model=model, messages=messages, sampling=sampling)


async def playground(request: web.Request) -> web.Response:
    caller = request.app[BACKEND].caller(session_of(request).api_key)
    models = (await caller.call(caller.backend.inference.ListModels, inference_pb2.ListModelsRequest())).models
    base = next((m.name for m in models if m.is_base), "")
    choices = [m.name for m in models if not m.is_base]
    return render(request, "playground.html", base=base, choices=choices, columns=MAX_COMPARED)


async def _from_json(request: web.Request, build: Any) -> Any:
    """`build(body)` of a JSON object body, or the 400 response naming what is wrong with it."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise BadField("body", "send a JSON object")
        return build(body)
    except BadField as exc:
        return web.json_response({"error": {"message": str(exc), "field": exc.field}}, status=400)
    except ValueError:
        return web.json_response({"error": {"message": "the body is not JSON", "field": "body"}}, status=400)


async def generate(request: web.Request) -> web.StreamResponse:
    message = await _from_json(request, generate_request)
    if isinstance(message, web.Response):
        return message
    caller = request.app[BACKEND].caller(session_of(request).api_key)
    stream = caller.stream(caller.backend.inference.GenerateStream, message, timeout=600)
    try:
        first = await anext(stream)  # errors before the first token keep their HTTP status
    except StopAsyncIteration:
        first = None
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    await response.prepare(request)
    text: list[str] = []
    resolved = response_id = ""

    async def send(line: dict[str, Any]) -> None:
        await response.write((json.dumps(line, ensure_ascii=False) + "\n").encode())

    async def each() -> Any:
        if first is not None:
            yield first
        async for item in stream:
            yield item

    try:
        async for item in each():
            if item.resolved_model:
                resolved, response_id = item.resolved_model, item.response_id
                await send({"resolved_model": resolved, "response_id": response_id})
            if item.delta:
                text.append(item.delta)
                await send({"delta": item.delta})
            if item.finish_reason:
                answer = "".join(text)
                await send(
                    {
                        "done": True,
                        "text": answer,
                        "resolved_model": resolved,
                        "response_id": response_id,  # what a rating of this answer names
                        "finish_reason": inference_pb2.FinishReason.Name(item.finish_reason)
                        .removeprefix("FINISH_REASON_")
                        .lower(),
                        "usage": {
                            "prompt_tokens": item.usage.prompt_tokens,
                            "completion_tokens": item.usage.completion_tokens,
                        },
                        "json": json_verdict(answer),
                    }
                )
    except TuneforgeError as exc:  # after the first line the status is sent: say it in the stream
        await send({"error": {"code": exc.code, "message": exc.message}})
    await response.write_eof()
    return response


RATINGS = {"": feedback_pb2.FEEDBACK_RATING_UNSPECIFIED, "up": feedback_pb2.FEEDBACK_RATING_UP}
RATINGS["down"] = feedback_pb2.FEEDBACK_RATING_DOWN


def feedback_request(body: dict[str, Any]) -> feedback_pb2.SubmitFeedbackRequest:
    """The SubmitFeedback request of a rating form; the service checks the values (and names bad fields)."""
    response_id, rating = body.get("response_id"), body.get("rating") or ""
    if not isinstance(response_id, str) or not response_id:
        raise BadField("response_id", "response_id must name the answer being rated")
    if rating not in RATINGS:
        raise BadField("rating", "rating must be up, down or empty")
    texts = {name: body.get(name) or "" for name in ("corrected_answer", "comment")}
    for name, value in texts.items():
        if not isinstance(value, str):
            raise BadField(name, f"{name} must be text")
    score = _number(body, "score", 0, 5, 0, integer=True)
    return feedback_pb2.SubmitFeedbackRequest(response_id=response_id, rating=RATINGS[rating], score=score, **texts)


async def submit_feedback(request: web.Request) -> web.Response:
    message = await _from_json(request, feedback_request)
    if isinstance(message, web.Response):
        return message
    caller = request.app[BACKEND].caller(session_of(request).api_key)
    item = (await caller.call(caller.backend.feedback.SubmitFeedback, message)).feedback
    return web.json_response({"id": item.id, "model": item.model, "corrected": bool(item.corrected_answer)})


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/playground", playground)
    router.add_post("/api/generate", generate)
    router.add_post("/api/feedback", submit_feedback)
