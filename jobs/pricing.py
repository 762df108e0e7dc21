"""What SageMaker costs: the instance catalogue, job costs, monthly budgets.

Plain database and arithmetic, no AWS call: the web process calls these while
rendering (the launch form's budget check, the dashboard's spend), the
SageMaker poller calls them to price running and finished jobs.

- A running job costs ``(now − TrainingStartTime) × price × instance count``
  (on-demand price: for a spot job that is an upper bound until it ends).
- A finished job costs ``BillableTimeInSeconds × price × count``; with managed
  spot training BillableTimeInSeconds is below TrainingTimeInSeconds and the
  difference, priced the same way, is the spot saving.
- A month's spend is the cost of the user's jobs created this calendar month
  (UTC); jobs still queued or running also *reserve* what they are expected to
  cost, so several launches at once cannot together overrun the budget.

Estimates learn from past runs in jobs.history (it replaced the calibration factor that was here).
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from django.db.models import Sum
from django.utils import timezone

from jobs.models import FINAL_STATES, Backend, InstanceType, TrainingJob

CENT = Decimal("0.01")
COST_PLACES = Decimal("0.0001")
SECONDS_PER_HOUR = Decimal(3600)
# AWS's own ceiling for MaxRuntimeInSeconds (28 days).
SAGEMAKER_MAX_RUNTIME_SECONDS = 28 * 24 * 3600
# A job whose cap buys less than this could not even start its container.
MIN_RUNTIME_SECONDS = 300
LOCAL_FAMILY = "local"


def active_instance_types():
    return InstanceType.objects.filter(is_active=True)


def instance_family(name: str | None) -> str:
    """`ml.g5.12xlarge` → `g5`; None (this machine) → `local`."""
    if not name:
        return LOCAL_FAMILY
    parts = name.split(".")
    return parts[1] if len(parts) >= 3 else name


def hourly_rate(instance_type: InstanceType, count: int = 1) -> Decimal:
    return Decimal(str(instance_type.price_per_hour_usd)) * max(1, int(count))


def cost_for_seconds(seconds: float | int, instance_type: InstanceType, count: int = 1) -> Decimal:
    cost = Decimal(max(0, int(seconds))) / SECONDS_PER_HOUR * hourly_rate(instance_type, count)
    return cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


def running_cost(
    instance_type: InstanceType, count: int, started_at: datetime | None, now: datetime | None = None
) -> Decimal:
    """What a job that started training at `started_at` has cost so far."""
    if started_at is None:
        return Decimal("0.0000")
    now = now or timezone.now()
    return cost_for_seconds(max(0.0, (now - started_at).total_seconds()), instance_type, count)


def max_runtime_seconds(cap_usd: Decimal, instance_type: InstanceType, count: int, ceiling: int) -> int:
    """How long `cap_usd` buys on `count` × `instance_type`, rounded down, at most `ceiling`.

    This becomes the job's StoppingCondition.MaxRuntimeInSeconds, so AWS itself
    stops the job (and its billing) when the cap is spent.
    """
    rate = hourly_rate(instance_type, count)
    if rate <= 0:
        return min(ceiling, SAGEMAKER_MAX_RUNTIME_SECONDS)
    seconds = (Decimal(cap_usd) / rate * SECONDS_PER_HOUR).to_integral_value(rounding=ROUND_FLOOR)
    return int(max(0, min(int(seconds), ceiling, SAGEMAKER_MAX_RUNTIME_SECONDS)))


def cap_for_seconds(seconds: int, instance_type: InstanceType, count: int = 1) -> Decimal:
    """The smallest cap (whole cents) that buys `seconds`."""
    cost = Decimal(seconds) / SECONDS_PER_HOUR * hourly_rate(instance_type, count)
    return cost.quantize(CENT, rounding=ROUND_CEILING)


# --- budgets ------------------------------------------------------------------------------


def month_start(now: datetime | None = None) -> datetime:
    now = timezone.localtime(now or timezone.now(), timezone.get_fixed_timezone(0))
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def monthly_budget(user) -> Decimal:
    from accounts.models import get_profile

    return Decimal(get_profile(user).monthly_budget_usd)


def _this_months_jobs(user, now: datetime | None):
    return TrainingJob.objects.filter(owner=user, backend=Backend.SAGEMAKER, created_at__gte=month_start(now))


def month_to_date_spend(user, now: datetime | None = None) -> Decimal:
    """What the user's SageMaker jobs created this month have cost so far (running ones included)."""
    total = _this_months_jobs(user, now).aggregate(total=Sum("cost_usd"))["total"]
    return Decimal(total or 0).quantize(COST_PLACES)


def reserved_spend(user, now: datetime | None = None, *, exclude_job_id: int | None = None) -> Decimal:
    """What the user's unfinished SageMaker jobs are still expected to cost on top of their cost so far.

    Each reserves its estimate (or, without one, its cap) less what it has cost already.
    """
    jobs = _this_months_jobs(user, now).exclude(status__in=FINAL_STATES)
    if exclude_job_id is not None:
        jobs = jobs.exclude(pk=exclude_job_id)
    reserved = Decimal(0)
    for estimated, cap, cost in jobs.values_list("estimated_cost_usd", "max_cost_usd", "cost_usd"):
        expected = estimated if estimated is not None else (cap or Decimal(0))
        reserved += max(Decimal(0), Decimal(expected) - Decimal(cost))
    return reserved.quantize(COST_PLACES)


def remaining_budget(user, now: datetime | None = None, *, exclude_job_id: int | None = None) -> Decimal:
    left = (
        monthly_budget(user)
        - month_to_date_spend(user, now)
        - reserved_spend(user, now, exclude_job_id=exclude_job_id)
    )
    return left.quantize(COST_PLACES)


def check_budget(user, estimated_cost: Decimal | float | None, now: datetime | None = None) -> str | None:
    """Why a launch estimated at `estimated_cost` must be refused, with the figures; None when it fits."""
    if estimated_cost is None:
        return None
    estimated = Decimal(str(estimated_cost))
    budget = monthly_budget(user)
    spent = month_to_date_spend(user, now)
    reserved = reserved_spend(user, now)
    left = budget - spent - reserved
    if estimated <= left:
        return None
    reserved_text = f" and ${_money(reserved)} is reserved by jobs still running" if reserved > 0 else ""
    left_text = f"only ${_money(max(Decimal(0), left))} is left" if left > 0 else "nothing is left"
    return (
        f"This job is estimated to cost ${_money(estimated)}, but {left_text} of your "
        f"${_money(budget)} monthly budget: ${_money(spent)} has been spent this month{reserved_text}. "
        "Choose a smaller job or a cheaper instance type, or ask an operator to raise your budget."
    )


def _money(amount: Decimal) -> str:
    return f"{Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP):,}"
