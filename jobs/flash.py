"""Flash messages on a job page hold for the status they were given in ("Stopping “x”.", "“x” is queued.").

The job page's status card sends the status it shows with each poll (`?shown=`); when the job's
status has moved on, the poll's answer also empties the page's messages (out of band), so a
message never contradicts the card beside it.
"""

from __future__ import annotations

from django import forms

from jobs.models import JobStatus


class ShownStatusForm(forms.Form):
    """?shown= of the job page's status poll: the status its card showed."""

    shown = forms.ChoiceField(choices=JobStatus.choices, required=False)


def messages_expired(query, status: str) -> bool:
    """Whether the card showed another status than the job's now (the page's messages no longer hold)."""
    form = ShownStatusForm(query)
    shown = form.cleaned_data.get("shown") if form.is_valid() else ""
    return bool(shown) and shown != status
