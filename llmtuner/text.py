"""Text kept from outside (uploads, a script's output, a model's answer) as a database can store it."""

from __future__ import annotations

import re
from typing import Any

# Text that cannot be stored: NUL (binary data) and lone UTF-16 surrogates, which a JSON file can
# spell as \u0000 or \ud800 escapes and which neither UTF-8 nor PostgreSQL accept.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """`value` with NUL and lone surrogates replaced by U+FFFD in every string, keys included.

    For text that is kept rather than refused: a file's stats and first look, a script's output,
    a model's answer (a byte-level tokenizer can decode a NUL).
    """
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
