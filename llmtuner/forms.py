"""What every form of the site shares: a refused value is never sent back whole."""

from __future__ import annotations

from typing import Any

from django import forms

from training_scripts.hyperparameters import shorten

# A refused value longer than this, in a field with no max_length, comes back as an empty input.
LONGEST_SHOWN_INPUT = 1000


def shown_input(field: forms.Field, value: str) -> str:
    """`value` as the input shows it again: cut to what the field (or its input) takes, or empty when
    far too long."""
    max_length = getattr(field, "max_length", None) or field.widget.attrs.get("maxlength")
    if max_length:
        return value[: int(max_length)]
    return value if len(value) <= LONGEST_SHOWN_INPUT else ""


class ShortRefusalsMixin:
    """A form whose errors quote a long value by its first characters and its length, and whose
    inputs show an over-long value cut, so a refused megabyte is not echoed back (three times)."""

    _cleaning = False

    def full_clean(self) -> None:
        self._cleaning = True
        try:
            super().full_clean()
        finally:
            self._cleaning = False
        self._shorten_refusals()

    def add_error(self, field: str | None, error: Any) -> None:
        super().add_error(field, error)
        # Inputs are cut only once every field is judged: a cut value must never be judged instead.
        if not self._cleaning:
            self._shorten_refusals()

    def _shorten_refusals(self) -> None:
        if self.is_bound and self._errors:
            self._shorten_quoted_values()
            self._cut_long_inputs()

    def _shorten_quoted_values(self) -> None:
        # Django's own messages quote the value ("Select a valid choice. %(value)s is not ...").
        for errors in self._errors.values():
            for error in errors.as_data():
                value = (error.params or {}).get("value")
                if isinstance(value, str):
                    error.params["value"] = shorten(value)

    def _cut_long_inputs(self) -> None:
        cut = {}
        for name, field in self.fields.items():
            key = self.add_prefix(name)
            value = self.data.get(key)
            if isinstance(value, str) and shown_input(field, value) != value:
                cut[key] = shown_input(field, value)
        if cut:
            self.data = self.data.copy()
            for key, value in cut.items():
                self.data[key] = value
