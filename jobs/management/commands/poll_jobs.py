"""Run one SageMaker poll cycle now (what the beat task runs) and say what changed.

python manage.py poll_jobs
"""

from __future__ import annotations

from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from jobs import reports
from jobs.backends import sagemaker
from jobs.models import FINAL_STATES, Backend, TrainingJob

# What an operator wants to see move: the state, what AWS says, the progress and the cost.
WATCHED = ("status", "sagemaker_status", "sagemaker_secondary_status", "step", "total_steps", "cost_usd")


class Command(BaseCommand):
    help = "Poll SageMaker once for every running job (as the beat task does) and print what changed."

    def handle(self, *args, **options) -> None:
        before = self.snapshot()
        report = sagemaker.poll_jobs()
        if report.skipped == "SageMaker is not configured":
            raise CommandError(f"SageMaker is {sagemaker.unavailable_reason()}.")
        if report.skipped:
            self.stdout.write(self.style.WARNING(f"Nothing polled: {report.skipped}."))
            return
        changes = self.changes(before, self.snapshot(list(before)))
        for line in changes:
            self.stdout.write(line)
        calls = ", ".join(f"{name} {count}" for name, count in sorted(report.calls.items())) or "none"
        summary = (
            f"{report.jobs} running job(s) looked at; {report.described} described, "
            f"{report.tailed} log(s) read, {report.finished} finished; {len(changes)} changed. "
            f"AWS calls: {calls}."
        )
        self.stdout.write(self.style.SUCCESS(summary))
        if report.throttled:
            self.stdout.write(
                self.style.WARNING(f"Throttled by AWS: {', '.join(sorted(report.throttled))} (backing off).")
            )

    @staticmethod
    def snapshot(ids: list[int] | None = None) -> dict[int, dict]:
        """The watched fields of the SageMaker jobs a poll may touch (or of these jobs)."""
        jobs = TrainingJob.objects.filter(backend=Backend.SAGEMAKER)
        if ids is None:
            jobs = jobs.filter(
                ~Q(status__in=FINAL_STATES)
                | Q(sagemaker_status__in=sagemaker.AWS_ACTIVE)
                | Q(sagemaker_status__in=sagemaker.AWS_FINAL, sagemaker_log_state__drained=False)
            )
        else:
            jobs = jobs.filter(pk__in=ids)
        return {row["id"]: row for row in jobs.values("id", "name", *WATCHED)}

    @staticmethod
    def changes(before: dict[int, dict], after: dict[int, dict]) -> list[str]:
        lines = []
        for pk, old in before.items():
            new = after.get(pk)
            if new is None:
                lines.append(f"job {pk} “{old['name']}”: deleted meanwhile")
                continue
            moved = []
            if old["status"] != new["status"]:
                moved.append(f"{old['status']} → {new['status']}")
            aws_old = " / ".join(filter(None, (old["sagemaker_status"], old["sagemaker_secondary_status"])))
            aws_new = " / ".join(filter(None, (new["sagemaker_status"], new["sagemaker_secondary_status"])))
            if aws_old != aws_new:
                moved.append(f"AWS {aws_old or '–'} → {aws_new or '–'}")
            if (old["step"], old["total_steps"]) != (new["step"], new["total_steps"]):
                moved.append(f"step {old['step']:,} → {new['step']:,} of {new['total_steps']:,}")
            if Decimal(old["cost_usd"]) != Decimal(new["cost_usd"]):
                moved.append(f"cost {reports.money(old['cost_usd'])} → {reports.money(new['cost_usd'])}")
            if moved:
                lines.append(f"job {pk} “{new['name']}”: " + "; ".join(moved))
        return lines
