"""What a user query stores of its user: a keyed hash of the user id, the text with e-mail addresses and phone numbers masked."""

from __future__ import annotations

import hashlib
import hmac
import re

from ..settings import QUERY_SECRET_ENV

__all__ = ["EMAIL_MASK", "PHONE_MASK", "mask_query", "user_key"]

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"


def user_key(user_id: str, secret: str) -> str:
    """The user id as stored: HMAC-SHA256 of it under *secret*, in hex. The same user gets
    the same key (so that a user's history can be listed); without the secret, a key cannot
    be traced back to its user, not even by hashing every likely user id."""
    if not secret:
        raise ValueError(
            f"CHECKPOINT_QUERY_SECRET ({secret!r}) must be set to store user ids: they are kept only "
            f"as a keyed hash. Set it, or the environment variable {QUERY_SECRET_ENV}, to a long "
            "random string, e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")

# Something that may be a phone number: digits, maybe after + or 00, in groups parted by one
# space, dash or dot, the first maybe in parentheses. Not part of a word, a price ($49.99,
# 1,299), a size (32x34) or a model number (WH-1000XM4).
_CANDIDATE = re.compile(
    r"(?<![\w$€£¥₹,./#-])"
    r"(?:\+\s?|\(\+?)?\d+\)?"
    r"(?:(?:[ .-]|\s?\(|\)\s?)\d+\)?)*"
    r"(?![\w%$€£¥₹]|[.,]\d)"
)
_GROUP = re.compile(r"\d+")
# Dates are not phone numbers: 2024-05-01, 01.05.2024.
_DATE = re.compile(r"\d{4}([ .-])\d{1,2}\1\d{1,2}|\d{1,2}([ .-])\d{1,2}\2\d{2,4}")
# A number grouped by thousands: 1 500 000, 10.000.000 (not 612 345 678, a Spanish mobile).
_THOUSANDS = re.compile(r"[1-9]\d?([ .])\d{3}(?:\1\d{3})*")
# Words that say what follows is a phone number, or a product code.
_PHONE_WORDS = {"call", "phone", "tel", "telephone", "mobile", "cell", "whatsapp", "text", "sms", "fax", "ring"}
_CODE_WORDS = {"isbn", "upc", "ean", "gtin", "sku", "mpn", "asin", "model", "part", "ref", "item", "no", "#"}
_WORD_BEFORE = re.compile(r"([^\W\d]+|#)\W*$")


def _is_phone(number: str, before: str) -> bool:
    groups = _GROUP.findall(number)
    digits = sum(len(g) for g in groups)
    if not 7 <= digits <= 15:
        return False
    word = _WORD_BEFORE.search(before)
    word = word.group(1).lower() if word else ""
    if word in _CODE_WORDS:
        return False
    if word in _PHONE_WORDS or number.startswith(("+", "(+", "00")) or "(" in number:
        return True
    if _DATE.fullmatch(number) or _THOUSANDS.fullmatch(number) or set(groups[1:]) == {"000"}:
        return False  # a date, or a round amount: 100 000 000
    if len(groups) == 1:
        return digits >= 10  # 5551234567; a shorter run is a number
    first, last = groups[0], groups[-1]
    if first.startswith("0"):
        return digits >= 9  # a trunk prefix: 07700 900123, 06 12 34 56 78
    if len(groups) == 2:
        return digits >= 10  # 1000-2000 is a range
    return 2 <= len(first) <= 4 and len(last) >= 3  # 555-123-4567; not sizes: 38 39 40 41


def mask_query(text: str) -> str:
    """*text* with e-mail addresses replaced by ``[email]`` and phone numbers (national or
    international, grouped by spaces, dashes, dots or parentheses) by ``[phone]``. Prices,
    sizes, years and model numbers stay: "iphone 15 under $49.99, size 10, 32x34, 2024"."""
    text = _EMAIL.sub(EMAIL_MASK, text)
    parts: list[str] = []
    end = 0
    for match in _CANDIDATE.finditer(text):
        number = match.group().rstrip(" .-")
        start = match.start()
        if _is_phone(number, text[:start]):
            parts += [text[end:start], PHONE_MASK]
            end = start + len(number)
    return "".join(parts) + text[end:]
