"""Validators shared by the apps' forms."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

# C0 and C1 controls (line breaks, tabs, escape sequences, bells) and the bidirectional overrides
# and isolates that make a name read differently from what it is. Zero-width joiners stay:
# emoji sequences need them.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def no_control_characters(value: str) -> None:
    """A name is one line of plain text: it goes into page titles, email subjects and log lines."""
    if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
        raise ValidationError(
            "A name cannot contain line breaks, tabs or other control characters.", code="control_characters"
        )


def one_line(value: str) -> str:
    """`value` with every control character turned into a space, for a header or a log line."""
    return " ".join(CONTROL_CHARACTERS.sub(" ", value).split())
