from __future__ import annotations

from django import forms
from django.template.defaultfilters import filesizeformat

from datasets_app import quota
from datasets_app.actions import ReadOptions
from datasets_app.mapping import MappingError, parse_mapping
from datasets_app.models import Dataset
from llmtuner.forms import ShortRefusalsMixin
from llmtuner.validators import no_control_characters

MAPPING_HELP = (
    "Leave empty to choose automatically. Or: all-columns · text:COLUMN · "
    "prompt:COLUMN,completion:COLUMN · template:{Column} in {Year}: {Value} · messages"
)


class ReadOptionsForm(ShortRefusalsMixin, forms.Form):
    """How to read the file; shared by the upload form and the dataset page."""

    format = forms.ChoiceField(choices=Dataset.Format.choices, initial=Dataset.Format.AUTO)
    txt_mode = forms.ChoiceField(
        label="Plain text", choices=Dataset.TxtMode.choices, initial=Dataset.TxtMode.LINE, required=False
    )
    mapping = forms.CharField(
        label="Column mapping",
        required=False,
        max_length=2000,
        help_text=MAPPING_HELP,
        widget=forms.TextInput(attrs={"placeholder": "automatic", "spellcheck": "false"}),
    )
    validation_percent = forms.FloatField(
        label="Held out for validation (%)",
        min_value=0,
        max_value=50,
        initial=5,
        widget=forms.NumberInput(attrs={"step": "0.5"}),
    )

    def clean_mapping(self) -> str:
        mapping = self.cleaned_data.get("mapping", "").strip()
        try:
            parse_mapping(mapping)
        except MappingError as exc:
            raise forms.ValidationError(str(exc)) from None
        return mapping

    def read_options(self) -> ReadOptions:
        data = self.cleaned_data
        return ReadOptions(
            format=data["format"],
            txt_mode=data.get("txt_mode") or Dataset.TxtMode.LINE,
            mapping=data["mapping"],
            validation_fraction=round(data["validation_percent"] / 100, 4),
        )

    @classmethod
    def for_dataset(cls, dataset: Dataset, data=None) -> ReadOptionsForm:
        return cls(
            data,
            initial={
                "format": dataset.format,
                "txt_mode": dataset.txt_mode,
                "mapping": dataset.mapping,
                "validation_percent": round(dataset.validation_fraction * 100, 2),
            },
        )


class UploadForm(ReadOptionsForm):
    file = forms.FileField(label="File", allow_empty_file=True)
    name = forms.CharField(
        required=False,
        max_length=200,
        help_text="Defaults to the file's name.",
        validators=[no_control_characters],
    )

    field_order = ["file", "name", "format", "txt_mode", "mapping", "validation_percent"]

    def __init__(
        self,
        *args,
        max_bytes: int,
        usage: quota.StorageUsage | None = None,
        too_large: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.max_bytes = max_bytes
        self.usage = usage
        self.too_large = too_large
        self.fields["file"].widget.attrs.update({"data-max-bytes": str(max_bytes)})

    def limit_message(self) -> str:
        if self.usage is not None and self.usage.left < self.max_bytes:
            # The upload was stopped at what is left of the quota, before the upload limit.
            return quota.upload_refusal(self.usage)
        return f"The file is larger than {filesizeformat(self.max_bytes)}, the limit for one upload."

    def clean_file(self):
        upload = self.cleaned_data.get("file")
        if upload is not None and upload.size > self.max_bytes:
            raise forms.ValidationError(self.limit_message())
        if upload is not None and upload.size == 0:
            raise forms.ValidationError("The file is empty.")
        return upload

    def clean(self):
        if self.too_large:
            self.errors.pop("file", None)
            self.add_error("file", self.limit_message())
        return super().clean()


class RenameForm(ShortRefusalsMixin, forms.Form):
    name = forms.CharField(max_length=200, validators=[no_control_characters])

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("A name cannot be blank.")
        return name


class SamplesQueryForm(forms.Form):
    split = forms.ChoiceField(choices=[("train", "Training"), ("validation", "Validation")], required=False)
    page = forms.IntegerField(min_value=1, max_value=10_000_000, required=False)

    def query(self) -> tuple[str, int]:
        """The split and page asked for, or the first page of the training samples."""
        if not self.is_valid():
            return "train", 1
        return self.cleaned_data.get("split") or "train", self.cleaned_data.get("page") or 1
