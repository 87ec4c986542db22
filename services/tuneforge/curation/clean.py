"""Text normalization: Unicode NFC, invisible and control characters removed, stray whitespace
collapsed outside code. Fenced code blocks and texts that are whole JSON documents keep their
whitespace (indentation is meaning there)."""

from __future__ import annotations

import json
import re
import unicodedata

# Zero-width characters, bidi controls (the "Trojan Source" set), BOM, soft hyphen, and C0/C1
# controls other than tab and newline.
_INVISIBLE = re.compile(
    "[\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069"
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]"
)
_FENCE = re.compile(r"(```.*?(?:```|\Z))", re.DOTALL)
_INNER_SPACES = re.compile(r"(?<=\S)[ \t\u00a0\u3000]{2,}")
_TRAILING_SPACES = re.compile(r"[ \t\u00a0\u3000]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def _collapse(prose: str) -> str:
    # substring checks first: most texts need none of the three rewrites, and `in` is far cheaper than `sub`
    if "\n" in prose:
        prose = _TRAILING_SPACES.sub("\n", prose)
        if "\n\n\n" in prose:
            prose = _BLANK_LINES.sub("\n\n", prose)
    if "  " in prose or "\t" in prose or "\u00a0" in prose or "\u3000" in prose:
        prose = _INNER_SPACES.sub(" ", prose)
    return prose


def _is_json_document(text: str) -> bool:
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


def clean_text(text: str) -> str:
    """NFC, no invisible/control characters, CRLF → LF, stray whitespace collapsed outside code."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if _INVISIBLE.search(text):
        text = _INVISIBLE.sub("", text)
    if _is_json_document(text):
        return text.strip()
    if "```" in text:
        parts = _FENCE.split(text)
        text = "".join(part if part.startswith("```") else _collapse(part) for part in parts)
    else:
        text = _collapse(text)
    return text.strip()
