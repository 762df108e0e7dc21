from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from datasets_app import actions
from datasets_app.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "status",
        "shown_format",
        "samples",
        "tokens",
        "size_bytes",
        "stored_bytes",
        "created",
    ]
    list_filter = ["status", "format", "created", ("owner", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["owner"]
    search_fields = ["name", "original_filename", "owner__email", "uuid"]
    readonly_fields = [
        "uuid",
        "owner",
        "original_filename",
        "status",
        "error",
        "task_id",
        "rows_read",
        "raw_file",
        "train_file",
        "validation_file",
        "size_bytes",
        "stored_bytes",
        "stats",
        "preview",
        "created",
        "updated",
        "preparation_started_at",
        "heartbeat_at",
        "prepared_at",
    ]
    exclude = ["sample_index"]
    actions = ["prepare_again"]
    date_hierarchy = "created"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A dataset comes from an upload or `import_dataset`, which store and prepare its file.
        return False

    @admin.action(description="Prepare again with the current settings")
    def prepare_again(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        queued = 0
        for dataset in queryset:
            try:
                actions.prepare_again(
                    dataset,
                    actions.ReadOptions(
                        format=dataset.format,
                        txt_mode=dataset.txt_mode,
                        mapping=dataset.mapping,
                        validation_fraction=dataset.validation_fraction,
                    ),
                )
            except actions.PreparationError as exc:
                self.message_user(request, f"{dataset}: {exc}", messages.WARNING)
            else:
                queued += 1
        self.message_user(request, f"{queued} dataset(s) queued for preparation.")

    def delete_model(self, request: HttpRequest, obj: Dataset) -> None:
        actions.delete_dataset(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        for dataset in queryset:
            actions.delete_dataset(dataset)
