"""A person drops the survey CSV on the datasets page in real headless Chromium and sees its samples."""

from __future__ import annotations

import pytest

from conftest import PASSWORD, make_user
from datasets_app.models import Dataset
from datasets_app.tests.conftest import survey_csv

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DROP = """([name, text]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([text], name, {type: "text/csv"}));
  const zone = document.querySelector("[data-dropzone]");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
  }
}"""


@pytest.fixture
def eager_tasks():
    # The live server's upload request runs prepare_dataset in-process once its row is committed.
    from llmtuner.celery import app

    before = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


def log_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url("**/dashboard/")


def test_drop_a_csv_and_see_the_preview(page, eager_tasks):
    make_user("alice@example.com")
    log_in(page, "alice@example.com")
    page.goto("/datasets/")
    assert page.get_by_text("No datasets yet").is_visible()

    page.evaluate(DROP, ["survey.csv", survey_csv().decode("utf-8")])

    page.wait_for_url("**/datasets/*/")
    page.locator('[data-status="ready"]').wait_for()
    preview = page.locator("[data-preview]")
    assert "Industry_name_NZSIOC: Māori Authorities" in preview.inner_text()
    assert page.locator('[data-stat="samples"]').inner_text() == "3"
    assert "expected 10 columns like the header, found 11" in page.locator("[data-rejected]").inner_text()
    assert Dataset.objects.get().original_filename == "survey.csv"


def test_a_refused_drop_shows_the_reason_on_the_page(page, eager_tasks):
    make_user("alice@example.com")
    log_in(page, "alice@example.com")
    page.goto("/datasets/")

    page.evaluate(DROP, ["book.xlsx", "PK\u0003\u0004 not really a workbook"])

    page.get_by_text("which is not supported").wait_for()
    assert page.url.endswith("/datasets/")
    assert Dataset.objects.count() == 0


def test_a_file_over_the_limit_is_refused_before_it_is_sent(page, settings):
    settings.DATASET_MAX_UPLOAD_MB = 1
    make_user("alice@example.com")
    log_in(page, "alice@example.com")
    page.goto("/datasets/")

    page.evaluate(DROP, ["big.csv", "a,b\n" + "1,2\n" * 400_000])

    page.get_by_text("the limit for one upload is 1.0 MB").wait_for()
    assert Dataset.objects.count() == 0
