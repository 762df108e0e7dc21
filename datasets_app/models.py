"""A user's dataset: the uploaded file, how it is read, and the training samples made from it.

What other apps read (the jobs app, SageMaker channels):

- `train_file`, `validation_file`: storage keys (in the default storage, S3
  or local media) of the prepared JSONL files, one sample a line, each
  {"text"}, {"prompt", "completion"} or {"messages": [{"role", "content"}]};
  `stats["shape"]` says which. Empty until the dataset is ready;
  `validation_file` holds no lines when the validation fraction is 0.
- `samples`, `tokens`: properties over `stats["samples"]` and
  `stats["tokens"]` (exact count with `stats["tokenizer"]`, GPT-2 by
  default, on the sample text without chat template or special tokens);
  `stats["train_tokens"]` / `stats["validation_tokens"]` split it.
- `is_ready`: status is READY and the files exist.

State changes go through the named methods below (`claim_for_preparation`,
`mark_ready`, `mark_failed`, `queue_preparation`), each a narrow save or a
conditional update. Storage keys live under `storage_prefix`, which is made of
the owner's id and a random UUID, never of the client's file name.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

# A worker that died mid-preparation leaves the row in PREPARING; after this
# long its owner may prepare it again.
STALE_PREPARATION = timedelta(minutes=30)


class Dataset(models.Model):
    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Queued"
        PREPARING = "preparing", "Preparing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    FINAL_STATES = frozenset({Status.READY, Status.FAILED})

    class Format(models.TextChoices):
        AUTO = "auto", "Detect automatically"
        CSV = "csv", "CSV"
        TSV = "tsv", "TSV"
        JSON = "json", "JSON (a list of objects)"
        JSONL = "jsonl", "JSON Lines"
        TXT = "txt", "Plain text"

    class TxtMode(models.TextChoices):
        LINE = "line", "One sample per line"
        PARAGRAPH = "paragraph", "One sample per paragraph (blank-line separated)"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    original_filename = models.CharField(max_length=255, help_text="The uploaded file's name: a label only.")

    # How to read it (what the user chose; stats["format"] / stats["mapping"] say what was used).
    format = models.CharField(max_length=8, choices=Format, default=Format.AUTO)
    txt_mode = models.CharField(max_length=10, choices=TxtMode, default=TxtMode.LINE)
    mapping = models.CharField(max_length=2000, blank=True, help_text="Empty: chosen from the columns.")
    validation_fraction = models.FloatField(default=0.05)

    status = models.CharField(max_length=10, choices=Status, default=Status.UPLOADED, db_index=True)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    rows_read = models.BigIntegerField(default=0, help_text="Progress while preparing.")

    # Storage keys in the default storage, under storage_prefix.
    raw_file = models.CharField(max_length=500, blank=True)
    train_file = models.CharField(max_length=500, blank=True)
    validation_file = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0, help_text="Size of the uploaded file.")
    stored_bytes = models.BigIntegerField(
        default=0, help_text="What its stored files take (the upload and its samples): counts to the quota."
    )

    stats = models.JSONField(default=dict, blank=True)
    preview = models.JSONField(default=list, blank=True)
    sample_index = models.JSONField(
        default=dict, blank=True, help_text="Byte offsets of every Nth sample in each file, for paging."
    )

    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    preparation_started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Written while preparing; a preparation gone silent is reaped."
    )
    prepared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["owner", "-created"])]

    def __str__(self) -> str:
        return self.name

    # --- What other code reads ---

    @property
    def samples(self) -> int:
        return int(self.stats.get("samples", 0))

    @property
    def tokens(self) -> int:
        return int(self.stats.get("tokens", 0))

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATES

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY and bool(self.train_file)

    @property
    def shown_format(self) -> str:
        """The format read (once known), else the one asked for."""
        return str(self.stats.get("format") or self.format)

    @property
    def storage_prefix(self) -> str:
        return f"users/{self.owner_id}/datasets/{self.uuid}/"

    def stored_keys(self) -> list[str]:
        return [key for key in (self.raw_file, self.train_file, self.validation_file) if key]

    @property
    def can_prepare_again(self) -> bool:
        if not self.raw_file:
            return False
        if self.status == self.Status.PREPARING:
            started = self.preparation_started_at or self.updated
            return started < timezone.now() - STALE_PREPARATION
        return self.status != self.Status.UPLOADED

    # --- State changes ---

    def queue_preparation(self, task_id: str) -> None:
        """Back to UPLOADED (queued) with this task id; the task is sent after commit by the caller."""
        self.status = self.Status.UPLOADED
        self.task_id = task_id
        self.error = ""
        self.rows_read = 0
        self.save(
            update_fields=[
                "status",
                "task_id",
                "error",
                "rows_read",
                "format",
                "txt_mode",
                "mapping",
                "validation_fraction",
                "stats",
                "preview",
                "updated",
            ]
        )

    @classmethod
    def claim_for_preparation(cls, pk: int) -> Dataset | None:
        """Move a queued dataset to PREPARING; None when it is gone or someone else has it."""
        now = timezone.now()
        claimed = cls.objects.filter(pk=pk, status=cls.Status.UPLOADED).update(
            status=cls.Status.PREPARING,
            preparation_started_at=now,
            heartbeat_at=now,
            rows_read=0,
            updated=now,
        )
        if not claimed:
            return None
        return cls.objects.filter(pk=pk).first()

    def record_progress(self, rows: int) -> bool:
        """Rows read so far, and a heartbeat; False when the row is gone or no longer this preparation's."""
        return bool(self._this_preparation().update(rows_read=rows, heartbeat_at=timezone.now()))

    def _this_preparation(self) -> models.QuerySet[Dataset]:
        # A dataset prepared again meanwhile has a new task id: the old task's work is not its own.
        return type(self).objects.filter(pk=self.pk, status=self.Status.PREPARING, task_id=self.task_id)

    def mark_ready(
        self,
        train_file: str,
        validation_file: str,
        stats: dict[str, Any],
        preview: list[dict[str, Any]],
        sample_index: dict[str, Any],
    ) -> bool:
        """PREPARING → READY with the results; False when the row is gone or no longer preparing."""
        changes = {
            "status": self.Status.READY,
            "error": "",
            "train_file": train_file,
            "validation_file": validation_file,
            "stats": stats,
            "preview": preview,
            "sample_index": sample_index,
            "rows_read": stats.get("rows", 0),
            "stored_bytes": self.size_bytes + stats.get("train_bytes", 0) + stats.get("validation_bytes", 0),
            "prepared_at": timezone.now(),
        }
        return self._finish(changes)

    def mark_failed(self, reason: str) -> bool:
        """PREPARING → FAILED with the reason for its owner; the caller removes the stored files."""
        changes = {
            "status": self.Status.FAILED,
            "error": reason,
            "raw_file": "",
            "train_file": "",
            "validation_file": "",
            "stored_bytes": 0,
            "stats": {},
            "preview": [],
            "sample_index": {},
            "prepared_at": timezone.now(),
        }
        return self._finish(changes)

    @classmethod
    def reap_stale(cls, pk: int, heartbeat_before: datetime, reason: str) -> bool:
        """PREPARING with no heartbeat since `heartbeat_before` → FAILED, its upload kept to prepare again.

        The caller removes the other stored files (samples of an earlier preparation).
        """
        now = timezone.now()
        return bool(
            cls.objects.filter(pk=pk, status=cls.Status.PREPARING, heartbeat_at__lt=heartbeat_before).update(
                status=cls.Status.FAILED,
                error=reason,
                train_file="",
                validation_file="",
                stored_bytes=models.F("size_bytes"),
                stats={},
                preview=[],
                sample_index={},
                prepared_at=now,
                updated=now,
            )
        )

    def _finish(self, changes: dict[str, Any]) -> bool:
        changes["updated"] = timezone.now()
        done = self._this_preparation().update(**changes)
        if done:
            for field, value in changes.items():
                setattr(self, field, value)
        return bool(done)

    def rename(self, name: str) -> None:
        self.name = name
        self.save(update_fields=["name", "updated"])
