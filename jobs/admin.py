from django.contrib import admin

from jobs.models import BaseModel, InstanceType, TrainingJob


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "hub_id",
        "family",
        "architecture",
        "parameters",
        "context_length",
        "gated",
        "is_active",
    ]
    list_filter = ["family", "architecture", "gated", "is_active"]
    search_fields = ["name", "hub_id"]
    list_editable = ["is_active"]


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "vcpus",
        "memory_gib",
        "gpu_type",
        "gpu_count",
        "price_per_hour_usd",
        "price_date",
    ]
    list_filter = ["gpu_type", "is_active"]
    search_fields = ["name"]


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "status",
        "backend",
        "base_model",
        "step",
        "total_steps",
        "cost_usd",
        "created_at",
    ]
    list_filter = ["status", "backend", "instance_type"]
    list_select_related = ["owner", "base_model", "instance_type"]
    search_fields = ["name", "owner__email", "sagemaker_job_name"]
    readonly_fields = [
        "status", "status_message", "celery_task_id", "step", "total_steps", "epoch", "loss", "eval_loss",
        "metrics", "log_seq", "sagemaker_job_name", "sagemaker_status", "sagemaker_secondary_status",
        "sagemaker_log_state", "sagemaker_last_modified", "model_artifacts_uri", "model_prefix", "log_key",
        "billable_seconds", "cost_usd", "created_at", "started_at", "training_started_at", "finished_at",
        "heartbeat_at", "stop_requested_at", "notified_at",
    ]  # fmt: skip
    raw_id_fields = ["owner", "dataset"]
