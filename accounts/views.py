from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.forms import ProfileForm
from accounts.models import get_profile


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return redirect("account_login")


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    from datasets_app.models import Dataset
    from jobs.models import FINAL_STATES, TrainingJob

    jobs = TrainingJob.objects.filter(owner=request.user)
    datasets = Dataset.objects.filter(owner=request.user).defer("preview", "sample_index")
    context = {
        "recent_jobs": list(jobs.select_related("base_model").defer("hyperparameters", "metrics")[:5]),
        "active_jobs": jobs.exclude(status__in=FINAL_STATES).count(),
        "recent_datasets": list(datasets[:5]),
        "has_ready_dataset": datasets.filter(status=Dataset.Status.READY).exclude(train_file="").exists(),
    }
    return render(request, "accounts/dashboard.html", context)


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    profile = get_profile(request.user)
    form = ProfileForm(request.POST if request.method == "POST" else None, instance=profile)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Your settings are saved.")
        return redirect("profile")
    return render(request, "accounts/profile.html", {"form": form, "profile": profile})
