"""Forms of the jobs pages: every input, GET parameters of partials included, goes through one."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.humanize.templatetags.humanize import intcomma
from django.db.models import Q, QuerySet

from datasets_app.models import Dataset
from jobs import history, hub_check, memory, presets, pricing, queueing
from jobs.estimate import Estimate
from jobs.models import (
    FINAL_STATES,
    Architecture,
    Backend,
    BaseModel,
    InstanceType,
    JobStatus,
    Method,
    TrainingJob,
)
from llmtuner.forms import ShortRefusalsMixin
from llmtuner.validators import no_control_characters
from training_scripts.hyperparameters import (
    DEFAULTS,
    HYPERPARAMETERS,
    Param,
    is_scratch_model,
    validate_hyperparameters,
)

logger = logging.getLogger(__name__)

# Shown first; the rest are folded away under "Advanced".
BASIC_HYPERPARAMETERS = ("method", "epochs", "max_steps", "learning_rate", "batch_size", "max_seq_length")
HYPERPARAMETER_FIELDS = tuple(name for name in HYPERPARAMETERS if name != "base_model")
ADVANCED_HYPERPARAMETERS = tuple(name for name in HYPERPARAMETER_FIELDS if name not in BASIC_HYPERPARAMETERS)
SAGEMAKER_NOT_CONFIGURED = (
    "not configured: set SAGEMAKER_ROLE_ARN (an IAM role SageMaker may assume), AWS credentials and "
    "AWS_STORAGE_BUCKET_NAME to train in the cloud"
)
SAGEMAKER_NOT_SET_UP = "not set up on this server yet (an administrator can turn it on)"
# The hyperparameters are filled in again from the preset when one of these changes.
FILL_FIELDS = ("preset", "dataset", "base_model")
MAX_INSTANCE_COUNT = memory.MAX_INSTANCE_COUNT
# A SageMaker job (spot ones above all: AWS may interrupt them) writes a resumable checkpoint at
# least this often, unless its checkpoint_minutes says another interval.
SAGEMAKER_CHECKPOINT_MINUTES = 15.0
METHOD_LABELS = {
    "full": "Full fine-tuning",
    "lora": "LoRA adapters",
    "qlora": "QLoRA (4-bit base, LoRA adapters; CUDA GPUs)",
}


def sagemaker_availability() -> tuple[bool, str]:
    """(available, reason when not). The SageMaker backend says; without it, it is not available."""
    try:
        from jobs.backends import sagemaker
    except ImportError:
        return False, SAGEMAKER_NOT_CONFIGURED
    except Exception:  # a broken optional backend must not take the form down
        logger.exception("the SageMaker backend could not be imported")
        return False, "unavailable: the SageMaker backend failed to load (see the server log)"
    is_configured = getattr(sagemaker, "is_configured", None)
    if is_configured is None or not is_configured():
        explain = getattr(sagemaker, "unavailable_reason", None)
        return False, (explain() if explain else "") or SAGEMAKER_NOT_CONFIGURED
    return True, ""


def ready_datasets(user) -> QuerySet[Dataset]:
    return (
        Dataset.objects.filter(owner=user, status=Dataset.Status.READY)
        .exclude(train_file="")
        .defer("preview", "sample_index")
    )


class DatasetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        return f"{obj.name} · {intcomma(obj.samples)} samples · {intcomma(obj.tokens)} tokens"


class BaseModelChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        gated = " · gated" if obj.gated else ""
        return (
            f"{obj.name} · {obj.parameters_display} parameters · {intcomma(obj.context_length)} tokens"
            f" · {obj.licence}{gated}"
        )


class InstanceTypeChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: InstanceType) -> str:
        hardware = f"{obj.gpu_count} × {obj.gpu_type}" if obj.gpu_count else f"{obj.vcpus} vCPU, no GPU"
        return f"{obj.name} · {hardware} · ${obj.price_per_hour_usd}/h"


class BackendSelect(forms.RadioSelect):
    """Radio buttons where an unavailable backend is shown, disabled, with the reason."""

    def __init__(self, *args, unavailable: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.unavailable = unavailable or {}

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        reason = self.unavailable.get(str(value))
        if reason:
            option["attrs"]["disabled"] = True
            option["label"] = f"{label} ({reason})"
        return option


class SpecChoiceField(forms.ChoiceField):
    """Choices to pick from, judged by validate_hyperparameters like every other value."""

    def valid_value(self, value) -> bool:
        return True


def hyperparameter_field(param: Param) -> forms.Field:
    """A form field for one spec entry. Numbers and text stay text: validate_hyperparameters judges them."""
    help_text = param.help
    if param.type in ("int", "float"):
        help_text = f"{param.help} ({param.describe_range()}.)"
    if param.type == "choice":
        widget = forms.RadioSelect if param.name == "method" else forms.Select
        labels = METHOD_LABELS if param.name == "method" else {}
        choices = [(choice, labels.get(choice, choice)) for choice in param.choices or ()]
        return SpecChoiceField(
            label=param.title, choices=choices, required=False, help_text=help_text, widget=widget
        )
    if param.type == "bool":
        return forms.BooleanField(label=param.title, required=False, help_text=help_text)
    mode = {"int": "numeric", "float": "decimal"}.get(param.type, "text")
    attrs = {"inputmode": mode, "autocomplete": "off", "spellcheck": "false"}
    if param.name == "learning_rate":
        attrs["placeholder"] = "automatic"
    return forms.CharField(
        label=param.title,
        required=False,
        strip=True,
        help_text=help_text,
        widget=forms.TextInput(attrs=attrs),
    )


def as_form_value(param: Param, value: Any) -> Any:
    """A typed hyperparameter as the form shows it."""
    if value is None:
        return ""
    if param.type == "bool":
        return bool(value)
    if param.type == "float":
        return f"{float(value):g}"
    return str(value)


class NewJobForm(ShortRefusalsMixin, forms.Form):
    name = forms.CharField(
        max_length=200,
        required=False,
        help_text="Leave empty to name it after the dataset and the model.",
        validators=[no_control_characters],
    )
    dataset = DatasetChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    base_model = BaseModelChoiceField(
        queryset=BaseModel.objects.filter(is_active=True), empty_label=None, label="Base model"
    )
    backend = forms.ChoiceField(choices=Backend.choices, initial=Backend.LOCAL, label="Where to train")
    instance_type = InstanceTypeChoiceField(
        queryset=InstanceType.objects.filter(is_active=True),
        required=False,
        label="Instance type",
        help_text="Only for SageMaker.",
    )
    instance_count = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_INSTANCE_COUNT,
        initial=1,
        label="Instances",
        help_text=f"Only for SageMaker, 1 to {MAX_INSTANCE_COUNT}. Several instances (or GPUs) train one "
        "model together, one process per GPU; each instance is billed.",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_INSTANCE_COUNT}),
    )
    max_cost_usd = forms.DecimalField(
        required=False,
        min_value=Decimal("0.01"),
        max_digits=10,
        decimal_places=2,
        label="Cost cap (US$)",
        help_text="Only for SageMaker. AWS stops the job when it has cost this much. "
        "Empty: what is left of your monthly budget.",
    )
    use_spot = forms.BooleanField(
        required=False,
        label="Use spot instances",
        help_text="Only for SageMaker. Up to about 70 % cheaper; AWS may interrupt and restart the job.",
    )
    preset = forms.ChoiceField(
        choices=presets.PRESET_CHOICES, initial=presets.AUTOMATIC, required=False, widget=forms.RadioSelect
    )
    # Which preset, dataset and model the hyperparameters shown were filled in for; when the
    # form comes with another, the estimate partial fills them in again.
    filled_for = forms.CharField(required=False, widget=forms.HiddenInput)
    # A one-time token per rendered form: posted twice, the form makes one job (views.new_job).
    submit_token = forms.UUIDField(required=False, widget=forms.HiddenInput, label="Form token")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["dataset"].queryset = ready_datasets(user)
        self.sagemaker_available, self.sagemaker_reason = sagemaker_availability()
        if not self.sagemaker_available and not getattr(user, "is_staff", False):
            # Set-up instructions (environment variables) are for staff; others are told who can act.
            self.sagemaker_reason = SAGEMAKER_NOT_SET_UP
        unavailable = {} if self.sagemaker_available else {Backend.SAGEMAKER: self.sagemaker_reason}
        self.fields["backend"].widget = BackendSelect(choices=Backend.choices, unavailable=unavailable)
        for name in HYPERPARAMETER_FIELDS:
            self.fields[name] = hyperparameter_field(HYPERPARAMETERS[name])
        self.estimate: Estimate | None = None
        self.memory: memory.MemoryEstimate | None = None
        self.memory_remedies: list[str] = []
        if not self.is_bound:
            self.initial.setdefault("filled_for", self.fill_key())
            self.initial.setdefault("submit_token", uuid.uuid4())

    # --- what the template reads ---

    def basic_fields(self):
        return [self[name] for name in BASIC_HYPERPARAMETERS if name != "method"]

    def advanced_fields(self):
        return [self[name] for name in ADVANCED_HYPERPARAMETERS]

    @property
    def advanced_has_errors(self) -> bool:
        return self.is_bound and any(self[name].errors for name in ADVANCED_HYPERPARAMETERS)

    def fill_key(self) -> str:
        """`preset:dataset:model` as the form now stands."""
        values = []
        for name in FILL_FIELDS:
            value = self[name].value()
            values.append(str(getattr(value, "pk", value) or ("" if name != "preset" else presets.AUTOMATIC)))
        return ":".join(values)

    def needs_refill(self) -> bool:
        """A preset, dataset or model other than the one the shown values were filled in for."""
        return self.is_bound and self.data.get("filled_for", "") != self.fill_key()

    @property
    def posted_token(self) -> uuid.UUID | None:
        """The posted one-time token, read on its own: whatever the rest of the form says."""
        try:
            return self.fields["submit_token"].clean(self["submit_token"].value())
        except forms.ValidationError:
            return None

    @property
    def selected_model(self) -> BaseModel | None:
        return self.selected("base_model")

    def named_errors(self) -> list[tuple[str, str]]:
        """Every error with the field it is about named in the message."""
        named = []
        for name, errors in self.errors.items():
            label = self.fields[name].label or name if name in self.fields else ""
            for message in errors:
                if label and not message.startswith(name):
                    message = f"{str(label).capitalize()}: {message}"
                named.append((name, message))
        return named

    def selected(self, name: str):
        """The chosen object of a choice field, bound or not (None when there is none)."""
        field = self.fields[name]
        raw = self[name].value()
        if raw in (None, ""):
            return None
        try:
            return field.clean(raw) if isinstance(field, forms.ModelChoiceField) else raw
        except forms.ValidationError:
            return None

    # --- validation ---

    def clean_backend(self) -> str:
        backend = self.cleaned_data["backend"]
        if backend == Backend.SAGEMAKER and not self.sagemaker_available:
            raise forms.ValidationError(f"SageMaker is {self.sagemaker_reason}.")
        return backend

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        base_model = data.get("base_model")
        values = {name: data.get(name) for name in HYPERPARAMETER_FIELDS}
        values["base_model"] = base_model.hub_id if base_model else DEFAULTS["base_model"]
        clean, errors = validate_hyperparameters(values)
        for name, message in errors.items():
            self.add_error(name if name in self.fields else None, f"{name} {message}")
        # The worker's answer about a Hub model, when it is in (jobs/hub_check.py).
        hub_refusal = hub_check.launch_refusal(base_model.hub_id) if base_model else ""
        if hub_refusal:
            self.add_error("base_model", hub_refusal)
        if data.get("backend") == Backend.SAGEMAKER:
            if not data.get("instance_type"):
                self.add_error("instance_type", "Choose an instance type to train on SageMaker.")
            if not errors:
                clean = with_sagemaker_checkpoints(clean)
        else:
            # This machine costs nothing: a cap or spot would mean nothing there; it is one machine.
            data.update(instance_type=None, max_cost_usd=None, use_spot=False, instance_count=1)
        data["instance_count"] = data.get("instance_count") or 1
        data["hyperparameters"] = clean
        if not errors and base_model is not None and "backend" in data:
            method_refusal = self._method_refusal(clean["method"], base_model, data)
            if method_refusal:
                self.add_error("method", method_refusal)
            else:
                self._check_memory(base_model, clean, data)
        dataset = data.get("dataset")
        if not errors and dataset is not None and base_model is not None and "backend" in data:
            self.estimate = estimate_for(
                dataset,
                base_model,
                clean,
                data["backend"],
                data.get("instance_type"),
                instance_count=data["instance_count"],
            )
            runtime_refusal = queueing.runtime_refusal(data["backend"], self.estimate.seconds)
            if runtime_refusal:
                self.add_error(None, runtime_refusal)
            if data["backend"] == Backend.SAGEMAKER and self.estimate.cost_usd is not None:
                # The owner's monthly budget, less what this month's jobs spent or still reserve.
                refusal = pricing.check_budget(self.user, self.estimate.cost_usd)
                if refusal:
                    self.add_error(None, refusal)
                cap = data.get("max_cost_usd")
                if cap is not None and cap < self.estimate.cost_usd:
                    self.add_error(
                        "max_cost_usd",
                        f"The estimate is ${self.estimate.cost_usd:.2f}; a ${cap:.2f} cap would stop the job "
                        "before it finishes. Raise the cap or train for fewer steps.",
                    )
        return data

    def _method_refusal(self, method: str, base_model: BaseModel, data: dict[str, Any]) -> str:
        """Why the chosen method cannot train this model where it was asked to; empty when it can."""
        if method != Method.QLORA:
            return ""
        if base_model.architecture == Architecture.SEQ2SEQ:
            return (
                f"QLoRA is offered for causal language models only; {base_model.name} is "
                "sequence-to-sequence: use LoRA."
            )
        if data.get("backend") == Backend.SAGEMAKER:
            instance_type = data.get("instance_type")
            if instance_type is not None and not instance_type.has_gpu:
                return (
                    f"QLoRA needs a CUDA GPU (bitsandbytes' 4-bit kernels); {instance_type.name} has none: "
                    "choose a GPU instance type or use LoRA."
                )
            return ""
        if not local_gpu_memory_gib():
            return (
                "QLoRA needs a CUDA GPU (bitsandbytes' 4-bit kernels), and this machine's worker trains on "
                "CPU (LOCAL_GPU_MEMORY_GIB is not set): train on SageMaker with a GPU instance, or use LoRA."
            )
        return ""

    def _check_memory(self, base_model: BaseModel, clean: dict[str, Any], data: dict[str, Any]) -> None:
        """Peak memory per device against the GPU's; a job that cannot fit is refused with what would."""
        capacity, world, where = device_memory(data)
        setup = memory.setup_for(base_model, clean, world_size=world)
        self.memory = memory.check_setup(setup, capacity)
        if self.memory.fits:
            return
        qlora_possible = (
            "qlora" in (HYPERPARAMETERS["method"].choices or ())
            and base_model.architecture != Architecture.SEQ2SEQ
            and not is_scratch_model(base_model.hub_id)
        )
        remedies = [
            remedy.describe()
            for remedy in memory.config_remedies(self.memory.setup, capacity, qlora_possible=qlora_possible)
        ]
        if data.get("backend") == Backend.SAGEMAKER:
            others = memory.hardware_remedies(
                setup, pricing.active_instance_types(), chosen=data.get("instance_type")
            )
            remedies += [f"training on {remedy.describe()}" for remedy in others]
        self.memory_remedies = remedies
        needs = f"This job needs about {self.memory.total_gib:.1f} GiB per GPU ({self.memory.strategy})"
        has = f"but {where} has {capacity:g} GiB"
        if remedies:
            advice = "It would fit with any one of: " + "; ".join(remedies) + "."
        else:
            advice = (
                "No single change (LoRA or QLoRA, a smaller batch, gradient checkpointing, another instance "
                "type) makes it fit: choose a smaller model or a shorter max_seq_length."
            )
        self.add_error(None, f"{needs}, {has}: it would run out of memory. {advice}")

    def job_name(self) -> str:
        name = self.cleaned_data.get("name") or ""
        if name:
            return name
        return f"{self.cleaned_data['dataset'].name} · {self.cleaned_data['base_model'].name}"[:200]

    # --- presets ---

    @classmethod
    def refilled(cls, user, data) -> NewJobForm:
        """The same form with its hyperparameters set to what the chosen preset gives."""
        probe = cls(user, data)
        preset = probe.selected("preset") or presets.AUTOMATIC
        data = data.copy()
        data["filled_for"] = probe.fill_key()
        if preset == presets.CUSTOM:
            return cls(user, data)
        values = presets.preset_values(
            preset, base_model=probe.selected("base_model"), dataset=probe.selected("dataset")
        )
        for name in HYPERPARAMETER_FIELDS:
            value = as_form_value(HYPERPARAMETERS[name], values.get(name))
            if value is False:
                data.pop(name, None)
            else:
                data[name] = "on" if value is True else value
        return cls(user, data)


