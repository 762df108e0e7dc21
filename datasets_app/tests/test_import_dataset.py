"""manage.py import_dataset: the same path as upload + task, in one process."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from datasets_app.models import Dataset
from datasets_app.tests.conftest import SURVEY_HEADER, stored_files

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_dataset", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_imports_and_prepares_with_json_output(owner, tmp_path, survey_bytes, settings):
    path = tmp_path / "survey.csv"
    path.write_bytes(survey_bytes)

    out, _ = run("--user", "ALICE@example.com", str(path), "--name", "Survey 2023", "--json")

    summary = json.loads(out)
    dataset = Dataset.objects.get()
    assert summary["id"] == dataset.pk
    assert summary["status"] == "ready"
    assert (summary["samples"], summary["rejected"]) == (3, 1)
    assert summary["tokens"] == dataset.tokens > 0
    assert summary["error"] == ""
    assert dataset.owner == owner and dataset.name == "Survey 2023"
    assert dataset.train_file in stored_files(settings.MEDIA_ROOT)


def test_text_output_and_options(owner, tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_text("q\ta\nWhy?\tBecause.\nHow?\tLike so.\n", encoding="utf-8")

    out, _ = run(
        "--user",
        owner.email,
        str(path),
        "--format",
        "tsv",
        "--mapping",
        "prompt:q,completion:a",
        "--validation",
        "0",
    )

    assert "is ready." in out
    assert "rows 2 · samples 2 (2 training, 0 validation) · rejected 0" in out
    dataset = Dataset.objects.get()
    assert dataset.stats["shape"] == "prompt_completion"
    assert dataset.validation_fraction == 0


def test_unusable_file_exits_1_with_the_reason(owner, tmp_path, settings):
    path = tmp_path / "header.csv"
    path.write_text(SURVEY_HEADER + "\n", encoding="utf-8")
    out = io.StringIO()

    with pytest.raises(CommandError) as caught:
        call_command(
            "import_dataset", "--user", owner.email, str(path), "--json", stdout=out, stderr=io.StringIO()
        )

    assert caught.value.returncode == 1
    assert str(caught.value).startswith("The file has a header row but no data rows")
    summary = json.loads(out.getvalue())
    assert summary["status"] == "failed" and summary["error"] == str(caught.value)
    assert stored_files(settings.MEDIA_ROOT) == []


def test_refused_before_storing(owner, tmp_path, settings):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\x00\x01binary")

    with pytest.raises(CommandError, match="NUL bytes") as caught:
        run("--user", owner.email, str(path), "--json")

    assert caught.value.returncode == 1
    assert Dataset.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody@example.com"], "no single user"),
        (["--user", "alice@example.com", "--mapping", "template:oops"], "names no column"),
        (["--user", "alice@example.com", "--validation", "75"], "between 0 and 50"),
    ],
)
def test_bad_arguments(owner, tmp_path, survey_bytes, args, message):
    path = tmp_path / "survey.csv"
    path.write_bytes(survey_bytes)

    with pytest.raises(CommandError, match=message):
        run(*args, str(path))
    assert Dataset.objects.count() == 0


def test_missing_path(owner):
    with pytest.raises(CommandError, match="is not a file"):
        run("--user", owner.email, "/nonexistent/file.csv")
