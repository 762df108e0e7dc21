"""Resume stopped, failed or capped jobs from their last checkpoint, as their next attempt.

python manage.py resume_jobs 41 42
python manage.py resume_jobs 41 --backend sagemaker --instance-type ml.g5.xlarge
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs import resume
from jobs.models import Backend, InstanceType, TrainingJob


class Command(BaseCommand):
    help = "Resume jobs from their last checkpoint (a new attempt each), on their backend or another."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_ids", nargs="+", type=int, help="ids of stopped, failed or capped jobs")
        parser.add_argument(
            "--backend", choices=Backend.values, help="resume there instead (default: its own)"
        )
        parser.add_argument("--instance-type", help="the SageMaker instance type, with --backend sagemaker")

    def handle(self, *args, **options) -> None:
        instance_type = None
        if options["instance_type"]:
            instance_type = InstanceType.objects.filter(name=options["instance_type"], is_active=True).first()
            if instance_type is None:
                raise CommandError(f"No active instance type is named {options['instance_type']!r}.")
        jobs = TrainingJob.objects.select_related("dataset", "owner", "base_model", "instance_type")
        found = {job.pk: job for job in jobs.filter(pk__in=options["job_ids"])}
        resumed = refused = 0
        for job_id in options["job_ids"]:
            job = found.get(job_id)
            if job is None:
                self.stderr.write(f"#{job_id}: no such job")
                refused += 1
                continue
            try:
                again, made = resume.resume_job(job, options["backend"], instance_type)
            except resume.ResumeRefused as error:
                self.stderr.write(f"#{job_id}: {error}")
                refused += 1
                continue
            if made:
                resumed += 1
                self.stdout.write(
                    f"#{job_id}: attempt {again.attempt} is job #{again.pk} on {again.backend}, "
                    f"from step {again.resumed_at_step}"
                )
            else:
                self.stdout.write(f"#{job_id}: resumed already, attempt {again.attempt} is job #{again.pk}")
        self.stdout.write(f"{resumed} resumed, {refused} refused")
        if refused:
            raise CommandError(f"{refused} of {len(options['job_ids'])} could not be resumed")
