"""Rendering conversations with the base model's own chat template, as token ids with a loss mask.

Shared by curation (training data) and inference (prompts), so a model sees at serving time exactly
the token layout it was trained on.

Two guarantees:

- **The template is the tokenizer's own** (`apply_chat_template`), never hand-written markers. It is
  rendered with sentinel strings in place of message contents; since the result then depends only on
  the sequence of roles, it is cached per role pattern and jinja runs once per pattern, not per record.
- **Data cannot forge control tokens.** Template text is tokenized with special tokens recognised;
  message contents are tokenized with `split_special_tokens=True`, so a literal `<|im_end|>` in a
  user's text becomes ordinary characters, never the end-of-turn token.

The loss mask covers assistant contents plus the end-of-turn token the template puts right after
each of them (the model must learn to stop), unless `train_on_prompt` asks for every token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_SENTINEL = "\ue000{}\ue001"  # private-use code points: never produced by the cleaning step
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class RenderedConversation:
    """A conversation as training consumes it."""

    input_ids: list[int]
    loss_mask: list[bool]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


class ChatRenderer:
    """Renders batches of conversations (lists of `{"role", "content"}`) for one tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pick an instruct/chat model")
        self.tokenizer = tokenizer
        self.end_of_turn_ids = {
            i
            for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i != tokenizer.unk_token_id
        }
        self._layouts: dict[tuple[tuple[str, ...], bool], list[str | int]] = {}
        self._template_ids: dict[str, list[int]] = {}
        self._content_backend = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_special_tokens"):
            # A private copy that reads special-token strings as plain text (the shared one must not change).
            from tokenizers import Tokenizer

            self._content_backend = Tokenizer.from_str(backend.to_str())
            self._content_backend.encode_special_tokens = True

    def _layout(self, roles: tuple[str, ...], add_generation_prompt: bool) -> list[str | int]:
        """Template text pieces (str) and message indices (int) for this role pattern."""
        key = (roles, add_generation_prompt)
        layout = self._layouts.get(key)
        if layout is None:
            placeholders = [{"role": role, "content": _SENTINEL.format(i)} for i, role in enumerate(roles)]
            text = self.tokenizer.apply_chat_template(
                placeholders, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            layout = []
            position = 0
            for match in _SENTINEL_RE.finditer(text):
                if match.start() > position:
                    layout.append(text[position : match.start()])
                layout.append(int(match.group(1)))
                position = match.end()
            if position < len(text):
                layout.append(text[position:])
            if sorted(p for p in layout if isinstance(p, int)) != list(range(len(roles))):
                raise ValueError(f"the chat template drops or repeats message contents for roles {roles}")
            self._layouts[key] = layout
        return layout

    def _template_piece_ids(self, piece: str) -> list[int]:
        ids = self._template_ids.get(piece)
        if ids is None:
            ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            self._template_ids[piece] = ids
        return ids

    def _encode_contents(self, contents: list[str]) -> list[list[int]]:
        if self._content_backend is not None:
            return [e.ids for e in self._content_backend.encode_batch_fast(contents, add_special_tokens=False)]
        return self.tokenizer(contents, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def render_batch(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        *,
        train_on_prompt: bool = False,
        add_generation_prompt: bool = False,
    ) -> list[RenderedConversation]:
        """Token ids and loss masks of each conversation (contents tokenized in one batch call)."""
        layouts = [self._layout(tuple(m["role"] for m in c), add_generation_prompt) for c in conversations]
        contents = [m["content"] for c in conversations for m in c]
        content_ids = self._encode_contents(contents) if contents else []
        rendered = []
        offset = 0
        for conversation, layout in zip(conversations, layouts, strict=True):
            ids: list[int] = []
            mask: list[bool] = []
            after_assistant = False
            for piece in layout:
                if isinstance(piece, int):
                    piece_ids = content_ids[offset + piece]
                    is_assistant = conversation[piece]["role"] == "assistant"
                    ids += piece_ids
                    mask += [train_on_prompt or is_assistant] * len(piece_ids)
                    after_assistant = is_assistant
                    continue
                piece_ids = self._template_piece_ids(piece)
                ids += piece_ids
                trained = [train_on_prompt] * len(piece_ids)
                if after_assistant:
                    # the end-of-turn token that closes an assistant message is part of its answer
                    for index, token in enumerate(piece_ids):
                        if token in self.end_of_turn_ids:
                            trained[: index + 1] = [True] * (index + 1)
                            break
                        if not piece[: index + 1].isspace():
                            break
                mask += trained
                after_assistant = False
            offset += len(conversation)
            rendered.append(RenderedConversation(ids, mask))
        return rendered

    def render(self, messages: Sequence[dict[str, str]], **options: bool) -> RenderedConversation:
        """One conversation; see `render_batch`."""
        return self.render_batch([messages], **options)[0]
