from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.forms import ProfileForm
from accounts.models import get_profile


def home(request: HttpRequest) -> HttpResponse:
    """Signed in: the dashboard. Signed out: a short page on what the product does, to sign up or in."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "landing.html")


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    profile = get_profile(request.user)
    form = ProfileForm(request.POST if request.method == "POST" else None, instance=profile)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Your settings are saved.")
        return redirect("profile")
    return render(request, "accounts/profile.html", {"form": form, "profile": profile})
