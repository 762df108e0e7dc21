"""What each SageMaker instance type would take and cost for one dataset and model: browsable
whether or not this server can run SageMaker jobs yet.

The figures are the launch form's (jobs.forms.estimate_for, over a preset's validated values);
GPU memory is judged as the Hub check judges the worker's (jobs.hub_check.BYTES_PER_PARAMETER).
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs import presets, pricing
from jobs.estimate import Estimate
from jobs.forms import estimate_for
from jobs.hub_check import BYTES_PER_PARAMETER, GIB
from jobs.models import Backend, BaseModel, InstanceType
from training_scripts.hyperparameters import validate_hyperparameters


@dataclass(frozen=True)
class InstanceCost:
    instance: InstanceType
    estimate: Estimate
    memory_needed_gib: float
    fits: bool | None  # None: a CPU instance (its memory is the machine's RAM, not judged here)

    @property
    def hardware(self) -> str:
        instance = self.instance
        if instance.gpu_count:
            return f"{instance.gpu_count} × {instance.gpu_type} ({instance.gpu_memory_gib:g} GiB each)"
        return f"{instance.vcpus} vCPU, no GPU"


def hyperparameters_for(preset: str, base_model: BaseModel, dataset) -> tuple[dict, dict]:
    """(clean values, errors) of a preset for this model and dataset, as the form validates them."""
    values = presets.preset_values(preset, base_model=base_model, dataset=dataset)
    return validate_hyperparameters({**values, "base_model": base_model.hub_id})


def instance_costs(dataset, base_model: BaseModel, hyperparameters: dict) -> list[InstanceCost]:
    """Every active instance type, cheapest first, then quickest."""
    method = hyperparameters.get("method", "full")
    need = base_model.parameters * BYTES_PER_PARAMETER.get(method, 16) / GIB
    rows = []
    for instance in pricing.active_instance_types():
        estimate = estimate_for(dataset, base_model, hyperparameters, Backend.SAGEMAKER, instance)
        fits = need <= instance.gpu_memory_gib if instance.gpu_count else None
        rows.append(InstanceCost(instance, estimate, need, fits))
    return sorted(rows, key=lambda row: (row.estimate.cost_usd or 0, row.estimate.seconds))
