"""The playground pages: a prompt box for a completed job and its earlier runs, polled while they run."""

from __future__ import annotations

import math

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from jobs.models import PlaygroundRun, TrainingJob
from jobs.playground import runs
from llmtuner.forms import ShortRefusalsMixin

STOP_POLLING = 286  # htmx stops an `every 2s` trigger on this status
RUNS_SHOWN = 50


class PlaygroundForm(ShortRefusalsMixin, forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "Write a prompt…"}),
        strip=False,  # a trailing space changes what a completion model writes next
        error_messages={"required": "Write a prompt first."},
    )
    max_new_tokens = forms.IntegerField(
        label="Max new tokens",
        initial=64,
        help_text=f"1 to {runs.MAX_NEW_TOKENS}",
        widget=forms.NumberInput(attrs={"min": 1, "max": runs.MAX_NEW_TOKENS, "step": 1}),
        error_messages={
            "required": "Max new tokens is required.",
            "invalid": "Max new tokens must be a whole number.",
        },
    )
    temperature = forms.FloatField(
        initial=0.7,
        help_text=f"0 to {runs.MAX_TEMPERATURE:g}; 0 always picks the likeliest token",
        widget=forms.NumberInput(attrs={"min": 0, "max": runs.MAX_TEMPERATURE, "step": 0.05}),
        error_messages={"required": "Temperature is required.", "invalid": "Temperature must be a number."},
    )
    top_p = forms.FloatField(
        label="Top-p",
        initial=0.95,
        help_text="Above 0, up to 1; ignored when the temperature is 0",
        widget=forms.NumberInput(attrs={"min": 0.01, "max": 1, "step": 0.01}),
        error_messages={"required": "Top-p is required.", "invalid": "Top-p must be a number."},
    )

    blind = forms.BooleanField(
        label="Blind",
        required=False,
        help_text="Show the answers as A and B in a random order until you pick the better one",
    )

    against = forms.TypedChoiceField(
        label="Compare with",
        coerce=int,
        empty_value=None,
        required=False,
        help_text="The base model, or another of your completed jobs trained on the same dataset",
    )

    def __init__(self, *args, rivals=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rivals = {job.pk: job for job in rivals}
        self.fields["against"].choices = [("", "The base model")] + [
            (job.pk, f"{job.name} (job {job.pk}, {job.base_model.name})") for job in rivals
        ]
        if not rivals:
            del self.fields["against"]
        # The limit is read per form, not at import, so a changed setting applies at once.
        self.fields["prompt"].widget.attrs["maxlength"] = settings.PLAYGROUND_MAX_PROMPT_CHARS

    def clean_prompt(self) -> str:
        # Counted after the CRLF the browser sends becomes one line break, as the browser counts it.
        prompt = self.cleaned_data["prompt"].replace("\r\n", "\n")
        if not prompt.strip():
            raise forms.ValidationError("Write a prompt first.")
        limit = settings.PLAYGROUND_MAX_PROMPT_CHARS
        if len(prompt) > limit:
            raise forms.ValidationError(
                f"The prompt can be at most {limit:,} characters; this one has {len(prompt):,}."
            )
        return prompt

    def clean_max_new_tokens(self) -> int:
        value = self.cleaned_data["max_new_tokens"]
        if not 1 <= value <= runs.MAX_NEW_TOKENS:
            raise forms.ValidationError(f"Max new tokens must be between 1 and {runs.MAX_NEW_TOKENS}.")
        return value

    def clean_temperature(self) -> float:
        value = self.cleaned_data["temperature"]
        if not (math.isfinite(value) and 0 <= value <= runs.MAX_TEMPERATURE):
            raise forms.ValidationError(
                f"Temperature must be between 0 and {runs.MAX_TEMPERATURE:g} (0 means greedy)."
            )
        return value

    def clean_against(self):
        pk = self.cleaned_data.get("against")
        return self.rivals.get(pk) if pk else None

    def clean_top_p(self) -> float:
        value = self.cleaned_data["top_p"]
        if not (math.isfinite(value) and 0 < value <= 1):
            raise forms.ValidationError("Top-p must be above 0 and at most 1.")
        return value


def _get_job_for_user(request: HttpRequest, pk: int) -> TrainingJob:
    jobs = TrainingJob.objects.select_related("base_model", "dataset")
    return get_object_or_404(jobs, pk=pk, owner=request.user)


def _get_run_for_user(request: HttpRequest, pk: int, run_pk: int) -> PlaygroundRun:
    queryset = PlaygroundRun.objects.select_related("job", "job__base_model")
    return get_object_or_404(queryset, pk=run_pk, job_id=pk, job__owner=request.user)


def _context(job: TrainingJob, form: PlaygroundForm) -> dict:
    recent = list(job.playground_runs.all()[: RUNS_SHOWN + 1])
    return {
        "job": job,
        "form": form,
        "runs": recent[:RUNS_SHOWN],
        "more_runs": len(recent) > RUNS_SHOWN,
        "unavailable_reason": runs.unavailable_reason(job),
        "scratch": runs.is_scratch(job),
        "base_id": runs.base_model_id(job),
        "chat": runs.is_chat(job),
        "tally": runs.vote_tally(job),
    }


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def playground_page(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    rivals = list(runs.rival_jobs(job))
    if request.method != "POST":  # GET or HEAD: the page
        return render(request, "jobs/playground.html", _context(job, PlaygroundForm(rivals=rivals)))
    form = PlaygroundForm(request.POST, rivals=rivals)
    status, retry_after = 400, None
    if form.is_valid():
        try:
            data = dict(form.cleaned_data)
            runs.submit_prompt(job, rival=data.pop("against", None), **data)
        except runs.PlaygroundUnavailable as error:
            form.add_error(None, str(error))
        except runs.TooManyPrompts as error:
            form.add_error(None, str(error))
            status, retry_after = 429, error.retry_after
        else:
            if not request.htmx:
                return redirect("jobs:playground", pk=job.pk)
            # The same settings stay in the box, ready for the next try.
            initial = {**form.cleaned_data, "against": getattr(form.cleaned_data.get("against"), "pk", None)}
            form = PlaygroundForm(initial=initial, rivals=rivals)
            return render(request, "jobs/playground.html#playground", _context(job, form))
    if request.htmx:  # htmx 2 swaps only 2xx responses
        return render(request, "jobs/playground.html#playground", _context(job, form))
    response = render(request, "jobs/playground.html", _context(job, form), status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


@login_required
@require_safe
def playground_run(request: HttpRequest, pk: int, run_pk: int) -> HttpResponse:
    """One run's row, polled while it waits or generates; reads that row only."""
    run = _get_run_for_user(request, pk, run_pk)
    response = render(request, "jobs/playground.html#run", {"run": run})
    if run.is_final and request.htmx:
        response.status_code = STOP_POLLING
    return response


@login_required
@require_POST
def vote(request: HttpRequest, pk: int, run_pk: int) -> HttpResponse:
    """The owner's pick of a blind run: A, B or a tie; the answers are then labelled."""
    run = _get_run_for_user(request, pk, run_pk)
    error = ""
    try:
        runs.cast_vote(run, request.POST.get("choice", ""))
    except runs.VoteRefused as refused:
        error = str(refused)
    run.refresh_from_db()
    if not request.htmx:
        return redirect("jobs:playground", pk=pk)
    response = render(request, "jobs/playground.html#run", {"run": run, "vote_error": error})
    # The win rate above the runs follows the vote, swapped in out of band.
    votes = {
        "job": run.job,
        "tally": runs.vote_tally(run.job),
        "scratch": runs.is_scratch(run.job),
        "oob": True,
    }
    response.write(render_to_string("jobs/_playground_votes.html", votes, request=request))
    return response


@login_required
@require_safe
def preference_export(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    """The decided blind votes as prompt/chosen/rejected JSONL, a file the datasets page accepts."""
    job = _get_job_for_user(request, pk)
    response = StreamingHttpResponse(
        runs.preference_lines(job), content_type="application/x-ndjson; charset=utf-8"
    )
    name = slugify(job.name) or f"job-{job.pk}"
    response["Content-Disposition"] = f'attachment; filename="{name}-preferences.jsonl"'
    return response
