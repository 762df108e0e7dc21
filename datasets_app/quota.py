"""Each user's dataset storage quota: what their files take, and what an upload or a preparation may add.

Usage is the sum of the datasets' `stored_bytes` (the upload and its prepared
samples, kept on the row as they are stored), so no request lists the storage.
The quota is the profile's own or the site's DATASET_STORAGE_QUOTA_MB.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Sum
from django.template.defaultfilters import filesizeformat

from accounts.models import dataset_storage_quota_bytes

from .models import Dataset
from .readers import PreparationError

ASK_FOR_MORE = "Delete datasets you no longer need, or ask an operator for a larger quota."


class QuotaExceeded(PreparationError):
    """Storing this would take the owner past their quota; the message says the figures."""


@dataclass(frozen=True)
class StorageUsage:
    used: int
    quota: int

    @property
    def left(self) -> int:
        return max(0, self.quota - self.used)

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.quota)) if self.quota else 100

    def describe(self) -> str:
        return f"{filesizeformat(self.used)} of your {filesizeformat(self.quota)} dataset storage is in use"


def storage_usage(owner_id: int, excluding: Dataset | None = None) -> StorageUsage:
    datasets = Dataset.objects.filter(owner_id=owner_id)
    if excluding is not None:
        datasets = datasets.exclude(pk=excluding.pk)
    used = datasets.aggregate(total=Sum("stored_bytes"))["total"] or 0
    return StorageUsage(used=used, quota=dataset_storage_quota_bytes(owner_id))


def check_upload(owner_id: int, size: int) -> None:
    usage = storage_usage(owner_id)
    if size > usage.left:
        raise QuotaExceeded(upload_refusal(usage, size))


def upload_refusal(usage: StorageUsage, size: int | None = None) -> str:
    """Why an upload is refused; without `size` when it was stopped while streaming in."""
    this_file = "This file" if size is None else f"This file ({filesizeformat(size)})"
    return (
        f"{this_file} does not fit: {usage.describe()}, {filesizeformat(usage.left)} left. "
        f"Nothing was kept. {ASK_FOR_MORE}"
    )


def samples_allowance(dataset: Dataset) -> int:
    """Bytes the dataset's prepared samples may take: its upload and the other datasets count first."""
    usage = storage_usage(dataset.owner_id, excluding=dataset)
    return max(0, usage.left - dataset.size_bytes)


def samples_too_large(dataset: Dataset, allowance: int) -> QuotaExceeded:
    usage = storage_usage(dataset.owner_id, excluding=dataset)
    return QuotaExceeded(
        f"Preparing stopped: the samples would take more than {filesizeformat(allowance)}, all that is left "
        f"of your dataset storage quota ({filesizeformat(usage.quota)}; your other datasets and this upload "
        f"take {filesizeformat(usage.used + dataset.size_bytes)}). Nothing was kept. {ASK_FOR_MORE}"
    )
