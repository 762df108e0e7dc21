"""Cost reports for operators: SageMaker spend per user and per instance type, per calendar month.

Spend is counted the way jobs.pricing counts a user's month-to-date spend: the
`cost_usd` of SageMaker jobs, in the calendar month (UTC) the job was created.
The local backend costs nothing and is left out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db.models import Count, DecimalField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncMonth

from jobs import pricing
from jobs.models import Backend, TrainingJob

BY_USER = "user"
BY_INSTANCE_TYPE = "instance_type"
GROUPINGS = {BY_USER: "owner__email", BY_INSTANCE_TYPE: "instance_type__name"}
# A cell that starts with one of these is read as a formula by spreadsheets (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MONEY = DecimalField(max_digits=14, decimal_places=4)


@dataclass(frozen=True)
class SpendRow:
    month: date
    name: str  # the user's email address or the instance type's name
    jobs: int
    spend_usd: Decimal


@dataclass(frozen=True)
class MonthReport:
    month: date
    by_user: list[SpendRow]
    by_instance_type: list[SpendRow]

    @property
    def jobs(self) -> int:
        return sum(row.jobs for row in self.by_user)

    @property
    def spend_usd(self) -> Decimal:
        return sum((row.spend_usd for row in self.by_user), Decimal("0.0000"))


def sagemaker_jobs() -> QuerySet[TrainingJob]:
    return TrainingJob.objects.filter(backend=Backend.SAGEMAKER)


def month_of(value: datetime) -> date:
    value = value.astimezone(UTC) if value.tzinfo else value
    return date(value.year, value.month, 1)


def spend(by: str, start: date, end: date) -> list[SpendRow]:
    """Per month from `start` to `end` (first days of months, both included), newest month first."""
    group = GROUPINGS[by]
    rows = (
        sagemaker_jobs()
        .filter(created_at__gte=_as_datetime(start), created_at__lt=_as_datetime(_next_month(end)))
        .annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values("month", group)
        .annotate(jobs=Count("pk"), spend=Sum("cost_usd"))
        .order_by("-month", "-spend", group)
    )
    return [
        SpendRow(
            month=month_of(row["month"]),
            name=row[group] or "(none)",
            jobs=row["jobs"],
            spend_usd=Decimal(row["spend"] or 0).quantize(pricing.COST_PLACES),
        )
        for row in rows
    ]


def monthly_report(start: date, end: date) -> list[MonthReport]:
    """Both groupings month by month (two queries), newest month first; months without spend left out."""
    users, instance_types = spend(BY_USER, start, end), spend(BY_INSTANCE_TYPE, start, end)
    months = sorted({row.month for row in users}, reverse=True)
    return [
        MonthReport(
            month=month,
            by_user=[row for row in users if row.month == month],
            by_instance_type=[row for row in instance_types if row.month == month],
        )
        for month in months
    ]


def month_spend_subquery(now: datetime | None = None) -> Coalesce:
    """This month's SageMaker spend of the user in the outer query (for annotating a list of users).

    The same jobs as `pricing.month_to_date_spend`, in one query for the whole list.
    """
    jobs = (
        sagemaker_jobs()
        .filter(owner=OuterRef("pk"), created_at__gte=pricing.month_start(now))
        .order_by()
        .values("owner")
        .annotate(total=Sum("cost_usd"))
        .values("total")
    )
    return Coalesce(Subquery(jobs, output_field=MONEY), Value(Decimal(0)), output_field=MONEY)


def job_count_subquery() -> Coalesce:
    jobs = TrainingJob.objects.filter(owner=OuterRef("pk")).order_by().values("owner").annotate(n=Count("pk"))
    return Coalesce(Subquery(jobs.values("n")), Value(0))


# --- CSV -----------------------------------------------------------------------------------------


def csv_cell(value: object) -> str:
    """A cell as text that no spreadsheet runs as a formula: a leading apostrophe where it could."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_lines(rows: Iterable[Iterable[object]]) -> Iterator[str]:
    """Each row as one CSV line, every cell passed through `csv_cell`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def report_csv_rows(by: str, start: date, end: date) -> Iterator[list[object]]:
    yield ["month", "user" if by == BY_USER else "instance_type", "jobs", "spend_usd"]
    for row in spend(by, start, end):
        yield [row.month.strftime("%Y-%m"), row.name, row.jobs, row.spend_usd]


# --- months --------------------------------------------------------------------------------------


# The last month a report may cover: it counts up to the start of the month after, which must exist.
LAST_MONTH = date(date.max.year, 11, 1)


def _as_datetime(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_back(count: int, now: datetime | None = None) -> tuple[date, date]:
    """(first, last) month of the `count` months up to and including this one."""
    last = month_of(pricing.month_start(now))
    index = last.year * 12 + last.month - 1 - (count - 1)
    return date(index // 12, index % 12 + 1, 1), last


# --- plain-text tables for the management commands -------------------------------------------------


def text_table(
    headers: list[str], rows: list[list[object]], right: set[int] | frozenset[int] = frozenset()
) -> str:
    """Columns padded to their widest cell; the columns in `right` are right-aligned (numbers)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in cells)])


def money(amount: Decimal | None) -> str:
    return "" if amount is None else f"${Decimal(amount).quantize(pricing.CENT):,}"


def job_summary(job: TrainingJob) -> dict[str, object]:
    """What `job_status` shows of a job (owner and instance type selected with it)."""
    return {
        "id": job.pk,
        "name": job.name,
        "owner": job.owner.email,
        "backend": job.backend,
        "instance_type": job.instance_type.name if job.instance_type_id else None,
        "status": job.status,
        "status_message": job.status_message,
        "percent": job.percent,
        "step": job.step,
        "total_steps": job.total_steps,
        "cost_usd": str(job.cost_usd) if job.backend == Backend.SAGEMAKER else None,
        "estimated_cost_usd": None if job.estimated_cost_usd is None else str(job.estimated_cost_usd),
        "max_cost_usd": None if job.max_cost_usd is None else str(job.max_cost_usd),
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