def local_gpu_memory_gib() -> float:
    return float(settings.LOCAL_GPU_MEMORY_GIB or 0)


def device_memory(data: dict[str, Any]) -> tuple[float, int, str]:
    """(GiB per device, 0 = not checked; world size; the hardware in words) of the chosen backend."""
    if data.get("backend") == Backend.SAGEMAKER:
        instance_type = data.get("instance_type")
        count = int(data.get("instance_count") or 1)
        if instance_type is None or not instance_type.has_gpu:
            return 0.0, count, ""
        where = f"{instance_type.name} ({instance_type.gpu_type or 'GPU'})"
        return float(instance_type.gpu_memory_gib), instance_type.gpu_count * count, where
    gpus = max(1, int(settings.LOCAL_TRAINING_GPUS or 0))
    # This machine: its GPUs when LOCAL_GPU_MEMORY_GIB says so; its CPU RAM is not checked.
    return local_gpu_memory_gib(), gpus, "each of this machine's GPUs (LOCAL_GPU_MEMORY_GIB)"


def with_sagemaker_checkpoints(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """A SageMaker job writes a resumable checkpoint at least every 15 minutes unless it says otherwise.

    0, the spec's "off", is the default every form and manifest starts from, so on SageMaker it
    means the platform's interval; any other value is kept.
    """
    if "checkpoint_minutes" not in HYPERPARAMETERS or hyperparameters.get("checkpoint_minutes"):
        return hyperparameters
    return {**hyperparameters, "checkpoint_minutes": SAGEMAKER_CHECKPOINT_MINUTES}


def estimate_for(
    dataset, base_model, hyperparameters, backend, instance_type=None, *, instance_count: int = 1
) -> Estimate:
    # From the nearest runs measured on the same backend and instance type (jobs.history).
    count = instance_count if backend == Backend.SAGEMAKER else 1
    return history.estimate_for(dataset, base_model, hyperparameters, backend, instance_type, count)


def initial_for_new_job(user, query: NewJobQuery) -> dict[str, Any]:
    """The new-job form's starting values: a preset's for the chosen dataset and model.

    A parameter that is not valid (someone else's dataset, an unknown model) is left out.
    """
    query.is_valid()
    data = query.cleaned_data
    dataset = data.get("dataset") or ready_datasets(user).first()
    base_model = data.get("base_model") or BaseModel.objects.filter(is_active=True).first()
    preset = data.get("preset") or presets.AUTOMATIC
    values = presets.preset_values(
        preset if preset != presets.CUSTOM else presets.AUTOMATIC, base_model=base_model, dataset=dataset
    )
    initial: dict[str, Any] = {
        "dataset": dataset,
        "base_model": base_model,
        "backend": data.get("backend") or Backend.LOCAL,
        "instance_type": data.get("instance_type"),
        "preset": preset,
    }
    for name in HYPERPARAMETER_FIELDS:
        initial[name] = as_form_value(HYPERPARAMETERS[name], values.get(name))
    return initial


def initial_from_job(job: TrainingJob, user) -> dict[str, Any]:
    dataset = (
        job.dataset if job.dataset_id and ready_datasets(user).filter(pk=job.dataset_id).exists() else None
    )
    initial: dict[str, Any] = {
        "name": f"{job.name} (copy)"[:200],
        "dataset": dataset,
        "base_model": job.base_model,
        "backend": job.backend,
        "instance_type": job.instance_type,
        "instance_count": job.instance_count,
        "max_cost_usd": job.max_cost_usd,
        "use_spot": job.use_spot,
        "preset": presets.CUSTOM,
    }
    for name in HYPERPARAMETER_FIELDS:
        param = HYPERPARAMETERS[name]
        initial[name] = as_form_value(param, job.hyperparameters.get(name, param.default))
    return initial


class NewJobQuery(forms.Form):
    """The GET parameters of /jobs/new/: ?dataset=, ?base_model=, ?backend=, ?instance_type=, ?preset=."""

    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False)
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.filter(is_active=True), required=False)
    backend = forms.ChoiceField(choices=Backend.choices, required=False)
    instance_type = forms.ModelChoiceField(
        queryset=InstanceType.objects.filter(is_active=True), required=False
    )
    preset = forms.ChoiceField(choices=presets.PRESET_CHOICES, required=False)

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = ready_datasets(user)


ACTIVE_FILTER = "active"


class JobFilterForm(forms.Form):
    """?status= on the jobs list: one state, or every job still running."""

    status = forms.ChoiceField(
        choices=[("", "All jobs"), (ACTIVE_FILTER, "Queued or running"), *JobStatus.choices], required=False
    )
    page = forms.IntegerField(min_value=1, required=False)

    def filter(self, jobs: QuerySet[TrainingJob]) -> QuerySet[TrainingJob]:
        status = self.cleaned_data.get("status") if self.is_valid() else ""
        if status == ACTIVE_FILTER:
            return jobs.exclude(status__in=FINAL_STATES)
        if status:
            return jobs.filter(Q(status=status))
        return jobs

    @property
    def page_number(self) -> int:
        return (self.cleaned_data.get("page") if self.is_valid() else None) or 1


class CursorForm(forms.Form):
    """?after= of the chart and log endpoints: only what came after it is sent."""

    after = forms.IntegerField(min_value=0, required=False)

    @property
    def cursor(self) -> int:
        return (self.cleaned_data.get("after") if self.is_valid() else None) or 0
