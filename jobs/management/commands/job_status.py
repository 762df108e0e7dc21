"""List training jobs with their state, progress and cost.

python manage.py job_status
python manage.py job_status --user alice@example.com --status active
python manage.py job_status --status failed --json
"""

from __future__ import annotations

import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from jobs import artifacts, batch, queueing, reports
from jobs.forms import ACTIVE_FILTER, JobFilterForm
from jobs.models import JobStatus, TrainingJob


class Command(BaseCommand):
    help = "List training jobs (newest first) with their state, progress and cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="only this user's jobs (email address)")
        parser.add_argument(
            "--status",
            choices=[ACTIVE_FILTER, *JobStatus.values],
            help=f"only jobs in this state ({ACTIVE_FILTER}: queued or running)",
        )
        parser.add_argument("--limit", type=int, default=100, help="at most this many jobs (default 100)")
        parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    def handle(self, *args, **options) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        jobs = TrainingJob.objects.select_related("owner", "instance_type").order_by("-created_at", "-pk")
        if options["user"]:
            try:
                jobs = jobs.filter(owner=batch.find_user(options["user"]))
            except batch.UnknownUser as error:
                raise CommandError(str(error)) from None
        jobs = JobFilterForm({"status": options["status"] or ""}).filter(jobs)
        total = jobs.count()
        summaries = [
            {**with_times(reports.job_summary(job), job), "evaluation": artifacts.evaluation_summary(job)}
            for job in jobs[: options["limit"]]
        ]
        # queue_position: 1 = next to start (a queued local job; None for any other).
        line = queueing.line()
        for summary in summaries:
            place = line.get(summary["id"])
            summary["queue_position"] = place.position if place else None
        if options["json"]:
            self.stdout.write(json.dumps(summaries, ensure_ascii=False, indent=2))
            return
        if not summaries:
            self.stdout.write("No jobs.")
            return
        self.stdout.write(self.table(summaries))
        shown = f"the newest {len(summaries)} of " if len(summaries) < total else ""
        self.stdout.write(f"\n{shown}{total} job{'s' if total != 1 else ''}")

    @staticmethod
    def table(summaries: list[dict]) -> str:
        rows = []
        for job in summaries:
            progress = f"{job['percent']} %"
            if job["total_steps"]:
                progress += f" {job['step']:,}/{job['total_steps']:,}"
            created = timezone.localtime(datetime.fromisoformat(job["created_at"]))
            rows.append(
                [
                    job["id"],
                    _cut(job["name"], 40),
                    job["owner"],
                    job["instance_type"] or job["backend"],
                    _status(job),
                    progress,
                    "free" if job["cost_usd"] is None else reports.money(job["cost_usd"]),
                    created.strftime("%Y-%m-%d %H:%M"),
                ]
            )
        headers = ["ID", "NAME", "OWNER", "WHERE", "STATUS", "PROGRESS", "COST", "CREATED"]
        return reports.text_table(headers, rows, right={0, 5, 6})


def _status(job: dict) -> str:
    position = job.get("queue_position")
    return f"{job['status']} ({queueing.ordinal(position)} in line)" if position else job["status"]


def with_times(summary: dict, job: TrainingJob) -> dict:
    """The job's times: estimated at launch (leaving the queue to completed), left the queue, ended."""
    summary["estimated_seconds"] = job.estimated_seconds
    summary["started_at"] = job.started_at.isoformat() if job.started_at else None
    summary["finished_at"] = job.finished_at.isoformat() if job.finished_at else None
    return summary


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
