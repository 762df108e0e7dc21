"""Dataset pages: who may see what, and what the owner sees."""

from __future__ import annotations

import json

import pytest

from datasets_app.models import Dataset
from datasets_app.tests.conftest import make_dataset, stored_files, survey_csv

pytestmark = pytest.mark.django_db


def urls(pk: int) -> list[tuple[str, str]]:
    return [
        ("get", f"/datasets/{pk}/"),
        ("get", f"/datasets/{pk}/status/"),
        ("get", f"/datasets/{pk}/samples/"),
        ("get", f"/datasets/{pk}/samples/?split=validation&page=2"),
        ("get", f"/datasets/{pk}/download/train/"),
        ("get", f"/datasets/{pk}/download/validation/"),
        ("get", f"/datasets/{pk}/delete/"),
        ("post", f"/datasets/{pk}/delete/"),
        ("post", f"/datasets/{pk}/rename/"),
        ("post", f"/datasets/{pk}/prepare/"),
    ]


def test_anonymous_is_sent_to_log_in(client, ready_dataset):
    for method, url in [("get", "/datasets/"), ("post", "/datasets/upload/"), *urls(ready_dataset.pk)]:
        response = getattr(client, method)(url, {"name": "x"} if method == "post" else None)

        assert response.status_code == 302, url
        assert response.url.startswith("/accounts/login/"), url


def test_every_dataset_url_is_404_for_an_outsider(client, outsider, ready_dataset, settings):
    client.force_login(outsider)
    before = stored_files(settings.MEDIA_ROOT)

    for method, url in urls(ready_dataset.pk):
        data = {"name": "mine now", "format": "csv", "mapping": "", "validation_percent": "5"}
        response = getattr(client, method)(url, data if method == "post" else None)

        assert response.status_code == 404, url
    ready_dataset.refresh_from_db()
    assert ready_dataset.name == "survey"
    assert ready_dataset.status == Dataset.Status.READY
    assert stored_files(settings.MEDIA_ROOT) == before
    assert "survey" not in client.get("/datasets/").content.decode()


def test_list_shows_the_owners_datasets_with_their_figures(owner_client, ready_dataset):
    response = owner_client.get("/datasets/")

    assert response.status_code == 200
    page = response.content.decode()
    assert f'href="/datasets/{ready_dataset.pk}/"' in page
    assert ">CSV<" in page
    assert f">{ready_dataset.samples}<" in page
    assert f">{ready_dataset.tokens:,}<" in page
    assert 'class="badge ready"' in page
    assert 'type="file"' in page and "data-dropzone" in page


