"""PII scrubbing: emails, phone numbers (incl. +86 mobiles), Chinese resident ID numbers (ISO 7064
MOD 11-2 checksum and a real birth date), bank card numbers (Luhn), IPv4/IPv6 addresses.

Each match is replaced by a typed placeholder such as `[EMAIL]` and counted per type. Look-alikes
that fail their checksum (a random 18-digit number, a 16-digit order id that fails Luhn) are left
alone. JSON texts are scrubbed value by value and re-serialized, so a JSON answer stays valid JSON
even when a number in it was a phone number.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from datetime import date
from typing import Any

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "cn_id": "[CN_ID]",
    "bank_card": "[BANK_CARD]",
    "phone": "[PHONE]",
    "ip": "[IP]",
}

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b")
CN_ID = re.compile(r"(?<!\d)[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z])")
CARD = re.compile(r"(?<![0-9A-Za-z+-])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z-])")
CN_MOBILE = re.compile(r"(?<!\d)(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")
INTL_PHONE = re.compile(r"(?<![\w+])\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d{1,4}(?:[ -]?\d{2,4}){2,4}(?!\d)")
NANP_PHONE = re.compile(r"(?<!\d)\(\d{3}\)[ ]?\d{3}-\d{4}(?!\d)|(?<![\d-])\d{3}-\d{3}-\d{4}(?![\d-])")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(number: str) -> bool:
    """A PRC resident identity number: 17 digits, a birth date that exists, ISO 7064 MOD 11-2 check."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum bank cards carry."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _valid_card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_ipv6(text: str) -> bool:
    return text.count(":") >= 2 and any(c.isdigit() or c.isalpha() for c in text) and _valid_ip(text)


#: Order matters: the most specific patterns first, so an ID number is not taken for a card or phone.
_RULES: tuple[tuple[str, re.Pattern[str], Any], ...] = (
    ("email", EMAIL, None),
    ("cn_id", CN_ID, valid_cn_id),
    ("phone", CN_MOBILE, None),
    ("phone", INTL_PHONE, None),
    ("bank_card", CARD, _valid_card),
    ("phone", NANP_PHONE, None),
    ("ip", IPV4, _valid_ip),
    ("ip", IPV6, _valid_ipv6),
)
_QUICK_CHECK = re.compile(r"[@:0-9]")  # every PII pattern needs one of these; a class scans fastest


def scrub_text(text: str, counts: Counter[str]) -> str:
    """`text` with every PII match replaced by its placeholder; `counts` gains one per replacement."""
    if not _QUICK_CHECK.search(text):  # no @, colon or digit: nothing can match
        return text
    for kind, pattern, validator in _RULES:
        placeholder = PLACEHOLDERS[kind]

        def replace(match: re.Match[str], kind: str = kind, validator: Any = validator, p: str = placeholder) -> str:
            if validator is not None and not validator(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return p

        text = pattern.sub(replace, text)
    return text


def _scrub_value(value: Any, counts: Counter[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, counts)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        scrubbed = scrub_text(str(value), counts)
        return value if scrubbed == str(value) else scrubbed  # a phone number stored as a number
    if isinstance(value, list):
        return [_scrub_value(item, counts) for item in value]
    if isinstance(value, dict):
        return {scrub_text(key, counts): _scrub_value(item, counts) for key, item in value.items()}
    return value


def scrub_content(text: str, counts: Counter[str]) -> str:
    """Scrubs a message; JSON objects/arrays are scrubbed per value and stay valid JSON."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and _QUICK_CHECK.search(text):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, (dict, list)):
            before = counts.total()
            scrubbed = _scrub_value(parsed, counts)
            if counts.total() == before:
                return text
            return json.dumps(scrubbed, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return scrub_text(text, counts)
