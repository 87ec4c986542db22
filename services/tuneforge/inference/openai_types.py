"""The OpenAI chat-completions request as a typed model: what `/v1/chat/completions` accepts, and what it refuses.

Every parameter of OpenAI's API is either implemented, accepted because it cannot change the answer
(`user`, `metadata`, `safety_identifier`, `prompt_cache_key`, `service_tier` auto/default,
`parallel_tool_calls`), or refused with a 400 naming it (`param`) when it is set to anything but its
"off" value: tools and functions, `logprobs` / `top_logprobs`, `n` > 1, `logit_bias`, audio and
modalities other than text, `prediction`, penalties, `reasoning_effort`, `verbosity`,
`web_search_options`, `store`. A parameter OpenAI does not define is refused too, as OpenAI does. A
value of the wrong type is a 400 naming the parameter (`messages[0].content[1]` inside a message),
never a 500 and never silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneforge.common.errors import InvalidArgument

#: OpenAI roles and what the chat template knows them as (`developer` is OpenAI's newer name for system).
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Strict(BaseModel):
    """Exact JSON types (a bool is no number, "7" no integer); unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    """A part of a message's content; only text parts are supported."""

    type: str
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if not (isinstance(value, dict) and value.get("type") == "text" and isinstance(value.get("text"), str)):
            raise ValueError("only text parts ({type: text, text: ...}) are supported")
        return value


class ChatMessage(_Strict):
    """One message: a role and its text (a string or text parts)."""

    role: str
    content: str | list[TextPart] | None
    # set to anything, these are refused (see UNSUPPORTED_MESSAGE_KEYS); typed loosely so the refusal names them
    name: Any = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    refusal: Any = None
    audio: Any = None


class JsonSchemaParam(_Strict):
    """OpenAI's `response_format.json_schema`."""

    name: str = ""
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    #: Accepted; every schema is enforced exactly whatever it says (see `structured.py`).
    strict: bool | None = None


class ResponseFormatParam(_Strict):
    """OpenAI's `response_format`."""

    type: str
    json_schema: JsonSchemaParam | None = None


class StreamOptions(_Strict):
    """OpenAI's `stream_options`."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    """A `POST /v1/chat/completions` body."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)

    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormatParam | None = None
    # accepted, cannot change the answer
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # refused unless off (see UNSUPPORTED)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    store: Any = None


#: Parameters this server does not implement: refused when set to anything but an "off" value.
UNSUPPORTED = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logprobs": "log probabilities are not returned by this server",
    "top_logprobs": "log probabilities are not returned by this server",
    "logit_bias": "logit bias is not supported",
    "audio": "audio output is not supported",
    "modalities": 'only ["text"] is supported',
    "prediction": "predicted outputs are not supported",
    "presence_penalty": "penalties are not supported (only 0)",
    "frequency_penalty": "penalties are not supported (only 0)",
    "reasoning_effort": "reasoning settings are not supported",
    "verbosity": "verbosity settings are not supported",
    "web_search_options": "web search is not supported",
    "store": "stored completions are not supported",
}
UNSUPPORTED_MESSAGE_KEYS = {
    "name": "participant names are not supported (the chat template has none)",
    "tool_calls": "tool calling is not supported",
    "tool_call_id": "tool calling is not supported",
    "function_call": "function calling is not supported",
    "refusal": "refusal messages are not supported",
    "audio": "audio is not supported",
}


def _is_off(value: Any) -> bool:
    """Whether an unsupported parameter is set to its "off" value (as clients that send every field do)."""
    if value is None or value is False or value in ("", "none", [], {}, ["text"]):
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


#: Parameters that are maps of the caller's own keys.
_MAPS = frozenset({"metadata", "schema", "logit_bias"})


