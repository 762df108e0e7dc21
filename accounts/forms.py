from __future__ import annotations

from django import forms

from accounts.models import Profile
from llmtuner.forms import ShortRefusalsMixin


class ProfileForm(ShortRefusalsMixin, forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["email_notifications"]
