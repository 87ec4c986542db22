"""Structured output: a request's `response_format` (JSON object, JSON schema) enforced while it decodes.

The schema is compiled by llguidance (the Rust library behind vLLM's and SGLang's `guidance` backend and
llama.cpp's JSON schemas) into a grammar over the tokenizer's ids. Before each token the engine asks the
request's `JsonConstraint` which ids may come next (`mask`: the others' logits become -inf), tells it the
token it chose (`accept`), and ends the row once the JSON is complete (`done`). So the reply parses and
matches the schema whatever the model's weights, unless `max_tokens` or a stop sequence cuts it first
(`finish_reason` then says `length` / `stop_sequence`).

llguidance was chosen over xgrammar and outlines-core for CPU serving of per-request schemas: it is one
dependency-free wheel (xgrammar pulls triton), builds a schema's grammar in milliseconds (xgrammar ~0.5 s,
outlines-core's index ~3.5 s on the Qwen2.5 vocabulary) and computes a mask lazily (well under a
millisecond a token on the 152k Qwen vocabulary; the README has the figures).

JSON is generated compact (no whitespace between tokens, `json.dumps(separators=(",", ":"))` style): a
model, random or not, cannot then pad a reply with blank lines until `max_tokens`. `strict` is accepted
and makes no difference: every schema is enforced exactly, and one the library cannot enforce
(`not`, `uniqueItems`, a look-around in a `pattern`, an unsatisfiable range…) is INVALID_ARGUMENT naming
the field, with the library's reason.

Costs: the tokenizer's llguidance view is built once per tokenizer (~1-3 s on 152k ids, on a thread);
compiled grammars stay in a bounded LRU per (tokenizer, schema), and each request gets a copy of its
grammar's matcher (they are stateful).
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
import torch

from tuneforge.common.errors import FailedPrecondition, InvalidArgument
from tuneforge.common.logging import get_logger

log = get_logger(__name__)

TEXT = "text"
JSON_OBJECT = "json_object"
JSON_SCHEMA = "json_schema"
KINDS = (TEXT, JSON_OBJECT, JSON_SCHEMA)
#: The largest schema accepted, as JSON text (OpenAI's own limits are of the same order).
MAX_SCHEMA_BYTES = 128 * 1024
#: Compact JSON: no whitespace between tokens (see the module doc).
COMPILE_OPTIONS = {"whitespace_flexible": False}
#: What `json_object` means: any JSON object.
ANY_OBJECT = '{"type":"object"}'


@dataclass(frozen=True)
class ResponseFormat:
    """What a reply must be: free text, any JSON object, or JSON matching `schema` (JSON text)."""

    type: str = TEXT
    schema: str = ""
    #: The schema's name (OpenAI's `json_schema.name`): for logs and errors only.
    name: str = ""
    #: Where the schema came from in the caller's request, named by errors about it.
    field: str = field(default="response_format.json_schema", compare=False)

    @property
    def constrained(self) -> bool:
        return self.type != TEXT

    def grammar_schema(self) -> str:
        """The JSON schema the reply must match (JSON text)."""
        return ANY_OBJECT if self.type == JSON_OBJECT else self.schema

    def to_wire(self) -> dict[str, str]:
        """For the request body a front sends a Serve replica (`wire.py`)."""
        return {"type": self.type, "schema": self.schema, "name": self.name, "field": self.field}

    @classmethod
    def from_wire(cls, body: Any, where: str = "response_format") -> ResponseFormat:
        if not isinstance(body, dict) or not all(isinstance(body.get(k, ""), str) for k in ("type", "schema", "name")):
            raise InvalidArgument.for_field(where, "must be an object {type, schema, name} of strings")
        return response_format(
            body.get("type", TEXT),
            body.get("schema", ""),
            body.get("name", ""),
            field=str(body.get("field") or f"{where}.schema"),
            type_field=f"{where}.type",
        )


def response_format(
    kind: str, schema: Any = "", name: str = "", *, field: str, type_field: str = "response_format.type"
) -> ResponseFormat:
    """A checked ResponseFormat: `schema` (JSON text or an already parsed object) must be a JSON object for
    `json_schema`, and a valid schema for the library (INVALID_ARGUMENT naming `field` otherwise).

    Cheap (no tokenizer involved): fronts call it while they parse a request, before any model loads.
    """
    if kind not in KINDS:
        raise InvalidArgument.for_field(type_field, f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != JSON_SCHEMA:
        if schema not in ("", None):
            raise InvalidArgument.for_field(field, f"is only read with type {JSON_SCHEMA}")
        return ResponseFormat(kind, "", name, field)
    if schema is None or isinstance(schema, str):
        if schema is None or not schema.strip():
            raise InvalidArgument.for_field(field, f"is required with type {JSON_SCHEMA}: a JSON schema object")
        if len(schema.encode()) > MAX_SCHEMA_BYTES:
            raise InvalidArgument.for_field(field, f"is over {MAX_SCHEMA_BYTES // 1024} KiB of JSON")
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidArgument.for_field(field, f"is not JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise InvalidArgument.for_field(field, f"must be a JSON schema object, got {type(schema).__name__}")
    text = json.dumps(schema, separators=(",", ":"))  # the schema's own key order: properties come out in it
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidArgument.for_field(field, f"is over {MAX_SCHEMA_BYTES // 1024} KiB of JSON")
    _grammar(text, field)  # refused here, before a model is loaded or a tokenizer prepared
    return ResponseFormat(kind, text, name, field)


def _grammar(schema: str, field: str) -> str:
    """The llguidance grammar of a JSON schema; INVALID_ARGUMENT naming `field` with the library's reason."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPILE_OPTIONS)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    except (ValueError, TypeError) as exc:
        failed, messages = True, [str(exc)]
    if failed:
        reason = " ".join(" ".join(messages).split()) or "unknown reason"
        raise InvalidArgument.for_field(field, f"cannot be enforced while decoding: {reason}")
    return grammar


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a reply, as the engine counts them (its `stop_ids`): EOS and `<|im_end|>`."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return tuple(sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id))


