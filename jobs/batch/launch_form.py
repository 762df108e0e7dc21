"""An entry through the launch form (`NewJobForm`), so hyperparameters, SageMaker availability and the
estimate follow the web form's rules; and the monthly budgets of a manifest's SageMaker entries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

from jobs import presets, pricing
from jobs.batch.plan import Entry
from jobs.forms import HYPERPARAMETER_FIELDS, NewJobForm
from training_scripts.hyperparameters import DEFAULTS, HYPERPARAMETERS, validate_hyperparameters


def check_with_form(entry: Entry) -> None:
    """Run the entry through NewJobForm, the launch form, and keep what it makes of it.

    A file dataset that is not imported yet is checked without a dataset; `recheck`
    runs the form again once it is.
    """
    form = NewJobForm(entry.user, form_data(entry))
    form.is_valid()
    for name, messages in form.errors.items():
        if name == "dataset" and entry.dataset is None and entry.source is not None:
            continue  # not imported yet
        for message in messages:
            entry.problem(*_form_problem(name, message))
    entry.hyperparameters = form.cleaned_data.get("hyperparameters") or {}
    entry.estimate = form.estimate


def form_data(entry: Entry) -> dict[str, Any]:
    """The POST data the launch form would get for this entry."""
    data: dict[str, Any] = {
        "name": entry.name,
        "base_model": entry.base_model.pk,
        "backend": entry.backend,
        "preset": presets.CUSTOM,
    }
    if entry.dataset is not None:
        data["dataset"] = entry.dataset.pk
    if entry.instance_type is not None:
        data["instance_type"] = entry.instance_type.pk
    data["instance_count"] = entry.instance_count
    # The form reads a missing checkbox as false: every value goes in, the spec's defaults (or the
    # preset's values) where the entry sets none, as the page shows them before anyone types.
    if entry.preset:
        values = presets.preset_values(entry.preset, base_model=entry.base_model, dataset=entry.dataset)
    else:
        values = {name: DEFAULTS[name] for name in HYPERPARAMETER_FIELDS}
    values.update(entry.explicit)
    for name, value in values.items():
        if name not in HYPERPARAMETER_FIELDS or value is None:
            continue
        if HYPERPARAMETERS[name].type == "bool":
            if validate_hyperparameters({name: value})[0][name]:
                data[name] = "on"
        else:
            data[name] = value if isinstance(value, str) else json.dumps(value)
    if entry.max_cost_usd is not None:
        data["max_cost_usd"] = str(entry.max_cost_usd)
    return data


def _form_problem(name: str, message: str) -> tuple[str, str]:
    if name == "__all__":
        return "", message
    if name in HYPERPARAMETER_FIELDS and name != "method":
        return f"hyperparameters.{name}", message.removeprefix(f"{name} ")
    return name, message.removeprefix(f"{name} ")


def check_budgets(entries: list[Entry]) -> None:
    """The SageMaker entries of each user must fit, together, in what is left of their monthly budget."""
    earlier: dict[int, Decimal] = defaultdict(Decimal)
    for entry in entries:
        if not entry.pending or entry.estimate is None or entry.estimate.cost_usd is None:
            continue
        cost = Decimal(entry.estimate.cost_usd)
        before = earlier[entry.user.pk]
        if not before:
            message = pricing.check_budget(entry.user, cost)
        else:
            left = pricing.remaining_budget(entry.user)
            message = None
            if before + cost > left:
                message = (
                    f"estimated at ${cost:,.2f}, which with the ${before:,.2f} of this manifest's earlier "
                    f"SageMaker entries for {entry.user.email} goes over what is left of their monthly "
                    "budget "
                    f"(${max(Decimal(0), left):,.2f} of ${pricing.monthly_budget(entry.user):,.2f})"
                )
        if message:
            entry.problem("budget", message)
        else:
            earlier[entry.user.pk] += cost
