"""manage.py check_sagemaker: can this installation run training jobs on SageMaker?"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.backends import sagemaker


class Command(BaseCommand):
    help = (
        "Check the AWS setup for SageMaker training: credentials (STS), the role (IAM), the bucket "
        "(a small write and delete) and the training-instance quotas (Service Quotas). Exits 1 on failure."
    )

    def handle(self, *args, **options) -> None:
        checks = self.run_checks()
        for check in checks:
            if check.ok:
                self.stdout.write(self.style.SUCCESS("✓ ") + check.message)
            else:
                self.stdout.write(self.style.ERROR("✗ ") + check.message)
        failed = [check for check in checks if not check.ok and check.fatal]
        if failed:
            raise CommandError(
                f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed: SageMaker cannot run jobs"
            )
        self.stdout.write(self.style.SUCCESS("SageMaker is ready to run training jobs."))

    def run_checks(self) -> list[sagemaker.Check]:
        return sagemaker.run_checks()
