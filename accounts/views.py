from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.forms import HubTokenForm, ProfileForm
from accounts.models import HubToken, get_profile, save_hub_token


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
    return _settings_page(request, form, HubTokenForm())


def _settings_page(request: HttpRequest, form: ProfileForm, hub_form: HubTokenForm, status: int = 200):
    profile = get_profile(request.user)
    hub_token = HubToken.objects.filter(user=request.user).only("saved_at").first()
    context = {"form": form, "profile": profile, "hub_form": hub_form, "hub_token": hub_token}
    return render(request, "accounts/profile.html", context, status=status)


@login_required
@require_POST
def save_token(request: HttpRequest) -> HttpResponse:
    hub_form = HubTokenForm(request.POST)
    if not hub_form.is_valid():
        return _settings_page(request, ProfileForm(instance=get_profile(request.user)), hub_form, status=400)
    save_hub_token(request.user, hub_form.cleaned_data["token"])
    messages.success(
        request, "Your Hugging Face token is saved (encrypted). It is checked when you push a model."
    )
    return redirect("profile")


@login_required
@require_POST
def delete_token(request: HttpRequest) -> HttpResponse:
    HubToken.objects.filter(user=request.user).delete()
    messages.success(request, "Your Hugging Face token is removed.")
    return redirect("profile")
