"""Upload → prepare_dataset task → preview, and every way an upload can go wrong."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import StopUpload
from django.test import RequestFactory

from datasets_app import actions
from datasets_app.models import Dataset
from datasets_app.tasks import prepare_dataset
from datasets_app.tests.conftest import SURVEY_HEADER, stored_files
from datasets_app.uploads import SizeLimitUploadHandler

pytestmark = pytest.mark.django_db


def post_upload(client, data: bytes, filename: str = "survey.csv", htmx: bool = False, **fields):
    form = {"file": SimpleUploadedFile(filename, data), "format": "auto", "txt_mode": "line"}
    form.setdefault("validation_percent", "5")
    form.update(fields)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post("/datasets/upload/", form, headers=headers)


def test_upload_stores_the_file_under_the_owners_prefix_and_queues_preparation(
    owner_client, owner, survey_bytes, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_upload(owner_client, survey_bytes, "Ngā raraunga ../../etc/passwd.csv", name="")

    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert response.url == f"/datasets/{dataset.pk}/"
    assert dataset.owner == owner
    assert dataset.status == Dataset.Status.UPLOADED
    assert dataset.name == "passwd"
    assert dataset.original_filename == "passwd.csv"
    assert dataset.size_bytes == len(survey_bytes)
    assert dataset.raw_file == f"users/{owner.pk}/datasets/{dataset.uuid}/raw"
    assert stored_files(settings.MEDIA_ROOT) == [dataset.raw_file]
    assert len(callbacks) == 1 and dataset.task_id


def test_upload_then_task_then_preview(owner_client, survey_bytes):
    post_upload(owner_client, survey_bytes, "survey.csv", name="Business survey")
    dataset = Dataset.objects.get()

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY
    assert dataset.name == "Business survey"
    assert dataset.samples == 3 and dataset.tokens > 0
    assert dataset.stats["rejected_examples"] == [
        {"line": 5, "reason": "expected 10 columns like the header, found 11"}
    ]
    assert dataset.train_file.startswith(dataset.storage_prefix)
    page = owner_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "Industry_name_NZSIOC: Māori Authorities" in page
    assert "Value: 1,234" in owner_client.get(f"/datasets/{dataset.pk}/samples/").content.decode()


def test_htmx_upload_redirects_the_browser(owner_client, survey_bytes):
    response = post_upload(owner_client, survey_bytes, htmx=True)

    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/datasets/{Dataset.objects.get().pk}/"


def test_the_task_is_idempotent_and_quiet_about_missing_rows(owner_client, survey_bytes):
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()

    prepare_dataset(dataset.pk)
    first = Dataset.objects.get().prepared_at
    prepare_dataset(dataset.pk)  # a repeated message: nothing to claim
    prepare_dataset(dataset.pk + 1000)  # a row that is gone

    assert Dataset.objects.get().prepared_at == first


def _xlsx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


BAD_UPLOADS = [
    (b"", "data.csv", {}, "The file is empty."),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "photo.csv", {}, "This file is a PNG image, not text."),
    (b"a,b\x00\x00\x01\n1,2\n", "data.csv", {}, "it contains NUL bytes"),
    (_xlsx(), "book.xlsx", {}, "an Excel workbook (.xlsx), which is not supported"),
    (b"a,b\n1,2\n", "data.csv", {"mapping": "text:Nope"}, "names column &#x27;Nope&#x27;"),
    (b"a,b\n1,2\n", "data.csv", {"mapping": "prompt:a"}, "prompt:COLUMN,completion:COLUMN"),
    (b'{\n  "rows": [1]\n}', "data.json", {}, "must be a list of objects"),
    (b"a,b\n", "data.csv", {"validation_percent": "80"}, "less than or equal to 50"),
]


@pytest.mark.parametrize(("data", "filename", "fields", "message"), BAD_UPLOADS)
@pytest.mark.parametrize("htmx", [False, True])
def test_bad_uploads_store_nothing_and_say_why(owner_client, settings, data, filename, fields, message, htmx):
    response = post_upload(owner_client, data, filename, htmx=htmx, **fields)

    assert response.status_code == (200 if htmx else 400)
    assert message in response.content.decode()
    assert ("<html" in response.content.decode()) is not htmx
    assert Dataset.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []


def test_missing_file_is_a_message(owner_client):
    response = owner_client.post("/datasets/upload/", {"format": "auto", "validation_percent": "5"})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_upload_over_the_limit_is_refused_while_streaming(owner_client, settings):
    settings.DATASET_MAX_UPLOAD_MB = 1
    data = SURVEY_HEADER.encode() + b"\n" + b"2023,a,b,c,d,e,f,g,1,h\n" * 60_000  # ~1.4 MB

    response = post_upload(owner_client, data)

    assert response.status_code == 400
    assert "The file is larger than 1.0\xa0MB, the limit for one upload." in response.content.decode()
    assert Dataset.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []


def test_size_limit_handler_stops_a_body_of_unknown_length():
    request = RequestFactory().post("/")
    handler = SizeLimitUploadHandler(request, max_bytes=100)
    handler.handle_raw_input(None, {}, None, b"boundary")

    assert handler.receive_data_chunk(b"x" * 60, 0) == b"x" * 60
    with pytest.raises(StopUpload):
        handler.receive_data_chunk(b"x" * 60, 60)
    assert request.upload_too_large is True


def test_failed_preparation_says_why_and_removes_the_stored_file(owner_client, settings):
    post_upload(owner_client, b"\xef\xbb\xbf" + SURVEY_HEADER.encode() + b"\r\n")
    dataset = Dataset.objects.get()
    assert stored_files(settings.MEDIA_ROOT)

    prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error.startswith("The file has a header row but no data rows below it")
    assert stored_files(settings.MEDIA_ROOT) == []
    page = owner_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "The file has a header row but no data rows below it" in page
    assert "upload it again" in page


def test_an_unexpected_error_fails_the_dataset_and_is_raised_for_the_logs(
    owner_client, survey_bytes, settings, monkeypatch
):
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(actions, "prepare", broken)
    with pytest.raises(RuntimeError):
        prepare_dataset(dataset.pk)

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert dataset.error == actions.UNEXPECTED_FAILURE
    assert stored_files(settings.MEDIA_ROOT) == []


def test_a_dataset_deleted_while_preparing_leaves_nothing_behind(
    owner_client, survey_bytes, settings, monkeypatch
):
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()
    real_prepare = actions.prepare

    def prepare_then_lose_the_row(*args, **kwargs):
        result = real_prepare(*args, **kwargs)
        Dataset.objects.filter(pk=dataset.pk).delete()
        return result

    monkeypatch.setattr(actions, "prepare", prepare_then_lose_the_row)
    assert actions.run_preparation(dataset.pk) is None
    assert stored_files(settings.MEDIA_ROOT) == []


def test_the_first_rows_show_while_the_dataset_waits_for_a_worker(owner_client, survey_bytes):
    post_upload(owner_client, survey_bytes)
    dataset = Dataset.objects.get()

    page = owner_client.get(f"/datasets/{dataset.pk}/").content.decode()

    assert dataset.status == Dataset.Status.UPLOADED
    assert 'hx-trigger="every 2s"' in page
    assert "<code>all-columns</code>" in page
    assert "<code>Industry_name_NZSIOC</code>" in page
    assert "Industry_name_NZSIOC: Māori Authorities" in page
    assert "the figures follow once every row is read" in page


def test_the_web_process_never_loads_a_tokenizer_or_torch():
    import subprocess
    import sys

    code = (
        "import django, os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'llmtuner.settings'; django.setup(); "
        "import datasets_app.views, datasets_app.actions, datasets_app.tasks; "
        "print(sorted(m for m in ('tokenizers', 'torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_upload_still_checks_csrf(owner, survey_bytes, settings):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    response = post_upload(client, survey_bytes)

    assert response.status_code == 403
    assert Dataset.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []
