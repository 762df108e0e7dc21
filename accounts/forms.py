from __future__ import annotations

from django import forms

from accounts.models import Profile
from llmtuner.forms import ShortRefusalsMixin


class ProfileForm(ShortRefusalsMixin, forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["email_notifications"]


class HubTokenForm(ShortRefusalsMixin, forms.Form):
    """A Hugging Face write token: checked for shape here, for rights when a push uses it."""

    token = forms.CharField(
        label="Hugging Face write token",
        max_length=200,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=(
            "From huggingface.co/settings/tokens, with write access. "
            "It is stored encrypted and never shown again."
        ),
    )

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if len(token) < 8 or not token.isascii() or not token.isprintable() or " " in token:
            raise forms.ValidationError(
                "This does not look like a Hugging Face token: it should be one word of letters and digits, "
                "usually starting with hf_."
            )
        return token
