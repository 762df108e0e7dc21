from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from jobs.models import TrainingJob


def _get_job_for_user(request: HttpRequest, pk: int) -> TrainingJob:
    jobs = TrainingJob.objects.select_related("base_model", "dataset", "instance_type")
    return get_object_or_404(jobs, pk=pk, owner=request.user)


@login_required
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    return render(request, "jobs/detail.html", {"job": job})
