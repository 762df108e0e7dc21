"""The dashboard: the user's recent jobs and datasets, and the next step to take.

It lives with jobs, which already builds on datasets, so that accounts depends on neither.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from datasets_app.models import Dataset
from jobs.models import FINAL_STATES, TrainingJob


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    jobs = TrainingJob.objects.filter(owner=request.user)
    datasets = Dataset.objects.filter(owner=request.user).defer("preview", "sample_index")
    context = {
        "recent_jobs": list(jobs.select_related("base_model").defer("hyperparameters", "metrics")[:5]),
        "active_jobs": jobs.exclude(status__in=FINAL_STATES).count(),
        "recent_datasets": list(datasets[:5]),
        "has_ready_dataset": datasets.filter(status=Dataset.Status.READY).exclude(train_file="").exists(),
    }
    return render(request, "jobs/dashboard.html", context)
