"""Each user's dataset storage quota: uploads and preparations stay inside it, and the user sees it."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.defaultfilters import filesizeformat

from accounts.models import get_profile
from datasets_app import actions
from datasets_app.models import Dataset
from datasets_app.tests.conftest import make_dataset, stored_files, task_folders

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


def csv_of(size: int) -> bytes:
    """A two-column CSV of about `size` bytes whose samples are about as large as the file."""
    row = "question {n},answer {n} " + "x" * 200
    lines = ["prompt,completion"]
    total = 0
    n = 0
    while total < size:
        line = row.format(n=n)
        lines.append(line)
        total += len(line) + 1
        n += 1
    return "\n".join(lines).encode()


def post_upload(client, data: bytes, filename: str = "data.csv"):
    form = {"file": SimpleUploadedFile(filename, data), "format": "auto", "txt_mode": "line"}
    form["validation_percent"] = "5"
    return client.post("/datasets/upload/", form)


def size(number: int) -> str:
    return filesizeformat(number)


def test_an_upload_that_does_not_fit_in_the_quota_is_refused_while_streaming_with_the_figures(
    owner, owner_client, settings
):
    profile = get_profile(owner)
    profile.dataset_storage_quota_mb = 1
    profile.save()
    first = make_dataset(owner, csv_of(300_000))
    used = first.stored_bytes

    response = post_upload(owner_client, csv_of(MB - used + 100_000))

    assert response.status_code == 400
    page = response.content.decode()
    assert f"This file does not fit: {size(used)} of your {size(MB)} dataset storage is in use" in page
    assert f"{size(MB - used)} left. Nothing was kept." in page
    assert "ask an operator for a larger quota" in page
    assert list(Dataset.objects.all()) == [first]
    assert stored_files(settings.MEDIA_ROOT) == sorted(first.stored_keys())


def test_an_import_past_the_quota_is_refused_too(owner, settings):
    settings.DATASET_STORAGE_QUOTA_MB = 1
    data = csv_of(MB + 1)

    with pytest.raises(actions.quota.QuotaExceeded, match=rf"This file \({size(len(data))}\) does not fit"):
        actions.create_dataset(owner, ContentFile(data, name="big.csv"), "big.csv", actions.ReadOptions())

    assert stored_files(settings.MEDIA_ROOT) == []


def test_users_without_their_own_quota_have_the_sites(owner_client, settings):
    settings.DATASET_STORAGE_QUOTA_MB = 1

    response = post_upload(owner_client, csv_of(MB + 1))

    assert response.status_code == 400
    assert f"{size(0)} of your {size(MB)} dataset storage is in use" in response.content.decode()
    assert Dataset.objects.count() == 0


def test_a_preparation_whose_samples_would_not_fit_fails_and_keeps_nothing(owner, settings):
    settings.DATASET_STORAGE_QUOTA_MB = 1
    data = csv_of(600_000)  # fits as an upload; its samples (as large again) do not

    dataset = make_dataset(owner, data)

    assert dataset.status == Dataset.Status.FAILED
    left = MB - len(data)
    assert dataset.error.startswith(f"Preparing stopped: the samples would take more than {size(left)}")
    assert f"of your dataset storage quota ({size(MB)}; your other datasets and this upload" in dataset.error
    assert "Nothing was kept." in dataset.error
    assert dataset.stored_bytes == 0
    assert stored_files(settings.MEDIA_ROOT) == []
    assert task_folders(settings) == []


def test_usage_is_what_the_stored_files_take_and_deleting_frees_it(owner, outsider, settings):
    dataset = make_dataset(owner, csv_of(50_000))
    make_dataset(outsider, csv_of(20_000))
    files = [settings.MEDIA_ROOT / key for key in dataset.stored_keys()]

    assert dataset.status == Dataset.Status.READY
    assert dataset.stored_bytes == sum(path.stat().st_size for path in files)
    assert actions.quota.storage_usage(owner.pk).used == dataset.stored_bytes

    actions.delete_dataset(dataset)
    assert actions.quota.storage_usage(owner.pk).used == 0


def test_the_settings_page_shows_the_storage_in_use_and_the_quota(owner, owner_client, outsider):
    dataset = make_dataset(owner, csv_of(50_000))
    make_dataset(outsider, csv_of(20_000))
    profile = get_profile(owner)
    profile.dataset_storage_quota_mb = 200
    profile.save()

    page = owner_client.get("/settings/").content.decode()

    assert "Dataset storage:" in page
    assert f"{size(dataset.stored_bytes)} of {size(200 * MB)} used (0%)" in page
    # The user cannot raise it themselves.
    assert "dataset_storage_quota_mb" not in page


def test_the_datasets_page_shows_it_beside_the_upload_form(owner_client, settings):
    settings.DATASET_STORAGE_QUOTA_MB = 2048

    page = owner_client.get("/datasets/").content.decode()

    assert f"{size(0)} of {size(2048 * MB)} used (0%)" in page


def test_an_operator_sets_a_users_quota_in_the_admin(client, staff, owner):
    client.force_login(staff)
    profile = get_profile(owner)

    assert "dataset_storage_quota_mb" in client.get(f"/admin/auth/user/{owner.pk}/change/").content.decode()
    response = client.post(
        f"/admin/accounts/profile/{profile.pk}/change/",
        {
            "user": owner.pk,
            "monthly_budget_usd": "50.00",
            "dataset_storage_quota_mb": "20000",
            "email_notifications": "on",
        },
    )

    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.dataset_storage_quota_mb == 20000
    assert actions.quota.storage_usage(owner.pk).quota == 20000 * MB


def test_operators_see_what_a_dataset_takes_and_cannot_edit_it(client, staff, owner):
    dataset = make_dataset(owner, csv_of(50_000))
    client.force_login(staff)

    page = client.get(f"/admin/datasets_app/dataset/{dataset.pk}/change/").content.decode()

    assert "Stored bytes" in page
    assert 'name="stored_bytes"' not in page
    assert 'name="heartbeat_at' not in page
