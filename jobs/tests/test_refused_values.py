"""A refused value is never sent back whole: a 1 MB value in any field of any form gives a short
page that still names the field, while a short bad value is quoted in full so people see what
they typed.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils.html import escape

from accounts.models import Profile, get_profile
from jobs.models import JobStatus, TrainingJob
from jobs.tests.conftest import make_job, make_ready_dataset, scratch_base_model
from jobs.tests.test_hostile_forms import launch_data
from training_scripts.hyperparameters import HYPERPARAMETERS, format_errors, validate_hyperparameters

pytestmark = pytest.mark.django_db

MEGABYTE = "9" * 1_048_576
PAGE_LIMIT = 64 * 1024

# A checkbox takes any value as "on", and the hidden fill key only decides whether the estimate
# fills the hyperparameters in again: these accept a megabyte, and keep none of it.
TAKES_ANY_VALUE = ["packing", "gradient_checkpointing", "merge_adapter", "filled_for"]
NEW_JOB_FIELDS = [
    "name",
    "dataset",
    "base_model",
    "backend",
    "instance_type",
    "max_cost_usd",
    "preset",
    "submit_token",
    *(name for name in HYPERPARAMETERS if name not in ("base_model", *TAKES_ANY_VALUE)),
]
UPLOAD_FIELDS = ["name", "format", "txt_mode", "mapping", "validation_percent"]
READ_OPTIONS_FIELDS = ["format", "txt_mode", "mapping", "validation_percent"]
PLAYGROUND_FIELDS = ["prompt", "max_new_tokens", "temperature", "top_p"]


@pytest.mark.parametrize("field_name", NEW_JOB_FIELDS)
def test_a_megabyte_in_the_new_job_form_is_not_echoed(field_name, owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), **{field_name: MEGABYTE})

    response = owner_client.post("/jobs/new/", data)

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    errors = response.context["form"].errors
    assert list(errors) == [field_name], errors
    assert f'data-error-for="{field_name}"' in response.content.decode()


@pytest.mark.parametrize("field_name", TAKES_ANY_VALUE)
def test_a_megabyte_in_a_field_that_takes_any_value_is_not_kept(field_name, owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), **{field_name: MEGABYTE})

    response = owner_client.post("/jobs/new/", data)

    assert response.status_code == 302
    assert MEGABYTE not in str(TrainingJob.objects.get().hyperparameters)


def test_a_megabyte_beside_a_refused_value_is_not_echoed_either(owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), epochs="0", filled_for=MEGABYTE)

    response = owner_client.post("/jobs/new/", data)

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    assert list(response.context["form"].errors) == ["epochs"]


def test_a_refused_megabyte_is_quoted_by_its_start_and_its_length(owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), epochs=MEGABYTE, name="n" * 300)

    page = owner_client.post("/jobs/new/", data).content.decode()

    assert "epochs must be a number greater than 0 and at most 1000 (got &#x27;" + "9" * 50 in page
    assert "…&#x27; (1,048,576 characters))" in page
    # The name comes back cut to what the field takes; the epochs input, which has no limit, empty.
    assert f'value="{"n" * 200}"' in page
    assert 'name="epochs" value' not in page


@pytest.mark.parametrize(
    "field_name,value,quoted",
    [
        ("epochs", "abc", "(got &#x27;abc&#x27;)"),
        ("lr_scheduler", "sideways", "(got &#x27;sideways&#x27;)"),
        ("batch_size", "4; rm -rf /", "(got &#x27;4; rm -rf /&#x27;)"),
        ("epochs", "1" * 50 + "0", "(got &#x27;" + "1" * 50 + "…&#x27; (51 characters))"),
    ],
    ids=["word", "choice", "shell", "just-too-long"],
)
def test_a_short_refused_value_is_quoted_in_full(field_name, value, quoted, owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), **{field_name: value})

    page = owner_client.post("/jobs/new/", data).content.decode()

    assert f'data-error-for="{field_name}"' in page
    assert quoted in page


def test_a_short_refused_value_is_shown_again_in_its_input(owner_client, owner):
    data = launch_data(make_ready_dataset(owner), scratch_base_model(), batch_size="4; rm -rf /")

    page = owner_client.post("/jobs/new/", data).content.decode()

    assert f'name="batch_size" value="{escape("4; rm -rf /")}"' in page


def test_a_short_bad_choice_in_the_upload_form_is_quoted_in_full(owner_client):
    data = {"file": SimpleUploadedFile("a.txt", b"hello\n"), "txt_mode": "line", "validation_percent": "5"}

    response = owner_client.post("/datasets/upload/", {**data, "format": "sideways"})

    assert response.status_code == 400
    assert "Select a valid choice. sideways is not one of the available choices." in response.content.decode()


def test_a_megabyte_in_a_manifest_gives_a_short_message_naming_the_field():
    clean, errors = validate_hyperparameters({"epochs": MEGABYTE, "9" * 1000: "1"})

    message = format_errors(errors)

    assert len(message) < 2000
    assert "epochs: must be a number greater than 0 and at most 1000 (got '9999" in message
    assert "(1,048,576 characters)" in message


@pytest.mark.parametrize("field_name", NEW_JOB_FIELDS + TAKES_ANY_VALUE)
def test_a_megabyte_in_the_new_job_estimate_is_not_echoed(field_name, owner_client, owner):
    query = launch_data(make_ready_dataset(owner), scratch_base_model(), **{field_name: MEGABYTE})

    response = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"


@pytest.mark.parametrize("field_name", UPLOAD_FIELDS)
def test_a_megabyte_in_the_upload_form_is_not_echoed(field_name, owner_client):
    data = {"format": "auto", "txt_mode": "line", "validation_percent": "5", field_name: MEGABYTE}
    upload = SimpleUploadedFile("a.txt", b"hello\n")

    response = owner_client.post("/datasets/upload/", {"file": upload, **data})

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    assert field_name in response.context["form"].errors


@pytest.mark.parametrize("field_name", READ_OPTIONS_FIELDS)
def test_a_megabyte_in_the_read_options_is_not_echoed(field_name, owner_client, owner):
    dataset = make_ready_dataset(owner)
    data = {"format": "auto", "txt_mode": "line", "mapping": "", "validation_percent": "5"}

    response = owner_client.post(f"/datasets/{dataset.pk}/prepare/", {**data, field_name: MEGABYTE})

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    assert field_name in response.context["options_form"].errors


def test_a_megabyte_name_for_a_dataset_is_not_echoed(owner_client, owner):
    dataset = make_ready_dataset(owner)

    response = owner_client.post(f"/datasets/{dataset.pk}/rename/", {"name": MEGABYTE})

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    assert "name" in response.context["rename_form"].errors


@pytest.mark.parametrize("field_name", PLAYGROUND_FIELDS)
def test_a_megabyte_in_the_playground_is_not_echoed(field_name, owner_client, owner):
    job = make_job(owner, status=JobStatus.COMPLETED, model_prefix="users/1/jobs/1/model")
    data = {"prompt": "Hello", "max_new_tokens": "8", "temperature": "0.7", "top_p": "0.9"}

    response = owner_client.post(f"/jobs/{job.pk}/playground/", {**data, field_name: MEGABYTE})

    assert response.status_code == 400
    assert len(response.content) < PAGE_LIMIT, f"{len(response.content):,} bytes"
    assert list(response.context["form"].errors) == [field_name]


def test_the_settings_checkbox_takes_a_megabyte_as_on(owner_client, owner):
    Profile.objects.update_or_create(user=owner, defaults={"email_notifications": False})

    response = owner_client.post("/settings/", {"email_notifications": MEGABYTE})

    assert response.status_code == 302
    assert get_profile(owner).email_notifications is True


def test_a_prompt_just_over_the_limit_comes_back_cut_to_it(owner_client, owner, settings):
    settings.PLAYGROUND_MAX_PROMPT_CHARS = 100
    job = make_job(owner, status=JobStatus.COMPLETED, model_prefix="users/1/jobs/1/model")
    data = {"prompt": "a" * 100 + "b" * 10, "max_new_tokens": "8", "temperature": "0.7", "top_p": "0.9"}

    response = owner_client.post(f"/jobs/{job.pk}/playground/", data)

    assert response.status_code == 400
    page = response.content.decode()
    assert "The prompt can be at most 100 characters; this one has 110." in page
    assert "a" * 100 + "</textarea>" in page
