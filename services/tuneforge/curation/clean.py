"""Text normalization: Unicode NFC, invisible and control characters removed, stray whitespace
collapsed outside code. Fenced code blocks and texts that are whole JSON documents keep their
whitespace (indentation is meaning there).

Invisible format characters (Unicode category Cf) go, with two kinds of exception that carry
meaning: the zero-width joiner and non-joiner where they sit between letters or emoji (Persian and
Indic spelling, emoji ZWJ sequences such as a family), and the visible prepended concatenation
marks of Arabic, Syriac and Kaithi, and the format controls of Egyptian hieroglyphs and Duployan.
TAG characters (U+E0000 block), which can smuggle hidden text, always go.
"""

from __future__ import annotations

import json
import re
import unicodedata

ZWNJ, ZWJ = "\u200c", "\u200d"
# Every Cf character of Unicode 14 (see the module docstring for what is kept) but ZWNJ/ZWJ, which
# `_drop_stray_joiners` judges by their neighbours; C0/C1 controls other than tab and newline; the
# BMP private-use area.
_INVISIBLE = re.compile(
    "[\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]"
)
#: Cf characters that are kept: visible marks or script-specific layout controls.
KEPT_FORMAT_CHARACTERS = re.compile(
    "[\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3]"
)
_JOINERS = re.compile("[\u200c\u200d]")


def _joins(character: str) -> bool:
    """Letters, combining marks (incl. emoji variation selectors) and symbols (emoji, skin tones) join."""
    category = unicodedata.category(character)
    return category[0] in "LM" or category in ("So", "Sk")


def _drop_stray_joiners(text: str) -> str:
    """Keeps ZWNJ/ZWJ only between two characters that join; elsewhere they are invisible noise."""

    def keep(match: re.Match[str]) -> str:
        at = match.start()
        inside = 0 < at < len(text) - 1
        return match.group() if inside and _joins(text[at - 1]) and _joins(text[at + 1]) else ""

    return _JOINERS.sub(keep, text)


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
    """NFC, no invisible/control characters (joiners kept where they join), CRLF → LF, stray whitespace
    collapsed outside code."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _INVISIBLE.search(text):
        text = _INVISIBLE.sub("", text)
    if not text.isascii():
        if ZWNJ in text or ZWJ in text:
            text = _drop_stray_joiners(text)
        # after the removals: a mark they separated from its letter composes with it now
        text = unicodedata.normalize("NFC", text)
    if _is_json_document(text):
        return text.strip()
    if "```" in text:
        parts = _FENCE.split(text)
        text = "".join(part if part.startswith("```") else _collapse(part) for part in parts)
    else:
        text = _collapse(text)
    return text.strip()