def _ll_tokenizer(tokenizer: Any, stop_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face tokenizer (blocking: ~1-3 s for a 152k vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FailedPrecondition(
            f"structured output needs a fast (tokenizers-backed) tokenizer; this model's is {type(tokenizer).__name__}"
        )
    if not stop_ids:
        raise FailedPrecondition("structured output needs the model's end-of-sequence token; its tokenizer has none")
    copied = copy.copy(backend)  # padding and truncation off, as llguidance expects, on a copy
    copied.no_padding()
    copied.no_truncation()
    return llguidance.LLTokenizer(copied.to_str(), n_vocab=len(tokenizer), eos_token=list(stop_ids))


#: Logit dtypes numpy can write into in place (bfloat16 is not one).
_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


class JsonConstraint:
    """One request's grammar state: the engine's TokenConstraint (see `engine.TokenConstraint`).

    The stop ids are allowed exactly where the JSON may end; `done` is True once nothing but them may
    follow. A matcher that enters an error state (a token it did not allow was forced on it) raises, so
    the engine fails that row instead of sending text that does not parse.
    """

    #: Bit positions 0..31 per device, for unpacking bitmasks there.
    _SHIFTS: dict[torch.device, torch.Tensor] = {}

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self._matcher = matcher
        self._vocab = vocab
        self._bits = torch.empty(((vocab + 31) // 32,), dtype=torch.int32)
        if torch.cuda.is_available():
            # pinned: the bitmask crosses to the GPU without blocking, so the mask's CPU work overlaps the step's
            # forward pass still running there (the step's one sync is reading its tokens); the next mask is
            # written only after that sync, so a copy in flight never reads a half-written buffer
            self._bits = self._bits.pin_memory()

    def mask(self, logits: torch.Tensor) -> None:
        matcher = self._matcher
        if matcher.is_error():
            raise RuntimeError(f"the output grammar failed: {matcher.get_error()}")
        matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        known = min(self._vocab, logits.shape[-1])
        if logits.device.type == "cpu":
            # in numpy, one thread: ~0.15 ms for 152k ids, where torch's threaded ops took milliseconds on a
            # busy 2-core machine (they wait for every core)
            allowed = np.unpackbits(self._bits.numpy().view(np.uint8), bitorder="little")[:known].view(np.bool_)
            if logits.dtype in _NUMPY_FLOATS:
                values = logits.numpy()
                values[:known][~allowed] = -np.inf
                values[known:] = -np.inf
                return
            forbidden = torch.from_numpy(~allowed)
        else:
            forbidden = self.forbidden_on(logits.device, known)
        logits[:known].masked_fill_(forbidden, float("-inf"))
        logits[known:] = float("-inf")  # ids past the tokenizer's (a model's padded embedding rows)

    def forbidden_on(self, device: torch.device, known: int) -> torch.Tensor:
        """The ids the last `mask` forbade, as a bool tensor on `device`: the bitmask (32 times smaller than
        the logits) crosses to the device and is unpacked there (on a GPU, no host pass over the vocabulary)."""
        shifts = self._SHIFTS.get(device)
        if shifts is None:
            shifts = self._SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
        bits = self._bits.to(device, non_blocking=self._bits.is_pinned())
        return ((bits.unsqueeze(-1) >> shifts) & 1).view(-1)[:known] == 0

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the output grammar refused token {token}: {self._matcher.get_error()}")

    def done(self) -> bool:
        return self._matcher.is_stopped()


class _Compiled:
    """A grammar built for one tokenizer: a pristine matcher that each request copies."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self.matcher = matcher
        self.vocab = vocab
        self.lock = threading.Lock()

    def constraint(self) -> JsonConstraint:
        with self.lock:
            return JsonConstraint(self.matcher.deep_copy(), self.vocab)


class GrammarCache:
    """Tokenizers' llguidance views and compiled grammars, each in a bounded LRU (thread-safe; blocking calls).

    Keys hold the tokenizer object itself (not its id, which a collected tokenizer's successor could reuse).
    """

    def __init__(self, max_grammars: int = 128, max_tokenizers: int = 4) -> None:
        self.max_grammars = max_grammars
        self.max_tokenizers = max_tokenizers
        self._tokenizers: OrderedDict[int, tuple[Any, tuple[int, ...], llguidance.LLTokenizer]] = OrderedDict()
        self._grammars: OrderedDict[tuple[int, tuple[int, ...], str], tuple[Any, _Compiled]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[int, threading.Lock] = {}

    def _tokenizer(self, tokenizer: Any, stop_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
        key = id(tokenizer)
        with self._lock:
            entry = self._tokenizers.get(key)
            if entry is not None and entry[0] is tokenizer and entry[1] == stop_ids:
                self._tokenizers.move_to_end(key)
                return entry[2]
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per tokenizer, however many requests wait for it
            with self._lock:
                entry = self._tokenizers.get(key)
                if entry is not None and entry[0] is tokenizer and entry[1] == stop_ids:
                    return entry[2]
            built = _ll_tokenizer(tokenizer, stop_ids)
            with self._lock:
                self._tokenizers[key] = (tokenizer, stop_ids, built)
                self._tokenizers.move_to_end(key)
                while len(self._tokenizers) > self.max_tokenizers:
                    self._tokenizers.popitem(last=False)
                self._building.pop(key, None)
            log.info("structured_output_tokenizer_ready", vocab=len(tokenizer))
            return built

    def constraint(self, fmt: ResponseFormat, tokenizer: Any, stop_ids: Iterable[int]) -> JsonConstraint:
        """A fresh constraint for one request (blocking: run it off the event loop)."""
        stops = tuple(sorted(stop_ids))
        schema = fmt.grammar_schema()
        key = (id(tokenizer), stops, schema)
        with self._lock:
            entry = self._grammars.get(key)
            if entry is not None and entry[0] is tokenizer:
                self._grammars.move_to_end(key)
                return entry[1].constraint()
        ll_tokenizer = self._tokenizer(tokenizer, stops)
        matcher = llguidance.LLMatcher(ll_tokenizer, _grammar(schema, fmt.field), log_level=0)
        if matcher.is_error():
            reason = " ".join(matcher.get_error().split())
            raise InvalidArgument.for_field(fmt.field, f"cannot be enforced while decoding: {reason}")
        compiled = _Compiled(matcher, ll_tokenizer.vocab_size)
        with self._lock:
            self._grammars[key] = (tokenizer, compiled)
            self._grammars.move_to_end(key)
            while len(self._grammars) > self.max_grammars:
                self._grammars.popitem(last=False)
        return compiled.constraint()


#: The process's cache: fronts and Serve replicas share it.
GRAMMARS = GrammarCache()
