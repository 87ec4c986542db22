"""The engine's incremental detokenizer: the text a reply streams is the text of its tokens, at O(1) per token."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from conftest import MODEL_CACHE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.inference.engine import Detokenizer
from tuneforge.models import ModelResolver


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    resolver = ModelResolver(MODEL_CACHE)
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


def _stream(tokenizer: Any, ids: list[int]) -> list[str]:
    """The reply's text after each of its tokens, as the engine reads it."""
    detokenizer = Detokenizer()
    return [detokenizer.step(tokenizer, ids[:end]) for end in range(1, len(ids) + 1)]


#: Letters, CJK, accents and emoji: characters whose UTF-8 bytes span several byte-level BPE tokens.
PIECES = [*"abc xyz.,\n", "é", "ß", "中", "文", "語", "🙂", "🚀", "👩\u200d💻", "ج", "अ"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_the_text_after_each_token_is_the_whole_decode_up_to_its_last_whole_character(
    tokenizer: Any, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    texts = _stream(tokenizer, ids)
    for end, streamed in enumerate(texts, start=1):  # wherever max_tokens or a stop cuts the reply
        assert streamed == tokenizer.decode(ids[:end], skip_special_tokens=True).rstrip("\ufffd")
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert (texts[-1] if texts else "") == text


def test_special_tokens_in_a_reply_are_left_out_as_a_whole_decode_leaves_them(tokenizer: Any) -> None:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*tokenizer.encode("Hello 中文", add_special_tokens=False), end, *tokenizer.encode(" 🙂 again")]
    assert _stream(tokenizer, ids)[-1] == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_long_reply_decodes_each_token_a_bounded_number_of_times(tokenizer: Any) -> None:
    """Re-decoding the whole reply at each step read n^2/2 ids for n tokens; the window reads a few per token."""
    ids = tokenizer.encode("the quick brown fox jumps over the lazy dog, 中文 and 🙂 " * 60, add_special_tokens=False)
    decoded: list[int] = []

    class Counting:
        def decode(self, window: list[int], skip_special_tokens: bool = True) -> str:
            decoded.append(len(window))
            return tokenizer.decode(window, skip_special_tokens=skip_special_tokens)

    assert len(ids) > 800
    assert _stream(Counting(), ids)[-1] == tokenizer.decode(ids)
    assert sum(decoded) < 8 * len(ids)  # a whole-reply decode per step would read over 300,000 ids here
