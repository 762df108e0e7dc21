"""Checking each entry of a manifest (phase 1): its user, model, backend and instance type,
hyperparameters, cost cap and dataset, then the whole entry through the launch form.

Every problem of every entry is listed at once, each with its entry and field; nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model

from jobs import hub_check, presets, pricing, queueing
from jobs.batch.datasets import check_dataset, check_dataset_file_only
from jobs.batch.launch_form import check_budgets, check_with_form
from jobs.batch.plan import ALREADY, Entry, ManifestError, Plan
from jobs.batch.reading import FIELDS, ROW_PROBLEMS, LongNumber, kind_of, read_manifest
from jobs.forms import HYPERPARAMETER_FIELDS, MAX_INSTANCE_COUNT
from jobs.models import Backend, BaseModel, InstanceType, TrainingJob
from training_scripts.hyperparameters import validate_hyperparameters

REQUIRED = ("name", "user", "dataset", "base_model")
PRESET_NAMES = tuple(name for name, _ in presets.PRESET_CHOICES if name != presets.CUSTOM)


class UnknownUser(Exception):
    pass


class UnknownModel(Exception):
    pass


def find_user(email: str):
    """The one active user with this email address (any case)."""
    users = list(get_user_model().objects.filter(email__iexact=str(email).strip())[:2])
    if len(users) != 1:
        raise UnknownUser(f"no user has the email address {str(email).strip()!r}")
    if not users[0].is_active:
        raise UnknownUser(f"the user {users[0].email} is inactive")
    return users[0]


def find_model(wanted: str) -> BaseModel:
    """The active catalogue model with this Hub id, or else this name (any case). Raises UnknownModel."""
    models = BaseModel.objects.filter(is_active=True)
    found = list(models.filter(hub_id=wanted)) or list(models.filter(name__iexact=wanted))
    if len(found) == 1:
        return found[0]
    if found:
        raise UnknownModel(f"{wanted!r} names {len(found)} models: give its Hub id instead")
    known = ", ".join(models.values_list("hub_id", flat=True)[:6])
    raise UnknownModel(f"no model in the catalogue is called {wanted!r} (Hub ids: {known}, …)")


def check_manifest(path: Path) -> Plan:
    """Read and check every entry; nothing is stored. Never raises for bad input: see `Plan.problems`."""
    path = Path(path)
    try:
        raw_entries = read_manifest(path)
    except ManifestError as error:
        return Plan(entries=[], manifest_problems=[error.problem])
    return check_entries(raw_entries, base_dir=path.resolve().parent)


def check_entries(raw_entries: list[Any], base_dir: Path) -> Plan:
    entries = []
    for index, raw in enumerate(raw_entries, 1):
        entry = Entry(index=index, raw=raw if isinstance(raw, dict) else {})
        if not isinstance(raw, dict):
            entry.problem("", f"must be a mapping of fields ({', '.join(REQUIRED)}, …), not {kind_of(raw)}")
        else:
            _check_entry(entry, base_dir)
        entries.append(entry)
    _check_duplicate_names(entries)
    check_budgets(entries)
    queueing.check_manifest_limits(entries)
    return Plan(entries=entries)


def _check_entry(entry: Entry, base_dir: Path) -> None:
    raw = entry.raw
    name = raw.get("name")
    if isinstance(name, str | int | float) and not isinstance(name, bool) and str(name).strip():
        entry.name = str(name).strip()
    for field_name, message in raw.pop(ROW_PROBLEMS, []):
        entry.problem(field_name, message)
    _refuse_long_numbers(entry)
    for key in raw:
        if key not in FIELDS:
            entry.problem(str(key), f"unknown field (known: {', '.join(FIELDS)})")
    reported = {problem.field for problem in entry.problems}
    for key in REQUIRED:
        if raw.get(key) in (None, "") and key not in reported:
            entry.problem(key, "is required")
    for key in ("name", "user", "mapping", "base_model", "backend", "instance_type", "method", "preset"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str) and not (key == "name" and entry.name):
            entry.problem(key, f"must be text, not {kind_of(value)}")
    _check_user(entry)
    _check_model(entry)
    _check_backend(entry)
    _check_instance_count(entry)
    _check_hyperparameters(entry)
    _check_cost_cap(entry)
    if entry.user is not None:
        check_dataset(entry, base_dir)
    elif raw.get("dataset") not in (None, ""):
        check_dataset_file_only(entry, base_dir)
    if entry.problems:
        return
    entry.batch_key = batch_key(entry)
    entry.job = TrainingJob.objects.filter(owner=entry.user, batch_key=entry.batch_key).first()
    if entry.job is not None:
        entry.state = ALREADY
        return
    check_with_form(entry)


def _refuse_long_numbers(entry: Entry) -> None:
    """A number the reader could not read is a problem of its field, which is then left out."""
    fields = entry.raw
    hyperparameters = fields.get("hyperparameters")
    if isinstance(hyperparameters, dict):
        for name, value in list(hyperparameters.items()):
            if isinstance(value, LongNumber):
                entry.problem(f"hyperparameters.{name}", str(value))
                del hyperparameters[name]
    for key, value in list(fields.items()):
        if isinstance(value, LongNumber):
            entry.problem(str(key), str(value))
            del fields[key]


def _check_user(entry: Entry) -> None:
    email = entry.text("user")
    if not email:
        return
    try:
        entry.user = find_user(email)
    except UnknownUser as error:
        entry.problem("user", str(error))


def _check_model(entry: Entry) -> None:
    wanted = entry.text("base_model")
    if not wanted:
        return
    try:
        entry.base_model = find_model(wanted)
    except UnknownModel as error:
        entry.problem("base_model", str(error))
        return
    if hub_check.needs_hub(entry.base_model.hub_id):
        # The worker's answer, for the launch form's check below to refuse a model it cannot fetch.
        hub_check.wait_for_result(entry.base_model.hub_id, hub_check.MANIFEST_WAIT_SECONDS)


def _check_backend(entry: Entry) -> None:
    backend = entry.text("backend") or Backend.LOCAL
    if backend not in Backend.values:
        entry.problem("backend", f"must be one of {', '.join(Backend.values)}, not {backend!r}")
        entry.backend = ""
        return
    entry.backend = backend
    name = entry.text("instance_type")
    if backend != Backend.SAGEMAKER:
        if name:
            entry.problem(
                "instance_type", "only SageMaker jobs run on an instance type; this one trains locally"
            )
        return
    if not name:
        entry.problem("instance_type", "is required to train on SageMaker (e.g. ml.g5.xlarge)")
        return
    entry.instance_type = InstanceType.objects.filter(is_active=True, name=name).first()
    if entry.instance_type is None:
        known = ", ".join(InstanceType.objects.filter(is_active=True).values_list("name", flat=True))
        entry.problem("instance_type", f"unknown instance type {name!r} (known: {known})")


def _check_instance_count(entry: Entry) -> None:
    value = entry.raw.get("instance_count")
    if value in (None, ""):
        return
    if isinstance(value, bool) or not isinstance(value, int | str):
        entry.problem(
            "instance_count", f"must be a whole number from 1 to {MAX_INSTANCE_COUNT}, not {kind_of(value)}"
        )
        return
    count = forms.IntegerField(min_value=1, max_value=MAX_INSTANCE_COUNT)
    try:
        entry.instance_count = count.clean(str(value).strip())
    except forms.ValidationError as error:
        entry.problem(
            "instance_count", f"{' '.join(error.messages)} (SageMaker trains on 1 to {MAX_INSTANCE_COUNT})"
        )
        return
    if entry.backend == Backend.LOCAL and entry.instance_count != 1:
        entry.problem(
            "instance_count", "only SageMaker jobs run on several instances; this one trains locally"
        )


def _check_hyperparameters(entry: Entry) -> None:
    raw = entry.raw
    given = raw.get("hyperparameters")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        entry.problem("hyperparameters", f"must be a mapping of names to values, not {kind_of(given)}")
        given = {}
    explicit: dict[str, Any] = {}
    for key, value in given.items():
        name = str(key)
        if name == "base_model":
            entry.problem("hyperparameters.base_model", "set the model with the entry's base_model field")
        elif name not in HYPERPARAMETER_FIELDS:
            entry.problem(f"hyperparameters.{name}", "unknown hyperparameter")
        elif isinstance(value, dict | list):
            entry.problem(f"hyperparameters.{name}", f"must be a single value, not {kind_of(value)}")
        else:
            explicit[name] = value
    method = entry.text("method")
    if method:
        if "method" in explicit and str(explicit["method"]).strip().lower() != method.lower():
            entry.problem("method", f"says {method!r} but hyperparameters.method says {explicit['method']!r}")
        explicit["method"] = method
    # The same rules as the form (which runs once the rest of the entry is right): listed now so that
    # every problem of an entry shows at once. The form's checkbox would also read any text as true.
    values = dict(explicit)
    if entry.base_model is not None:
        values["base_model"] = entry.base_model.hub_id
    for name, error in validate_hyperparameters(values)[1].items():
        field_name = "method" if name == "method" and entry.text("method") else f"hyperparameters.{name}"
        entry.problem(field_name, error)
    entry.explicit = explicit
    preset = entry.text("preset")
    if preset and preset not in PRESET_NAMES:
        entry.problem("preset", f"must be one of {', '.join(PRESET_NAMES)}, not {preset!r}")
    entry.preset = preset


def _check_cost_cap(entry: Entry) -> None:
    value = entry.raw.get("max_cost_usd")
    if value in (None, ""):
        return
    if isinstance(value, bool):
        entry.problem("max_cost_usd", "must be an amount in US dollars")
        return
    cap = forms.DecimalField(min_value=Decimal("0.01"), max_digits=10, decimal_places=2)
    try:
        entry.max_cost_usd = cap.clean(str(value))
    except forms.ValidationError as error:
        entry.problem("max_cost_usd", " ".join(error.messages))
        return
    if entry.backend == Backend.LOCAL:
        entry.problem("max_cost_usd", "only SageMaker jobs cost money; this one trains locally")
    elif entry.instance_type is not None:
        # The cap becomes the job's time limit on SageMaker; too small a one could not even start it.
        count = entry.instance_count
        seconds = pricing.max_runtime_seconds(
            entry.max_cost_usd, entry.instance_type, count, settings.MAX_JOB_RUNTIME_SECONDS
        )
        if seconds < pricing.MIN_RUNTIME_SECONDS:
            needed = pricing.cap_for_seconds(pricing.MIN_RUNTIME_SECONDS, entry.instance_type, count)
            where = entry.instance_type.name if count == 1 else f"{count} × {entry.instance_type.name}"
            entry.problem(
                "max_cost_usd",
                f"${entry.max_cost_usd} buys only {seconds} s on {where}; a job needs at "
                f"least {pricing.MIN_RUNTIME_SECONDS // 60} minutes, so allow at least ${needed}",
            )


def _check_duplicate_names(entries: list[Entry]) -> None:
    first: dict[str, int] = {}
    for entry in entries:
        if not entry.name:
            continue
        key = entry.name.casefold()
        if key in first:
            entry.problem("name", f"the same name as entry {first[key]}: names must differ within a manifest")
        else:
            first[key] = entry.index


def batch_key(entry: Entry) -> str:
    """A hash of what the entry asks for; the same entry in a later run gives the same key."""
    normalized = validate_hyperparameters(entry.explicit)[0]
    spec = {
        "user": entry.user.pk,
        "name": entry.name,
        "dataset": {"sha256": entry.source.sha256, "mapping": entry.source.mapping}
        if entry.source is not None
        else entry.dataset.pk,
        "base_model": entry.base_model.hub_id,
        "backend": entry.backend,
        "instance_type": entry.instance_type.name if entry.instance_type is not None else None,
        "preset": entry.preset,
        "hyperparameters": {name: normalized[name] for name in sorted(entry.explicit)},
        "max_cost_usd": str(entry.max_cost_usd) if entry.max_cost_usd is not None else None,
    }
    if entry.instance_count != 1:
        spec["instance_count"] = entry.instance_count  # only when set: earlier manifests keep their keys
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