def _param(loc: tuple[Any, ...]) -> str:
    """The parameter a pydantic error location names: `messages[0].content[1]`, `response_format.type`, `stop`.

    Union member tags (`str`, `list[str]`, `TextPart`) are left out; list indexes are kept inside messages only.
    """
    parts: list[str] = []
    indexed = bool(loc) and loc[0] == "messages"
    for item in loc:
        if isinstance(item, int):
            if indexed and parts:
                parts[-1] += f"[{item}]"
            continue
        if item in ("str", "int", "float", "bool", "none") or "[" in item or item[:1].isupper():
            continue  # a union member's tag
        parts.append(item)
        if item in _MAPS:
            break  # what follows are the caller's own keys
    return ".".join(parts) or "body"


_MESSAGES = {
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean",
    "missing": "is required",
    "extra_forbidden": "is not a parameter of this API",
}


def _violation(exc: ValidationError) -> InvalidArgument:
    """One INVALID_ARGUMENT for a body that does not validate: its deepest error, named as OpenAI names fields."""
    errors = exc.errors(include_url=False)
    deepest = max(errors, key=lambda e: len(_param(e["loc"])))
    message = _MESSAGES.get(deepest["type"]) or str(deepest["msg"]).removeprefix("Value error, ")
    return InvalidArgument.for_field(_param(deepest["loc"]), message)


@dataclass(frozen=True)
class ChatInputs:
    """What the front needs from a chat-completions body, checked."""

    pairs: list[tuple[str, str]]
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    #: `(type, schema, name)` of `response_format`, or None for free text.
    response_format: tuple[str, Any, str] | None


def parse_chat_request(raw: bytes) -> ChatInputs:
    """A chat-completions body from its bytes; INVALID_ARGUMENT naming the parameter that is wrong or refused.

    Blocking (JSON and validation of up to the body limit): call it off the event loop.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument.for_field("body", f"is not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidArgument.for_field("body", "is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidArgument.for_field("body", "must be a JSON object")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _violation(exc) from None
    for name in request.model_extra or {}:
        raise InvalidArgument.for_field(name, "is not a parameter of this API")
    for name, why in UNSUPPORTED.items():
        if not _is_off(getattr(request, name)):
            raise InvalidArgument.for_field(name, why)
    if request.service_tier not in (None, "auto", "default"):
        raise InvalidArgument.for_field("service_tier", "only auto and default are supported")
    if request.n is not None and request.n != 1:
        raise InvalidArgument.for_field("n", "only 1 is supported")
    pairs = []
    for index, message in enumerate(request.messages):
        for key, why in UNSUPPORTED_MESSAGE_KEYS.items():
            if not _is_off(getattr(message, key)):
                raise InvalidArgument.for_field(f"messages[{index}].{key}", why)
        content = message.content
        if content is None:
            raise InvalidArgument.for_field(f"messages[{index}].content", "must be a string or a list of text parts")
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON can escape lone surrogates, which no tokenizer takes
            raise InvalidArgument.for_field(
                f"messages[{index}].content", "must be Unicode text: it holds a lone surrogate"
            ) from None
        pairs.append((ROLE_NAMES.get(message.role, message.role), text))
    if request.stream_options is not None:
        if not request.stream:
            raise InvalidArgument.for_field("stream_options", "is only allowed with stream: true")
        if request.stream_options.include_obfuscation:
            raise InvalidArgument.for_field("stream_options.include_obfuscation", "is not supported")
    response_format = None
    given = request.response_format
    if given is not None:
        if given.json_schema is not None and given.type != "json_schema":
            raise InvalidArgument.for_field("response_format.json_schema", "is only read with type json_schema")
        if given.type == "json_schema":
            if given.json_schema is None:
                raise InvalidArgument.for_field("response_format.json_schema", "is required with type json_schema")
            response_format = (given.type, given.json_schema.schema_, given.json_schema.name)
        else:
            response_format = (given.type, None, "")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return ChatInputs(
        pairs=pairs,
        model=request.model or "",
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=request.top_p or 0.0,
        max_tokens=max_tokens or 0,
        stop=stop,
        seed=request.seed,
        stream=bool(request.stream),
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        response_format=response_format,
    )
