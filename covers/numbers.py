"""Numbers in form fields: plain ASCII decimals only.

Python's ``float()`` and ``int()`` (behind DRF's FloatField / IntegerField) accept much more than
a client means to send: ``"1_0"`` (10), Arabic-Indic and other Unicode digits (``"١٠"``), padding
(``" 5\\n"``), ``"nan"``, ``"inf"``, exponents (``"1e1"``) and, through ``float.fromhex`` elsewhere, hex.
These fields take an optional sign, ASCII digits and (for decimals) one decimal point, nothing else;
anything else is a 400 naming the field."""
from __future__ import annotations

import math
import re

from rest_framework import serializers

DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
INTEGER = re.compile(r"[+-]?[0-9]+\Z")
MAX_CHARS = 32


def _plain(data, pattern: re.Pattern) -> bool:
    if isinstance(data, bool):
        return False
    if isinstance(data, int):
        return True
    if isinstance(data, float):
        return math.isfinite(data) and pattern is DECIMAL
    return isinstance(data, str) and len(data) <= MAX_CHARS and pattern.match(data) is not None


class PlainFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "A plain decimal number is required: ASCII digits, an optional sign and "
                                         "decimal point (no spaces, underscores, exponents, hex, nan or inf)."}

    def to_internal_value(self, data):
        if not _plain(data, DECIMAL):
            self.fail("invalid")
        return super().to_internal_value(data)


class PlainIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "A whole number is required: ASCII digits and an optional sign "
                                         "(no spaces, underscores, decimals, exponents or hex)."}

    def to_internal_value(self, data):
        if not _plain(data, INTEGER):
            self.fail("invalid")
        return super().to_internal_value(data)


def plain_whole_number(value: str) -> int | None:
    """``value`` as an int when it is ASCII digits only (no sign), else None."""
    return int(value) if isinstance(value, str) and len(value) <= MAX_CHARS and re.fullmatch(r"[0-9]+", value) \
        else None
