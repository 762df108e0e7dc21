"""Estimates learned from this platform's own runs (jobs.history): what a finished job records,
which past runs an estimate uses, its range and basis, and that it stays one query."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from jobs import history, lifecycle
from jobs.backends import local
from jobs.estimate import DEFAULT_PHASE_SECONDS, PHASES
from jobs.models import Backend, InstanceType, JobStatus, RunRecord, TrainingJob
from jobs.tests.conftest import TINY_HYPERPARAMETERS, make_job, make_ready_dataset
from training_scripts.hyperparameters import validate_hyperparameters

pytestmark = pytest.mark.django_db

S = JobStatus
SCRIPT_PHASES = {
    "preparing_data": 1.5,
    "loading_model": 2.0,
    "training": 20.0,
    "evaluating": 3.0,
    "saving": 1.0,
    "generating_samples": 2.5,
}


def hp(**values):
    clean, errors = validate_hyperparameters({**TINY_HYPERPARAMETERS, **values})
    assert not errors, errors
    return clean


def run_events(job: TrainingJob, *, steps: int = 30, train_tokens: int = 6000, stop_at: int | None = None):
    """The events the local backend feeds the lifecycle for one run of finetune.py, in order."""
    lifecycle.transition(job.pk, S.PREPARING, "Preparing")
    for phase in ("preparing_data", "loading_model", "preparing_data"):
        lifecycle.record_event(job.pk, {"event": "phase", "phase": phase})
    lifecycle.record_event(
        job.pk,
        {
            "event": "start",
            "total_steps": steps,
            "total_parameters": 480_000,
            "precision": "fp32",
            "world_size": 1,
            "max_seq_length": 64,
            "method": "full",
            "device": "cpu",
        },
    )
    lifecycle.record_event(job.pk, {"event": "phase", "phase": "training"})
    last = stop_at or steps
    for step in range(1, last + 1):
        lifecycle.record_event(
            job.pk,
            {
                "event": "progress",
                "step": step,
                "total_steps": steps,
                "loss": 3.0,
                "tokens_per_second": 290.0,
            },
        )
    if stop_at is not None:
        lifecycle.request_stop(job)
        lifecycle.transition(job.pk, S.STOPPED, "Stopped")
        return
    for phase in ("evaluating", "saving", "generating_samples"):
        lifecycle.record_event(job.pk, {"event": "phase", "phase": phase})
    lifecycle.record_event(
        job.pk,
        {
            "event": "done",
            "step": steps,
            "total_steps": steps,
            "train_runtime": 19.0,
            "train_tokens": train_tokens,
            "tokens_per_second": train_tokens / 19.0,
            "phase_seconds": SCRIPT_PHASES,
        },
    )
    lifecycle.transition(job.pk, S.UPLOADING, "Saving the tuned model")
    lifecycle.transition(job.pk, S.COMPLETED, "Completed")


def record(**fields) -> RunRecord:
    """A measured run, as record_finished_job leaves it."""
    owner = fields.pop("owner")
    job = make_job(owner, status=S.COMPLETED)
    defaults = {
        "hub_id": "scratch:tiny-gpt2",
        "parameters": 1_700_000,  # the catalogue's scratch:tiny-gpt2
        "backend": Backend.LOCAL,
        "instance_type": "",
        "method": "full",
        "precision": "auto",  # the default: a job that asks for none
        "max_seq_length": 64,
        "world_size": 1,
        "completed": True,
        "steps": 30,
        "train_tokens": 6000,
        "training_phase_seconds": 6.0,
        "tokens_per_second": 1000.0,
        "phase_seconds": {"starting": 4.0, "preparing_data": 1.0, "evaluating": 2.0, "uploading": 1.0},
        "total_seconds": 14.0,
        "finished_at": timezone.now(),
    }
    return RunRecord.objects.create(job=job, **{**defaults, **fields})


@pytest.fixture
def dataset(owner):
    return make_ready_dataset(owner)


def estimate(dataset, base_model=None, backend=Backend.LOCAL, instance_type=None, count=1, **values):
    base_model = base_model or make_job(dataset.owner, dataset).base_model
    return history.estimate_for(dataset, base_model, hp(**values), backend, instance_type, count)


# --- what a finished job records ----------------------------------------------------------------


def test_a_completed_job_records_its_key_throughput_and_the_seconds_of_every_phase(
    owner, django_capture_on_commit_callbacks
):
    job = make_job(owner, estimated_seconds=40)
    with django_capture_on_commit_callbacks(execute=True):
        run_events(job)

    saved = RunRecord.objects.get(job=job)
    assert (saved.hub_id, saved.backend, saved.instance_type, saved.method) == (
        "scratch:tiny-gpt2",
        "local",
        "",
        "full",
    )
    assert (saved.max_seq_length, saved.world_size) == (64, 1)
    assert saved.parameters == job.base_model.parameters  # the catalogue's, as estimates read it
    assert saved.completed and saved.steps == 30 and saved.train_tokens == 6000
    # Over the training phase's wall time, as the script timed it, in the estimate's tokens.
    assert saved.training_phase_seconds == 20.0
    assert saved.tokens_per_second == pytest.approx(30 * history.planned_tokens_per_step(job) / 20.0)
    assert {p: saved.phase_seconds[p] for p in SCRIPT_PHASES} == SCRIPT_PHASES
    # The platform's clock gives the rest: the worker's start-up and the upload.
    assert set(saved.phase_seconds) == set(PHASES)
    assert saved.phase_seconds["starting"] >= 0 and saved.phase_seconds["uploading"] >= 0
    assert saved.total_seconds > 0 and saved.estimated_seconds == 40


def test_a_job_stopped_after_enough_steps_teaches_its_speed_but_not_its_whole_time(
    owner, django_capture_on_commit_callbacks
):
    job = make_job(owner)
    with django_capture_on_commit_callbacks(execute=True):
        run_events(job, steps=100, stop_at=history.MIN_STEPS_TO_LEARN)

    saved = RunRecord.objects.get(job=job)
    assert not saved.completed and saved.total_seconds is None
    assert saved.steps == history.MIN_STEPS_TO_LEARN and saved.training_phase_seconds > 0
    per_step = history.planned_tokens_per_step(job)
    assert saved.tokens_per_second == pytest.approx(saved.steps * per_step / saved.training_phase_seconds)
    assert set(saved.phase_seconds) <= {"starting", "preparing_data", "loading_model"}


def test_a_job_stopped_early_or_failed_teaches_nothing(owner, django_capture_on_commit_callbacks):
    early, failed = make_job(owner), make_job(owner)
    with django_capture_on_commit_callbacks(execute=True):
        run_events(early, steps=100, stop_at=history.MIN_STEPS_TO_LEARN - 1)
        lifecycle.transition(failed.pk, S.PREPARING, "Preparing")
        lifecycle.transition(failed.pk, S.FAILED, "out of memory")

    assert not RunRecord.objects.exists()


@pytest.mark.slow
def test_a_real_local_run_records_its_phases_and_the_next_estimate_learns_from_it(
    owner, django_capture_on_commit_callbacks
):
    job = make_job(owner)
    with django_capture_on_commit_callbacks(execute=True):
        local.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == S.COMPLETED, job.status_message

    saved = RunRecord.objects.get(job=job)
    assert set(saved.phase_seconds) == set(PHASES)  # finetune.py announced and timed each
    assert sum(saved.phase_seconds.values()) == pytest.approx(saved.total_seconds, rel=0.02)
    assert saved.tokens_per_second > 0

    later = estimate(job.dataset, job.base_model)
    assert later.basis == "from 1 similar run"
    # The same job again is estimated at what this one took, within the rounding of each phase.
    assert later.seconds == pytest.approx(saved.total_seconds, abs=len(PHASES) + 1)


# --- which runs an estimate uses ----------------------------------------------------------------


def test_without_any_run_the_estimate_comes_from_the_models_size(dataset):
    found = estimate(dataset)

    assert found.basis == "from the model's size"
    assert found.slow_seconds > found.seconds
    assert {p: found.phases[p] for p in DEFAULT_PHASE_SECONDS["local"]} == DEFAULT_PHASE_SECONDS["local"]


def test_similar_runs_give_the_training_time_from_their_throughput_and_their_other_phases(owner, dataset):
    for _ in range(3):
        record(owner=owner, tokens_per_second=1000.0)
    base = estimate(dataset)

    assert base.basis == "from 3 similar runs"
    assert base.phases["training"] == pytest.approx(base.train_tokens / 1000, abs=1)
    assert base.phases["starting"] == 4 and base.phases["evaluating"] == 2
    # A phase none of them measured keeps its default.
    assert base.phases["saving"] == DEFAULT_PHASE_SECONDS["local"]["saving"]
    longer = estimate(dataset, max_steps=300)
    assert longer.phases["training"] == pytest.approx(longer.train_tokens / 1000, abs=1)
    assert longer.train_tokens == pytest.approx(10 * base.train_tokens, rel=0.01)


def test_the_range_runs_from_the_median_to_the_slowest_of_few_runs(owner, dataset):
    for speed in (1000.0, 1000.0, 500.0):
        record(owner=owner, tokens_per_second=speed)
    record(owner=owner, tokens_per_second=1000.0, phase_seconds={"starting": 10.0})

    found = estimate(dataset, max_steps=300)
    train = found.train_tokens / 1000

    assert found.phases["training"] == pytest.approx(train, abs=1)
    assert found.phases["starting"] == 4  # the median of 4, 4, 4, 10
    assert found.slow_seconds == pytest.approx(
        found.seconds - found.phases["training"] - found.phases["starting"] + 2 * train + 10, abs=3
    )


# Each a step further from the job estimated (tiny model, full, the default precision, 64 tokens, 1 device).
LEVELS = [
    ({}, "from 1 similar run"),
    ({"max_seq_length": 128}, "from 1 run of this model with other sequence lengths"),
    ({"max_seq_length": 128, "world_size": 2}, "from 1 run of this model on other device counts"),
    (
        {"max_seq_length": 128, "world_size": 2, "precision": "bf16"},
        "from 1 run of this model in another precision",
    ),
    (
        {"max_seq_length": 128, "world_size": 2, "precision": "bf16", "method": "lora"},
        "from 1 run of this model with another method",
    ),
    (
        {"precision": "bf16", "method": "lora", "hub_id": "scratch:small-gpt2"},
        "from 1 run of scratch:small-gpt2, the nearest model in size",
    ),
]


@pytest.mark.parametrize("nearest", range(len(LEVELS)))
def test_the_nearest_runs_win_in_the_stated_order(owner, dataset, nearest):
    """One run at the level tested and one at every looser level: the nearest one is used."""
    for fields, _basis in LEVELS[nearest:]:
        record(owner=owner, **fields)

    assert estimate(dataset).basis == LEVELS[nearest][1]


def test_across_models_the_flops_reached_carry_over_nearest_size_first(owner, dataset):
    # A model 4 × larger reached 250 tokens/s: the same FLOP/s as 1,000 tokens/s of this one.
    record(owner=owner, hub_id="other-4x", parameters=4_000_000, tokens_per_second=250.0)
    record(owner=owner, hub_id="other-1000x", parameters=1_000_000_000, tokens_per_second=5.0)
    job = make_job(owner, dataset)
    job.base_model.parameters = 1_000_000
    job.base_model.save()

    found = estimate(dataset, job.base_model, max_steps=300)

    assert found.basis == "from 1 run of other-4x, the nearest model in size"
    assert found.phases["training"] == pytest.approx(found.train_tokens / 1000, abs=1)


def test_sagemaker_history_counts_every_device_and_its_billable_share_prices_the_estimate(owner, dataset):
    dataset.stats = {"train_tokens": 1_000_000, "train_samples": 5000}
    dataset.save()
    g5_12x = InstanceType.objects.get(name="ml.g5.12xlarge")
    job = make_job(owner, dataset)
    # One instance of 4 GPUs reached 4,000 tokens/s in all, and AWS billed 60 % of its wall time.
    record(
        owner=owner,
        backend=Backend.SAGEMAKER,
        instance_type=g5_12x.name,
        world_size=4,
        tokens_per_second=4000.0,
        total_seconds=1000.0,
        billable_seconds=600,
        phase_seconds={"starting": 200.0},
    )

    one = estimate(dataset, job.base_model, Backend.SAGEMAKER, g5_12x, 1, max_steps=3000)
    two = estimate(dataset, job.base_model, Backend.SAGEMAKER, g5_12x, 2, max_steps=3000)

    assert one.basis == "from 1 similar run"
    assert two.basis == "from 1 run of this model on other device counts"
    assert (one.world_size, two.world_size) == (4, 8)
    # The same steps, each of twice the sequences, on twice the devices: the same time.
    assert two.train_tokens == pytest.approx(2 * one.train_tokens, rel=0.01)
    assert two.phases["training"] == pytest.approx(one.phases["training"], rel=0.02)
    price = Decimal(str(g5_12x.price_per_hour_usd))
    billed = math.ceil(one.seconds * 0.6)
    assert one.cost_usd == (Decimal(billed) / 3600 * price).quantize(Decimal("0.0001"))


def test_other_instance_types_and_the_other_backend_are_not_used(owner, dataset):
    record(owner=owner, backend=Backend.SAGEMAKER, instance_type="ml.g5.xlarge", tokens_per_second=1e6)
    g5_2x = InstanceType.objects.get(name="ml.g5.2xlarge")

    assert estimate(dataset).basis == "from the model's size"
    assert estimate(dataset, backend=Backend.SAGEMAKER, instance_type=g5_2x).basis == "from the model's size"


@pytest.mark.parametrize("runs", [0, 30])
def test_the_estimate_is_one_query_however_much_history(owner, dataset, runs, django_assert_num_queries):
    for _ in range(runs):
        record(owner=owner)
    base_model = make_job(owner, dataset).base_model
    values = hp()

    with django_assert_num_queries(1):
        history.estimate_for(dataset, base_model, values, Backend.LOCAL)


def test_the_launch_form_shows_the_range_and_its_basis(owner, owner_client, dataset):
    for _ in range(2):
        record(owner=owner, tokens_per_second=1000.0)
    base_model = make_job(owner, dataset).base_model
    data = {"dataset": dataset.pk, "base_model": base_model.pk, "backend": "local", "preset": "custom"}
    data |= {k: v for k, v in TINY_HYPERPARAMETERS.items() if k != "base_model"}
    data["filled_for"] = f"custom:{dataset.pk}:{base_model.pk}"

    page = owner_client.get("/jobs/new/estimate/", data, headers={"HX-Request": "true"}).content.decode()

    assert "(from 2 similar runs)" in page
    assert "data-estimate-time>about " in page


# --- what the finished job shows ---------------------------------------------------------------


def test_a_finished_job_says_what_was_estimated_and_what_it_took(owner, owner_client):
    now = timezone.now()
    job = make_job(
        owner,
        status=S.COMPLETED,
        estimated_seconds=90,
        estimated_slow_seconds=130,
        estimate_basis="from 3 similar runs",
        started_at=now - timedelta(seconds=100),
        finished_at=now,
    )

    page = owner_client.get(f"/jobs/{job.pk}/progress/", headers={"HX-Request": "true"}).content.decode()

    assert "estimated 1 min 30 s to 2 min 10 s, took 1 min 40 s" in page
    assert "(from 3 similar runs)" in page


def test_job_status_json_gives_the_launch_estimate_and_when_the_job_left_the_queue_and_ended(
    owner, django_capture_on_commit_callbacks
):
    import io
    import json

    from django.core.management import call_command

    from jobs.actions import launch_job

    dataset = make_ready_dataset(owner)
    base_model = make_job(owner, dataset).base_model
    values = hp()
    at_launch = history.estimate_for(dataset, base_model, values, Backend.LOCAL)
    job = launch_job(
        owner,
        name="Timed",
        dataset=dataset,
        base_model=base_model,
        hyperparameters=values,
        estimate=at_launch,
    )
    queued = make_job(owner, dataset, name="Still queued")
    with django_capture_on_commit_callbacks(execute=True):
        run_events(job)
    job.refresh_from_db()

    out = io.StringIO()
    call_command("job_status", "--json", stdout=out)
    rows = {row["id"]: row for row in json.loads(out.getvalue())}

    assert rows[job.pk]["estimated_seconds"] == at_launch.seconds == job.estimated_seconds
    assert rows[job.pk]["started_at"] == job.started_at.isoformat()
    assert rows[job.pk]["finished_at"] == job.finished_at.isoformat()
    assert job.estimated_phases == at_launch.phases and job.estimate_basis == "from the model's size"
    assert (rows[queued.pk]["started_at"], rows[queued.pk]["finished_at"]) == (None, None)
