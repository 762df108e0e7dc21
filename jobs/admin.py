"""The operators' admin of the jobs app: the model catalogue, instance prices, jobs and the cost report.

Job actions go through the same functions as the jobs pages (lifecycle.request_stop, lifecycle.mark_failed,
actions.retry_job, lifecycle.transition); nothing here saves a job's state itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from accounts import admin as accounts_admin
from jobs import actions, lifecycle, reports, resume
from jobs.models import (
    FINAL_STATES,
    Backend,
    BaseModel,
    InstanceType,
    JobStatus,
    LocalJobAllowance,
    TrainingJob,
)
from llmtuner import broker

SETTINGS_FIELDS = [
    "name",
    "owner",
    "dataset",
    "base_model",
    "backend",
    "method",
    "hyperparameters",
    "instance_type",
    "instance_count",
    "use_spot",
    "max_cost_usd",
]
# Written by the backends and the lifecycle only: an operator sees them but never types them.
PROGRESS_FIELDS = [
    "status",
    "status_message",
    "fail_reason",
    "attempt",
    "celery_task_id",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "eval_loss",
    "learning_rate",
    "tokens_per_second",
    "eta_seconds",
    "metrics",
    "log_seq",
]
COST_FIELDS = ["estimated_seconds", "estimated_cost_usd", "cost_usd", "billable_seconds", "training_seconds"]
AWS_FIELDS = [
    "sagemaker_job_name",
    "sagemaker_status",
    "sagemaker_secondary_status",
    "sagemaker_log_state",
    "sagemaker_last_modified",
    "sagemaker_described_at",
    "model_artifacts_uri",
]
OTHER_FIELDS = [
    "model_prefix",
    "log_key",
    "batch_key",
    "created_at",
    "started_at",
    "training_started_at",
    "finished_at",
    "heartbeat_at",
    "stop_requested_at",
    "notified_at",
]
# SageMaker states in which AWS still runs (and bills) the training job.
AWS_RUNNING = ("InProgress", "Stopping")


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "hub_id",
        "family",
        "architecture",
        "parameters_display",
        "context_length",
        "recommended_method",
        "gated",
        "is_active",
        "sort_order",
    ]
    list_filter = ["family", "architecture", "gated", "is_active"]
    search_fields = ["name", "hub_id"]
    list_editable = ["is_active", "sort_order"]

    @admin.display(description="Parameters", ordering="parameters")
    def parameters_display(self, obj: BaseModel) -> str:
        return obj.parameters_display


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "vcpus",
        "memory_gib",
        "gpu_type",
        "gpu_count",
        "price_per_hour_usd",
        "price_region",
        "price_date",
        "is_active",
    ]
    list_filter = ["gpu_type", "is_active", "price_region"]
    list_editable = ["price_per_hour_usd", "price_date", "is_active"]
    search_fields = ["name", "gpu_type"]


class MarkFailedForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="Shown to the job's owner as the reason it failed.",
    )


class MonthField(forms.CharField):
    """YYYY-MM (what <input type="month"> sends) as the first day of that month."""

    widget = forms.TextInput(attrs={"type": "month", "placeholder": "YYYY-MM"})

    def to_python(self, value) -> date | None:
        value = super().to_python(value)
        if not value:
            return None
        try:
            month = datetime.strptime(value, "%Y-%m").date()
        except ValueError:
            raise forms.ValidationError("Enter a month as YYYY-MM.") from None
        if month > reports.LAST_MONTH:
            raise forms.ValidationError(f"Enter a month up to {reports.LAST_MONTH:%Y-%m}.")
        return month


class CostReportForm(forms.Form):
    """?start=YYYY-MM&end=YYYY-MM&by=user|instance_type&format=csv; the last 12 months by default."""

    start = MonthField(required=False, label="From")
    end = MonthField(required=False, label="To")
    by = forms.ChoiceField(
        choices=[(reports.BY_USER, "user"), (reports.BY_INSTANCE_TYPE, "instance type")], required=False
    )
    format = forms.ChoiceField(choices=[("", "page"), ("csv", "CSV")], required=False)

    def clean(self):
        data = super().clean()
        default_start, default_end = reports.months_back(12)
        data["start"] = data.get("start") or default_start
        data["end"] = data.get("end") or default_end
        if data["start"] > data["end"]:
            self.add_error("end", "The last month must not come before the first.")
        data["by"] = data.get("by") or reports.BY_USER
        return data

    def period(self) -> tuple[date, date]:
        if self.is_valid():
            return self.cleaned_data["start"], self.cleaned_data["end"]
        return reports.months_back(12)


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner_email",
        "status",
        "backend",
        "instance_type",
        "base_model",
        "progress",
        "cost_usd",
        "created_at",
    ]
    list_filter = [
        "status",
        "backend",
        ("instance_type", admin.RelatedOnlyFieldListFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["owner", "base_model", "instance_type"]
    search_fields = ["name", "owner__email", "sagemaker_job_name", "batch_key"]
    date_hierarchy = "created_at"
    # A job's settings were checked and handed to its backend at launch; changing them here would
    # change nothing that runs. Only the name stays editable.
    readonly_fields = SETTINGS_FIELDS[1:] + PROGRESS_FIELDS + COST_FIELDS + AWS_FIELDS + OTHER_FIELDS
    actions = ["stop_jobs", "retry_jobs", "resume_jobs", "mark_failed", "poll_now"]
    fieldsets = [
        (None, {"fields": SETTINGS_FIELDS}),
        ("State", {"fields": PROGRESS_FIELDS}),
        ("Cost", {"fields": COST_FIELDS}),
        ("AWS", {"fields": AWS_FIELDS}),
        ("Storage and times", {"fields": OTHER_FIELDS}),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A job made here would never be queued: jobs come from the launch form or submit_jobs.
        return False

    @admin.display(description="Owner", ordering="owner__email")
    def owner_email(self, job: TrainingJob) -> str:
        return job.owner.email

    @admin.display(description="Progress", ordering="step")
    def progress(self, job: TrainingJob) -> str:
        if not job.total_steps:
            return f"{job.percent} %"
        return f"{job.percent} % ({job.step:,}/{job.total_steps:,})"

    # --- actions ---

    @admin.action(description="Stop the selected jobs", permissions=["change"])
    def stop_jobs(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        stopped = skipped = 0
        for job in queryset:
            if job.status not in FINAL_STATES and lifecycle.request_stop(job):
                stopped += 1
            else:
                skipped += 1
        self.message_user(request, f"{stopped} job(s) stopped or stopping.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} job(s) had already ended.", messages.WARNING)

    @admin.action(description="Retry the selected jobs (a new attempt each)", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        self._queue_next_attempts(
            request, queryset, actions.retry_job, actions.ActionError, "{} job(s) queued again."
        )

    @admin.action(description="Resume the selected jobs from their last checkpoint", permissions=["change"])
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        self._queue_next_attempts(
            request,
            queryset,
            resume.resume_job,
            resume.ResumeRefused,
            "{} job(s) resume from their last checkpoint.",
        )

    def _queue_next_attempts(
        self,
        request: HttpRequest,
        queryset: QuerySet[TrainingJob],
        make_next: Callable[[TrainingJob], tuple[TrainingJob, bool]],
        refused_error: type[Exception],
        done_message: str,
    ) -> None:
        """Make each job's next attempt with ``make_next`` (a refusal, ``refused_error``, is told per
        job; a job whose next attempt exists already is pointed at it), then ``done_message`` with
        the count of the attempts made."""
        made_count = 0
        for job in queryset.select_related("dataset", "owner", "base_model", "instance_type"):
            try:
                again, made = make_next(job)
            except refused_error as error:
                self.message_user(request, f"“{job.name}” (#{job.pk}): {error}", messages.WARNING)
                continue
            if made:
                made_count += 1
            else:
                self.message_user(
                    request,
                    f"“{job.name}” (#{job.pk}) was retried already: "
                    f"attempt {again.attempt} is job #{again.pk}.",
                    messages.INFO,
                )
        if made_count:
            self.message_user(request, done_message.format(made_count), messages.SUCCESS)

    @admin.action(description="Mark the selected jobs failed, with a reason…", permissions=["change"])
    def mark_failed(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> TemplateResponse | None:
        form = MarkFailedForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            states: Counter[str | None] = Counter()
            for job in queryset:
                state = lifecycle.mark_failed(job, reason)
                if state is not None:
                    lifecycle.append_log(job.pk, [f"Marked failed by {request.user}: {reason}"])
                states[state] += 1
            self.message_user(request, _marked_failed_summary(states), messages.SUCCESS)
            if states[None]:
                self.message_user(request, f"{states[None]} job(s) had already ended.", messages.WARNING)
            return None
        jobs = list(queryset.select_related("owner"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Mark jobs failed",
            "opts": self.model._meta,
            "form": form,
            "jobs": jobs,
            "still_running": [job for job in jobs if _still_running(job)],
            "running_on_aws": sum(
                1 for job in jobs if job.backend == Backend.SAGEMAKER and job.sagemaker_status in AWS_RUNNING
            ),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "action": "mark_failed",
        }
        return TemplateResponse(request, "admin/jobs/trainingjob/mark_failed.html", context)

    @admin.action(description="Poll SageMaker now", permissions=["change"])
    def poll_now(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        from jobs.backends import sagemaker
        from jobs.tasks import poll_sagemaker_jobs

        count = queryset.filter(backend=Backend.SAGEMAKER, sagemaker_status__in=AWS_RUNNING).count()
        if not count:
            self.message_user(
                request,
                "None of the selected jobs is running on SageMaker: nothing to poll.",
                messages.WARNING,
            )
            return
        if not sagemaker.is_configured():
            self.message_user(request, f"SageMaker is {sagemaker.unavailable_reason()}.", messages.ERROR)
            return
        broker.send_on_commit(poll_sagemaker_jobs)  # lost in an outage: the beat polls again soon
        self.message_user(
            request,
            f"A SageMaker poll is queued; it looks at every running SageMaker job, these {count} included.",
            messages.SUCCESS,
        )

    # --- the cost report ---

    def get_urls(self):
        report = self.admin_site.admin_view(self.cost_report_view)
        return [path("cost-report/", report, name="jobs_trainingjob_cost_report"), *super().get_urls()]

    def cost_report_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = CostReportForm(request.GET)
        valid = form.is_valid()
        start, end = form.period()
        if valid and form.cleaned_data["format"] == "csv":
            by = form.cleaned_data["by"]
            response = StreamingHttpResponse(
                reports.csv_lines(reports.report_csv_rows(by, start, end)), content_type="text/csv"
            )
            filename = f"llmtuner-spend-by-{by.replace('_', '-')}-{start:%Y-%m}-to-{end:%Y-%m}.csv"
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
            return response
        months = reports.monthly_report(start, end)
        context = {
            **self.admin_site.each_context(request),
            "title": "Cost report",
            "opts": self.model._meta,
            "form": form,
            "start": start,
            "end": end,
            "months": months,
            "total_usd": sum((month.spend_usd for month in months), Decimal("0.0000")),
            "total_jobs": sum(month.jobs for month in months),
        }
        return TemplateResponse(request, "admin/jobs/cost_report.html", context, status=200 if valid else 400)


def _marked_failed_summary(states: Counter[str | None]) -> str:
    stopping = states[JobStatus.STOPPING]
    marked = states[JobStatus.FAILED] + stopping
    if not stopping:
        return f"{marked} job(s) marked failed."
    return (
        f"{marked} job(s) marked failed; {stopping} of them still ran: "
        "they are being stopped and end failed once stopped."
    )


def _still_running(job: TrainingJob) -> bool:
    if job.backend == Backend.SAGEMAKER:
        return job.sagemaker_status in AWS_RUNNING
    return job.status not in FINAL_STATES and job.status != JobStatus.QUEUED


# --- users: this month's spend and number of jobs ---
# The user admin is accounts'; these columns read jobs, so jobs adds them and accounts imports no jobs.

User = get_user_model()
admin.site.unregister(User)


class LocalJobAllowanceInline(admin.StackedInline):
    model = LocalJobAllowance
    can_delete = True
    verbose_name = "Local jobs allowed"
    verbose_name_plural = "Local jobs allowed (empty: the LOCAL_JOBS_PER_USER setting)"


@admin.register(User)
class UserAdmin(accounts_admin.UserAdmin):
    inlines = [*accounts_admin.UserAdmin.inlines, LocalJobAllowanceInline]
    list_display = [
        "email",
        "username",
        "monthly_budget",
        "spend_this_month",
        "job_count",
        "is_staff",
        "is_active",
        "date_joined",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Subqueries in the one list query: no query per row.
        return (
            super()
            .get_queryset(request)
            .annotate(month_spend_usd=reports.month_spend_subquery(), jobs_count=reports.job_count_subquery())
        )

    @admin.display(description="Spent this month (USD)", ordering="month_spend_usd")
    def spend_this_month(self, user) -> str:
        return f"{Decimal(user.month_spend_usd):,.2f}"

    @admin.display(description="Jobs", ordering="jobs_count")
    def job_count(self, user) -> int:
        return user.jobs_count
