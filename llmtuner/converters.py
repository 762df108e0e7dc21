"""`<id:pk>`: a database id in a URL, refused (a 404) when no bigint column could hold it.

With `<int:...>` a path like /jobs/9223372036854775808/ reached the database and failed there
(SQLite overflows the driver, PostgreSQL the bigint): a 500 instead of the 404 any other
missing id gets. Every URLconf of ours imports this module and uses `<id:...>` for ids.
"""

from __future__ import annotations

from django.urls import register_converter

BIGINT_MAX = 2**63 - 1


class IdConverter:
    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        # Nineteen digits hold every bigint; a longer run of digits is never converted.
        if len(value) > len(str(BIGINT_MAX)) or int(value) > BIGINT_MAX:
            raise ValueError("beyond the largest id the database can hold")
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")
