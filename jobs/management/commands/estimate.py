"""How long a job would take and what it would cost, before launching it.

    python manage.py estimate --dataset 12 --model gpt2
    python manage.py estimate --dataset 12 --model gpt2 --instance-type ml.g5.xlarge --preset thorough
    python manage.py estimate --dataset 12 --model scratch:tiny-gpt2 --backend local --hp max_steps=200 --json

Without --instance-type or --backend, every active instance type is priced, cheapest first.
The numbers are the launch form's (jobs.forms.estimate_for) for the same dataset, model and values.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets_app.models import Dataset
from jobs import batch, presets, reports
from jobs.estimate import Estimate
from jobs.forms import HYPERPARAMETER_FIELDS, estimate_for
from jobs.models import Backend, BaseModel, InstanceType
from training_scripts.hyperparameters import format_errors, validate_hyperparameters


class Command(BaseCommand):
    help = "Estimate the time and cost of training a model on a dataset, on one or every instance type."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", type=int, required=True, help="the dataset's id (it must be ready)")
        parser.add_argument("--model", required=True, help="a catalogue model's Hub id or name")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--instance-type", help="one SageMaker instance type, e.g. ml.g5.xlarge")
        where.add_argument("--backend", choices=[Backend.LOCAL], help="this machine instead of SageMaker")
        parser.add_argument(
            "--preset",
            default=presets.AUTOMATIC,
            choices=batch.PRESET_NAMES,
            help="the hyperparameters to start from (default automatic)",
        )
        parser.add_argument(
            "--hp",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="set one hyperparameter over the preset's (repeatable), e.g. --hp max_steps=500",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    def handle(self, *args, **options) -> None:
        dataset = self.find_dataset(options["dataset"])
        try:
            base_model = batch.find_model(options["model"])
        except batch.UnknownModel as error:
            raise CommandError(str(error)) from None
        hyperparameters = self.hyperparameters(options["preset"], base_model, dataset, options["hp"])
        if options["backend"] == Backend.LOCAL:
            targets: list[InstanceType | None] = [None]
        elif options["instance_type"]:
            found = InstanceType.objects.filter(is_active=True, name=options["instance_type"]).first()
            if found is None:
                known = ", ".join(InstanceType.objects.filter(is_active=True).values_list("name", flat=True))
                raise CommandError(f"unknown instance type {options['instance_type']!r} (known: {known})")
            targets = [found]
        else:
            targets = list(InstanceType.objects.filter(is_active=True))
        estimates = self.estimates(dataset, base_model, hyperparameters, targets)
        if options["json"]:
            result = {
                "dataset": {"id": dataset.pk, "name": dataset.name, "samples": dataset.samples},
                "tokens": dataset.tokens,
                "model": base_model.hub_id,
                "preset": options["preset"],
                "hyperparameters": hyperparameters,
                "estimates": [self.as_dict(instance, estimate) for instance, estimate in estimates],
            }
            self.stdout.write(json.dumps(result, ensure_ascii=False, indent=2))
            return
        hp = hyperparameters
        self.stdout.write(
            f"Dataset {dataset.pk} “{dataset.name}”: {dataset.samples:,} samples, "
            f"{dataset.tokens:,} tokens · "
            f"{base_model.name} ({base_model.hub_id}, {base_model.parameters_display} parameters)\n"
            f"Preset {options['preset']}: method {hp['method']}, {hp['epochs']:g} epoch(s), "
            f"max_steps {hp['max_steps']}, batch {hp['batch_size']} × {hp['gradient_accumulation_steps']}, "
            f"sequences of {hp['max_seq_length']} tokens\n"
        )
        self.stdout.write(self.table(estimates))

    def find_dataset(self, pk: int) -> Dataset:
        dataset = Dataset.objects.filter(pk=pk).defer("preview", "sample_index").first()
        if dataset is None:
            raise CommandError(f"no dataset has the id {pk}")
        if not dataset.is_ready:
            raise CommandError(f"dataset {pk} is not ready ({dataset.get_status_display()})")
        return dataset

    @staticmethod
    def hyperparameters(preset: str, base_model: BaseModel, dataset: Dataset, overrides: list[str]) -> dict:
        """The preset's values with the overrides, validated as the launch form validates them."""
        values: dict[str, Any] = presets.preset_values(preset, base_model=base_model, dataset=dataset)
        for item in overrides:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in HYPERPARAMETER_FIELDS:
                raise CommandError(f"--hp {item!r}: give NAME=VALUE with a known hyperparameter name")
            values[name] = value
        clean, errors = validate_hyperparameters({**values, "base_model": base_model.hub_id})
        if errors:
            raise CommandError(format_errors(errors))
        return clean

    @staticmethod
    def estimates(
        dataset: Dataset, base_model: BaseModel, hyperparameters: dict, targets: list[InstanceType | None]
    ) -> list[tuple[InstanceType | None, Estimate]]:
        """One estimate per target (None: this machine), cheapest first, then quickest."""
        found = [
            (
                instance,
                estimate_for(
                    dataset,
                    base_model,
                    hyperparameters,
                    Backend.LOCAL if instance is None else Backend.SAGEMAKER,
                    instance,
                ),
            )
            for instance in targets
        ]
        return sorted(found, key=lambda pair: (pair[1].cost_usd or 0, pair[1].seconds))

    @staticmethod
    def table(estimates: list[tuple[InstanceType | None, Estimate]]) -> str:
        rows = []
        for instance, estimate in estimates:
            if instance is None:
                rows.append(
                    [
                        "this machine",
                        "",
                        "",
                        f"{estimate.steps:,}",
                        estimate.range_display,
                        "free",
                        estimate.basis,
                    ]
                )
                continue
            hardware = f"{instance.gpu_count} × {instance.gpu_type}" if instance.gpu_count else "CPU only"
            rows.append(
                [
                    instance.name,
                    hardware,
                    reports.money(instance.price_per_hour_usd),
                    f"{estimate.steps:,}",
                    estimate.range_display,
                    reports.money(estimate.cost_usd),
                    estimate.basis,
                ]
            )
        headers = ["WHERE", "HARDWARE", "PER HOUR", "STEPS", "TIME", "COST", "BASIS"]
        return reports.text_table(headers, rows, right={2, 3, 4, 5})

    @staticmethod
    def as_dict(instance: InstanceType | None, estimate: Estimate) -> dict[str, Any]:
        return {
            "backend": Backend.LOCAL if instance is None else Backend.SAGEMAKER,
            "instance_type": instance.name if instance else None,
            "price_per_hour_usd": str(instance.price_per_hour_usd) if instance else None,
            "steps": estimate.steps,
            "train_tokens": estimate.train_tokens,
            "seconds": estimate.seconds,
            "duration": estimate.duration,
            "slow_seconds": estimate.slow_seconds,
            "basis": estimate.basis,
            "phases": estimate.phases,
            "world_size": estimate.world_size,
            "effective_batch": estimate.effective_batch,
            "cost_usd": str(estimate.cost_usd) if estimate.cost_usd is not None else None,
        }
