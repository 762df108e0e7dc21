"""The job page's "Push to the Hugging Face Hub" section: its form, and the pushes, polled while one runs."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from accounts.models import HubToken
from jobs import hub_push
from jobs.models import HubPush, TrainingJob
from llmtuner.forms import ShortRefusalsMixin

STOP_POLLING = 286
PUSHES_SHOWN = 5


class HubPushForm(ShortRefusalsMixin, forms.Form):
    repo_name = forms.CharField(
        label="Repository",
        max_length=200,
        help_text="NAME (under your account) or NAMESPACE/NAME (an organisation you can write to).",
    )
    private = forms.BooleanField(label="Private repository", required=False, initial=True)


def _job(request: HttpRequest, pk: int) -> TrainingJob:
    return get_object_or_404(TrainingJob.objects.select_related("base_model"), pk=pk, owner=request.user)


def _section(
    request: HttpRequest, job: TrainingJob, form: HubPushForm | None = None, error: str = ""
) -> HttpResponse:
    pushes = list(HubPush.objects.filter(job=job)[:PUSHES_SHOWN])
    pushing = any(not push.is_final for push in pushes)
    context = {
        "job": job,
        "form": form or HubPushForm(initial={"repo_name": hub_push.default_repo_name(job), "private": True}),
        "error": error,
        "pushes": pushes,
        "pushing": pushing,
        "has_token": HubToken.objects.filter(user_id=job.owner_id).exists(),
        "unavailable": hub_push.unavailable_reason(job),
    }
    response = render(request, "jobs/_hub_push.html", context)
    if request.method == "GET" and request.htmx and not pushing and request.GET.get("poll"):
        response.status_code = STOP_POLLING
    return response


@login_required
@require_safe
def hub_section(request: HttpRequest, pk: int) -> HttpResponse:
    return _section(request, _job(request, pk))


@login_required
@require_POST
def push(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job(request, pk)
    form = HubPushForm(request.POST)
    error = ""
    if form.is_valid():
        try:
            hub_push.request_push(job, form.cleaned_data["repo_name"], form.cleaned_data["private"])
        except hub_push.PushRefused as refused:
            error = str(refused)
        else:
            form = None
    else:
        error = next(iter(form.errors.values()))[0]
    if request.htmx:
        return _section(request, job, form, error)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, "The push to the Hub is queued: this page shows when it is done.")
    return redirect(job)
