"""Submit many training jobs at once from a YAML or CSV manifest (see jobs/batch/__init__.py for the format).

    python manage.py submit_jobs jobs.yaml --dry-run
    python manage.py submit_jobs jobs.yaml
    python manage.py submit_jobs jobs.csv --json

The whole manifest is checked first; nothing is imported or submitted if any
entry is wrong, and every problem is listed with its entry and field. A second
run submits only what the first did not. Exit status 0 when every entry is
submitted (now or before), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser, DjangoHelpFormatter

from jobs import batch, reports
from jobs.estimate import format_duration
from jobs.models import Backend
from training_scripts.hyperparameters import HYPERPARAMETERS

# What --help prints after the options; the README's "Many jobs at once" section says the same.
MANIFEST_FORMAT = """\
The manifest (YAML, or JSON, or CSV with the same columns), one entry per job:

  jobs:
    - name: support-bot-small          # required: the job's name
      user: alice@example.com          # required: the account the job belongs to
      dataset: data/support.csv        # required: a file (read from the manifest's folder and
                                       #   imported for the user) or the id of a ready dataset
      mapping: prompt:question,completion:answer   # optional, files only: column -> field
      base_model: scratch:tiny-gpt2    # required: a catalogue Hub id or name ("GPT-2 small")
      backend: local                   # local (default) or sagemaker
      hyperparameters: {epochs: 1, max_steps: 50}
    - name: support-bot-cloud
      user: alice@example.com
      dataset: 12
      base_model: Qwen/Qwen2.5-0.5B
      backend: sagemaker
      instance_type: ml.g5.xlarge      # required for sagemaker
      instance_count: 1                # optional, sagemaker: 1 to 8 instances (torchrun over all)
      method: lora                     # full (default), lora or qlora (GPU); both need a Hub model
      preset: automatic                # optional: automatic, quick, balanced or thorough
      max_cost_usd: 5                  # optional, sagemaker: AWS stops the job at this cost

  In CSV: hyperparameters as a JSON object in a `hyperparameters` column, or one `hp.<name>`
  column each (hp.epochs, hp.max_steps, ...).

Hyperparameters are the new-job form's, by name, with its rules; the form shows each one's
range. A Hub model the worker cannot fetch (missing, gated without access) is refused before
anything is submitted.

{hyperparameters}

Every entry is checked before anything is imported or submitted, and every problem is listed
with its entry and field. Running the same manifest again submits only what was not submitted.
"""


def hyperparameter_list() -> str:
    lines = [f"  {name:<28} {param.title}" for name, param in HYPERPARAMETERS.items() if name != "base_model"]
    return "Hyperparameters:\n" + "\n".join(lines)


class ManifestHelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the manifest example printed as written."""


class Command(BaseCommand):
    help = "Check a manifest of training jobs (YAML or CSV), import its dataset files and submit the jobs."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs) -> CommandParser:
        kwargs.setdefault("formatter_class", ManifestHelpFormatter)
        kwargs.setdefault("epilog", MANIFEST_FORMAT.replace("{hyperparameters}", hyperparameter_list()))
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("manifest", type=Path, help="the manifest: .yaml/.yml or .csv")
        parser.add_argument(
            "--dry-run", action="store_true", help="check and estimate only: import and submit nothing"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    def handle(self, *args, **options) -> None:
        dry_run = options["dry_run"]
        plan = batch.run_manifest(options["manifest"], dry_run=dry_run, progress=self.stderr.write)
        if options["json"]:
            self.stdout.write(json.dumps(self.as_json(plan, dry_run), ensure_ascii=False, indent=2))
        elif not plan.valid:
            self.print_problems(plan)
        elif dry_run:
            self.stdout.write(self.table(plan))
            self.stdout.write(self.totals_line(plan))
        else:
            self.print_summary(plan)
        if not plan.valid:
            raise CommandError(self.failure_line(plan), returncode=1)
        if not dry_run and not plan.all_submitted:
            raise CommandError("Some entries were not submitted.", returncode=1)

    # --- text ---

    @staticmethod
    def table(plan: batch.Plan) -> str:
        rows = []
        for entry in plan.entries:
            estimate = entry.estimate
            later = "after import" if entry.needs_import else ""
            if entry.state == batch.ALREADY:
                state = f"already submitted (job {entry.job.pk})"
                steps = duration = cost = ""
            else:
                state = entry.state
                steps = f"{estimate.steps:,}" if estimate else later
                duration = estimate.duration if estimate else later
                if entry.backend == Backend.LOCAL:
                    cost = "free"
                else:
                    cost = reports.money(estimate.cost_usd) if estimate else later
            rows.append(
                [
                    entry.index,
                    entry.name,
                    entry.user.email,
                    entry.dataset_label(),
                    entry.base_model.hub_id,
                    entry.instance_type.name if entry.instance_type else entry.backend,
                    steps,
                    duration,
                    cost,
                    state,
                ]
            )
        headers = ["#", "NAME", "USER", "DATASET", "MODEL", "WHERE", "STEPS", "TIME", "COST", "STATE"]
        return reports.text_table(headers, rows, right={0, 6, 7, 8})

    @staticmethod
    def totals_line(plan: batch.Plan) -> str:
        totals = plan.totals()
        line = (
            f"\n{totals['entries']} entr{'y' if totals['entries'] == 1 else 'ies'}: {totals['new']} to submit"
        )
        if totals["already_submitted"]:
            line += f", {totals['already_submitted']} already submitted"
        if totals["new"]:
            line += f"; about {format_duration(totals['seconds'])} of training in all"
            if any(entry.backend == Backend.SAGEMAKER for entry in plan.pending):
                line += f", {reports.money(totals['cost_usd'])} on SageMaker"
        if totals["unknown"]:
            line += f" (and {totals['unknown']} to estimate after import)"
        return line + "."

    def print_problems(self, plan: batch.Plan) -> None:
        for problem in plan.problems:
            self.stderr.write(f"  {problem}")

    def failure_line(self, plan: batch.Plan) -> str:
        count = len(plan.problems)
        what = f"{count} problem{'s' if count != 1 else ''}"
        imported = [entry for entry in plan.entries if entry.imported]
        if imported:
            return f"{what} found after importing {len(imported)} dataset file(s): nothing was submitted."
        return f"{what} in the manifest: nothing was imported or submitted."

    def print_summary(self, plan: batch.Plan) -> None:
        for entry in plan.entries:
            job = f"job {entry.job.pk}" if entry.job is not None else "no job"
            self.stdout.write(f"  {entry.index}. {entry.name}: {job} ({entry.state})")
        submitted, already = plan.count(batch.SUBMITTED), plan.count(batch.ALREADY)
        text = f"Submitted {submitted} job{'s' if submitted != 1 else ''}"
        if already:
            text += f"; {already} already submitted before"
        self.stdout.write(self.style.SUCCESS(text + "."))

    # --- JSON ---

    @staticmethod
    def as_json(plan: batch.Plan, dry_run: bool) -> dict:
        totals = plan.totals()
        totals["cost_usd"] = str(totals["cost_usd"])
        return {
            "valid": plan.valid,
            "dry_run": dry_run,
            "problems": [problem.as_dict() for problem in plan.problems],
            "entries": [entry.as_dict() for entry in plan.entries],
            "totals": totals,
        }