def test_detail_shows_stats_rejected_rows_histogram_and_preview(owner_client, ready_dataset):
    response = owner_client.get(f"/datasets/{ready_dataset.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-stat="samples">3<' in page
    assert f'data-stat="tokens">{ready_dataset.tokens:,}<' in page
    assert "Rejected rows (1)" in page
    assert "<td>5</td><td>expected 10 columns like the header, found 11</td>" in page
    assert "Tokens per sample" in page
    assert "Māori Authorities" in page
    assert '<code>all-columns</code> <span class="muted">(chosen automatically)</span>' in page
    assert 'hx-trigger="every 2s"' not in page  # final: nothing polls
    assert f'href="/jobs/new/?dataset={ready_dataset.pk}">Train a model on it</a>' in page


def test_every_value_is_html_escaped(owner_client, owner):
    data = b'name,note\n<script>alert(1)</script>,"<img src=x onerror=alert(2)>"\n'
    dataset = make_dataset(owner, data, "x<b>.csv", validation_fraction=0.0)
    dataset.name = "<i>evil</i>"
    dataset.save()

    pages = [
        owner_client.get(f"/datasets/{dataset.pk}/").content.decode(),
        owner_client.get(f"/datasets/{dataset.pk}/samples/").content.decode(),
        owner_client.get("/datasets/").content.decode(),
    ]

    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "<i>evil</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "&lt;i&gt;evil&lt;/i&gt;" in pages[2]


def test_status_partial_polls_while_preparing_and_stops_when_final(owner_client, ready_dataset):
    Dataset.objects.filter(pk=ready_dataset.pk).update(status=Dataset.Status.PREPARING, rows_read=1234)

    polling = owner_client.get(f"/datasets/{ready_dataset.pk}/status/", headers={"HX-Request": "true"})

    assert polling.status_code == 200
    assert 'hx-trigger="every 2s"' in polling.content.decode()
    assert "1,234 rows so far" in polling.content.decode()
    assert "<html" not in polling.content.decode()

    Dataset.objects.filter(pk=ready_dataset.pk).update(status=Dataset.Status.READY)
    final = owner_client.get(f"/datasets/{ready_dataset.pk}/status/", headers={"HX-Request": "true"})

    assert final.status_code == 286
    assert 'hx-trigger="every 2s"' not in final.content.decode()
    assert 'data-stat="samples">3<' in final.content.decode()


def test_status_partial_makes_a_fixed_number_of_queries(
    owner_client, ready_dataset, django_assert_max_num_queries
):
    with django_assert_max_num_queries(4):
        owner_client.get(f"/datasets/{ready_dataset.pk}/status/", headers={"HX-Request": "true"})


def test_rename(owner_client, ready_dataset):
    response = owner_client.post(f"/datasets/{ready_dataset.pk}/rename/", {"name": "  Survey 2023  "})

    assert response.status_code == 302
    ready_dataset.refresh_from_db()
    assert ready_dataset.name == "Survey 2023"


def test_rename_to_blank_is_a_message_not_a_change(owner_client, ready_dataset):
    response = owner_client.post(f"/datasets/{ready_dataset.pk}/rename/", {"name": "   "})

    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    ready_dataset.refresh_from_db()
    assert ready_dataset.name == "survey"


def test_delete_asks_then_removes_the_row_and_every_stored_file(
    owner_client, ready_dataset, settings, django_capture_on_commit_callbacks
):
    prefix = ready_dataset.storage_prefix
    assert any(path.startswith(prefix) for path in stored_files(settings.MEDIA_ROOT))

    confirm = owner_client.get(f"/datasets/{ready_dataset.pk}/delete/")
    assert confirm.status_code == 200
    assert "Delete dataset" in confirm.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/datasets/{ready_dataset.pk}/delete/")

    assert response.status_code == 302
    assert not Dataset.objects.filter(pk=ready_dataset.pk).exists()
    assert not any(path.startswith(prefix) for path in stored_files(settings.MEDIA_ROOT))


def test_samples_are_paged_through_the_offset_index(owner_client, owner):
    data = ("text\n" + "".join(f"sample {i}\n" for i in range(1, 131))).encode()
    dataset = make_dataset(owner, data, "lines.csv", validation_fraction=0.0)

    first = owner_client.get(f"/datasets/{dataset.pk}/samples/")
    third = owner_client.get(f"/datasets/{dataset.pk}/samples/?split=train&page=3")
    htmx = owner_client.get(f"/datasets/{dataset.pk}/samples/?page=6", headers={"HX-Request": "true"})

    assert first.status_code == third.status_code == htmx.status_code == 200
    assert "sample 1\n" in first.content.decode() or ">sample 1<" in first.content.decode()
    assert "page 1 of 6" in first.content.decode()
    third_page = third.content.decode()
    assert "#51<" in third_page and "sample 51<" in third_page and "sample 75<" in third_page
    assert "sample 76<" not in third_page and "sample 50<" not in third_page
    assert "<html" not in htmx.content.decode()
    assert "sample 130<" in htmx.content.decode()


@pytest.mark.parametrize("query", ["?page=abc", "?page=-4", "?split=secret", "?page=999999"])
def test_bad_samples_query_is_never_an_error(owner_client, ready_dataset, query):
    response = owner_client.get(f"/datasets/{ready_dataset.pk}/samples/{query}")

    assert response.status_code == 200


def test_downloads_stream_the_prepared_files(owner_client, owner):
    dataset = make_dataset(owner, survey_csv(), validation_fraction=0.4)

    train = owner_client.get(f"/datasets/{dataset.pk}/download/train/")
    validation = owner_client.get(f"/datasets/{dataset.pk}/download/validation/")

    assert train.status_code == validation.status_code == 200
    assert 'filename="survey-train.jsonl"' in train["Content-Disposition"]
    lines = b"".join(train.streaming_content).decode().splitlines()
    lines += b"".join(validation.streaming_content).decode().splitlines()
    assert len(lines) == 3
    assert all(set(json.loads(line)) == {"text"} for line in lines)
    assert owner_client.get(f"/datasets/{dataset.pk}/download/raw/").status_code == 404


def test_prepare_again_with_a_new_mapping(
    owner_client, ready_dataset, django_capture_on_commit_callbacks, settings
):
    old_train = ready_dataset.train_file
    data = {
        "format": "auto",
        "txt_mode": "line",
        "mapping": "template:{Industry_name_NZSIOC} in {Year}: {Variable_name} = {Value}",
        "validation_percent": "0",
    }

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_client.post(f"/datasets/{ready_dataset.pk}/prepare/", data)

    assert response.status_code == 302
    assert len(callbacks) == 1
    ready_dataset.refresh_from_db()
    assert ready_dataset.status == Dataset.Status.UPLOADED
    assert ready_dataset.task_id

    from datasets_app.tasks import prepare_dataset

    prepare_dataset(ready_dataset.pk)

    ready_dataset.refresh_from_db()
    assert ready_dataset.status == Dataset.Status.READY
    assert ready_dataset.preview[0]["text"] == "All industries in 2023: Total income = 1,234"
    assert ready_dataset.stats["validation_samples"] == 0
    assert ready_dataset.train_file != old_train
    files = stored_files(settings.MEDIA_ROOT)
    assert old_train not in files
    assert ready_dataset.train_file in files


def test_prepare_again_with_an_unknown_column_is_a_message(owner_client, ready_dataset):
    data = {"format": "auto", "txt_mode": "line", "mapping": "text:Nope", "validation_percent": "5"}

    response = owner_client.post(f"/datasets/{ready_dataset.pk}/prepare/", data)

    assert response.status_code == 400
    assert "The mapping names column &#x27;Nope&#x27;, which is not in the file." in response.content.decode()
    ready_dataset.refresh_from_db()
    assert ready_dataset.status == Dataset.Status.READY
    assert ready_dataset.mapping == ""


def test_prepare_again_refused_while_preparing(owner_client, ready_dataset):
    Dataset.objects.filter(pk=ready_dataset.pk).update(status=Dataset.Status.PREPARING)
    data = {"format": "auto", "txt_mode": "line", "mapping": "", "validation_percent": "5"}

    response = owner_client.post(f"/datasets/{ready_dataset.pk}/prepare/", data)

    assert response.status_code == 400
    assert "being prepared already" in response.content.decode()
