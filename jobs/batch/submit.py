"""Running a manifest: check it, import its dataset files, check again, submit (phases 1 to 4)."""

from __future__ import annotations

from pathlib import Path

from django.db import IntegrityError

from jobs import actions, queueing
from jobs.batch.datasets import import_datasets
from jobs.batch.entries import check_manifest
from jobs.batch.launch_form import check_budgets, check_with_form
from jobs.batch.plan import ALREADY, NOT_SUBMITTED, SUBMITTED, Plan, Progress
from jobs.models import TrainingJob


def recheck(plan: Plan) -> None:
    """The form again for entries whose dataset was just imported, then the budgets with every estimate."""
    for entry in plan.pending:
        if entry.imported:
            check_with_form(entry)
    check_budgets(plan.entries)
    queueing.check_manifest_limits(plan.entries)


def submit(plan: Plan, progress: Progress | None = None) -> None:
    say = progress or (lambda message: None)
    todo = plan.pending
    for number, entry in enumerate(todo, 1):
        try:
            entry.job = actions.launch_job(
                entry.user,
                estimate=entry.estimate,
                name=entry.name,
                dataset=entry.dataset,
                base_model=entry.base_model,
                backend=entry.backend,
                method=entry.hyperparameters["method"],
                hyperparameters=entry.hyperparameters,
                instance_type=entry.instance_type,
                instance_count=entry.instance_count,
                max_cost_usd=entry.max_cost_usd,
                batch_key=entry.batch_key,
            )
        except actions.LimitRefused as refusal:
            # Checked before submitting; only a launch elsewhere at the same moment gets here.
            entry.problem("backend", str(refusal))
            entry.state = NOT_SUBMITTED
            say(f"[{number}/{len(todo)}] {entry.name}: not submitted: {refusal}")
            continue
        except IntegrityError:
            # Another run of the same manifest submitted it a moment ago.
            entry.job = TrainingJob.objects.filter(owner=entry.user, batch_key=entry.batch_key).first()
            entry.state = ALREADY
            job_id = entry.job.pk if entry.job is not None else "?"
            say(f"[{number}/{len(todo)}] {entry.name}: already submitted (job {job_id})")
            continue
        entry.state = SUBMITTED
        say(f"[{number}/{len(todo)}] submitted {entry.name} as job {entry.job.pk}")


def run_manifest(path: Path, *, dry_run: bool = False, progress: Progress | None = None) -> Plan:
    """Check, then (unless `dry_run`) import and submit. See the module's docstring."""
    plan = check_manifest(path)
    if dry_run or not plan.valid:
        return plan
    import_datasets(plan, progress)
    if plan.valid:
        recheck(plan)
    if plan.valid:
        submit(plan, progress)
    else:
        for entry in plan.pending:
            entry.state = NOT_SUBMITTED
    return plan
