# ruff: noqa: F811 (the fixtures imported from test_sagemaker_support are redefined as arguments)
"""manage.py submit_jobs: a manifest of jobs, checked whole by the launch form's rules, submitted once."""

from __future__ import annotations

import io
import json
import textwrap
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import get_profile
from datasets_app.models import Dataset
from datasets_app.tests.conftest import stored_files
from jobs import batch
from jobs.forms import estimate_for
from jobs.models import Backend, InstanceType, JobStatus, ManifestDataset, TrainingJob
from jobs.tests.conftest import make_ready_dataset, scratch_base_model
from jobs.tests.test_sagemaker_support import sagemaker_settings  # noqa: F401 (fixture)
from training_scripts.hyperparameters import validate_hyperparameters

pytestmark = pytest.mark.django_db

QA_CSV = "question,answer\n" + "".join(f"What is {n} + {n}?,{2 * n}\n" for n in range(40))


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("submit_jobs", *[str(arg) for arg in args], stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[str, str, CommandError]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("submit_jobs", *[str(arg) for arg in args], stdout=out, stderr=err)
    assert raised.value.returncode == 1
    return out.getvalue(), err.getvalue(), raised.value


def write(path, text: str):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def dataset(owner):
    return make_ready_dataset(owner)


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "data" / "qa.csv"
    path.parent.mkdir()
    path.write_text(QA_CSV, encoding="utf-8")
    return path


@pytest.fixture
def good_manifest(tmp_path, owner, dataset, qa_file):
    scratch_base_model()
    return write(
        tmp_path / "jobs.yaml",
        f"""
        jobs:
          - name: proverbs-tiny
            user: {owner.email}
            dataset: {dataset.pk}
            base_model: scratch:tiny-gpt2
            backend: local
            method: full
            hyperparameters:
              epochs: 1
              max_steps: 20
              batch_size: 4
              max_seq_length: 64
              learning_rate: 1e-3
          - name: sums-tiny
            user: {owner.email.upper()}
            dataset: data/qa.csv
            mapping: prompt:question,completion:answer
            base_model: Tiny GPT-2 (from scratch)
            hyperparameters: {{max_steps: 10, packing: false}}
        """,
    )


def counts() -> tuple[int, int]:
    return Dataset.objects.count(), TrainingJob.objects.count()


# --- a good manifest ------------------------------------------------------------------------


def test_a_manifest_submits_every_job_with_what_the_launch_form_would_give(
    owner, dataset, good_manifest, settings
):
    out, err = run(good_manifest)

    assert "Submitted 2 jobs." in out
    proverbs, sums = TrainingJob.objects.order_by("pk")
    assert (proverbs.name, proverbs.owner, proverbs.dataset, proverbs.status) == (
        "proverbs-tiny",
        owner,
        dataset,
        JobStatus.QUEUED,
    )
    expected, errors = validate_hyperparameters(
        {
            "base_model": "scratch:tiny-gpt2",
            "method": "full",
            "epochs": 1,
            "max_steps": 20,
            "batch_size": 4,
            "max_seq_length": 64,
            "learning_rate": 0.001,
        }
    )
    assert not errors
    assert proverbs.hyperparameters == expected
    assert proverbs.backend == Backend.LOCAL and proverbs.instance_type is None
    assert proverbs.estimated_seconds == estimate_for(dataset, proverbs.base_model, expected, "local").seconds
    assert len(proverbs.batch_key) == 64 and proverbs.celery_task_id
    # The file was imported for alice, prepared with the mapping, and remembered by its content.
    imported = sums.dataset
    assert imported.owner == owner and imported.is_ready
    assert imported.stats["shape"] == "prompt_completion" and imported.samples == 40
    assert imported.train_file in stored_files(settings.MEDIA_ROOT)
    assert ManifestDataset.objects.get().dataset == imported
    assert sums.hyperparameters["packing"] is False and sums.hyperparameters["max_steps"] == 10
    assert "[1/1] importing" in err and "qa.csv" in err
    assert "[1/2] submitted proverbs-tiny" in err and "[2/2] submitted sums-tiny" in err


def test_a_second_run_of_the_same_manifest_creates_nothing(good_manifest, settings):
    run(good_manifest)
    before, files = counts(), stored_files(settings.MEDIA_ROOT)

    out, err = run(good_manifest)

    assert counts() == before
    assert stored_files(settings.MEDIA_ROOT) == files
    assert "Submitted 0 jobs; 2 already submitted before." in out
    assert "importing" not in err


def test_a_changed_entry_is_a_new_job_on_the_dataset_imported_before(good_manifest, qa_file):
    run(good_manifest)
    datasets = Dataset.objects.count()
    good_manifest.write_text(good_manifest.read_text().replace("max_steps: 10", "max_steps: 12"))

    out, err = run(good_manifest)

    assert "Submitted 1 job; 1 already submitted before." in out
    assert Dataset.objects.count() == datasets  # same bytes, same mapping: reused
    assert "importing" not in err
    first, second = TrainingJob.objects.filter(name="sums-tiny").order_by("pk")
    assert first.dataset == second.dataset and second.hyperparameters["max_steps"] == 12


def test_the_same_file_is_imported_again_when_its_contents_change(good_manifest, qa_file):
    run(good_manifest)
    qa_file.write_text(QA_CSV + "What is 1000 + 1000?,2000\n", encoding="utf-8")

    out, _ = run(good_manifest)

    assert "Submitted 1 job; 1 already submitted before." in out
    first, second = TrainingJob.objects.filter(name="sums-tiny").order_by("pk")
    assert first.dataset != second.dataset and second.dataset.samples == 41


def test_dry_run_prints_steps_time_cost_and_totals_and_creates_nothing(good_manifest, settings):
    before, files = counts(), stored_files(settings.MEDIA_ROOT)

    out, _ = run(good_manifest, "--dry-run")

    assert counts() == before and stored_files(settings.MEDIA_ROOT) == files
    assert not ManifestDataset.objects.exists()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "NAME", "USER", "DATASET"]
    proverbs = next(line for line in lines if "proverbs-tiny" in line)
    assert " 20 " in proverbs and "free" in proverbs and "new" in proverbs
    sums = next(line for line in lines if "sums-tiny" in line)
    assert "qa.csv (import)" in sums and sums.count("after import") == 2 and "free" in sums
    assert "2 entries: 2 to submit" in out and "(and 1 to estimate after import)" in out


def test_dry_run_after_a_run_says_what_was_submitted(good_manifest):
    run(good_manifest)
    jobs = {job.name: job.pk for job in TrainingJob.objects.all()}

    out, _ = run(good_manifest, "--dry-run")

    assert f"already submitted (job {jobs['proverbs-tiny']})" in out
    assert "2 entries: 0 to submit, 2 already submitted." in out


def test_dry_run_prices_sagemaker_entries(tmp_path, owner, dataset, sagemaker_settings):
    write(
        tmp_path / "cloud.yaml",
        f"""
        jobs:
          - {{name: a, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, max_cost_usd: 5,
              hyperparameters: {{max_steps: 30}}}}
        """,
    )
    clean, _ = validate_hyperparameters({"base_model": "scratch:tiny-gpt2", "max_steps": 30})
    expected = estimate_for(
        dataset, scratch_base_model(), clean, "sagemaker", InstanceType.objects.get(name="ml.g5.xlarge")
    )

    out, _ = run(tmp_path / "cloud.yaml", "--dry-run")

    line = next(line for line in out.splitlines() if line.startswith("1 "))
    assert "ml.g5.xlarge" in line and f"${expected.cost_usd.quantize(Decimal('0.01'))}" in line
    assert expected.duration in line
    assert not TrainingJob.objects.exists()


def test_a_sagemaker_entry_is_submitted_with_its_cap(tmp_path, owner, dataset, sagemaker_settings):
    write(
        tmp_path / "cloud.yaml",
        f"""
        jobs:
          - {{name: a, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, max_cost_usd: "4.50"}}
        """,
    )

    run(tmp_path / "cloud.yaml")

    job = TrainingJob.objects.get()
    assert job.backend == Backend.SAGEMAKER and job.instance_type.name == "ml.g5.xlarge"
    assert job.max_cost_usd == Decimal("4.50") and job.estimated_cost_usd > 0


def test_json_output(good_manifest):
    out, _ = run(good_manifest, "--json")

    result = json.loads(out)
    assert result["valid"] is True and result["problems"] == []
    assert [entry["state"] for entry in result["entries"]] == ["submitted", "submitted"]
    assert {entry["job"] for entry in result["entries"]} == set(
        TrainingJob.objects.values_list("pk", flat=True)
    )
    assert result["totals"]["submitted"] == 2


def test_a_csv_manifest_gives_the_same_jobs_as_yaml(tmp_path, owner, dataset):
    scratch_base_model()
    path = tmp_path / "jobs.csv"
    path.write_text(
        "name,user,dataset,base_model,backend,hyperparameters,hp.max_steps,hp.packing\n"
        f'one,{owner.email},{dataset.pk},scratch:tiny-gpt2,local,"{{""epochs"": 2}}",15,false\n'
        f"two,{owner.email},{dataset.pk},scratch:tiny-gpt2,,,7,\n",
        encoding="utf-8",
    )

    run(path)

    one, two = TrainingJob.objects.order_by("pk")
    assert (one.hyperparameters["epochs"], one.hyperparameters["max_steps"]) == (2.0, 15)
    assert one.hyperparameters["packing"] is False
    assert two.hyperparameters["max_steps"] == 7 and two.backend == Backend.LOCAL


# --- bad manifests --------------------------------------------------------------------------


def test_every_kind_of_bad_entry_is_reported_together_and_nothing_is_created(
    tmp_path, owner, outsider, dataset, qa_file, settings, sagemaker_settings
):
    scratch_base_model()
    others = make_ready_dataset(outsider, name="Mallory's")
    write(
        tmp_path / "bad.yaml",
        f"""
        jobs:
          - {{name: fine, user: {owner.email}, dataset: data/qa.csv, base_model: scratch:tiny-gpt2}}
          - {{name: ghost, user: nobody@example.com, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2}}
          - {{name: theirs, user: {owner.email}, dataset: {others.pk}, base_model: scratch:tiny-gpt2}}
          - {{name: lost, user: {owner.email}, dataset: data/missing.csv, base_model: scratch:tiny-gpt2}}
          - {{name: model, user: {owner.email}, dataset: {dataset.pk}, base_model: gpt-7}}
          - {{name: where, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: mainframe}}
          - {{name: no-instance, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker}}
          - {{name: odd-instance, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.z9.huge}}
          - {{name: range, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              hyperparameters: {{batch_size: 0}}}}
          - {{name: type, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              hyperparameters: {{epochs: three, packing: maybe}}}}
          - {{name: cap, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, max_cost_usd: -5}}
          - {{name: fine, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2}}
          - {{name: tiny-cap, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              backend: sagemaker, instance_type: ml.g5.xlarge, max_cost_usd: 0.05}}
        """,
    )
    before, files = counts(), stored_files(settings.MEDIA_ROOT)

    _, err, error = run_failing(tmp_path / "bad.yaml")

    expected = [
        "entry 2 (ghost): user: no user has the email address 'nobody@example.com'",
        f"entry 3 (theirs): dataset: dataset {others.pk} is not one of alice@example.com's datasets",
        f"entry 4 (lost): dataset: file not found: {tmp_path / 'data' / 'missing.csv'}",
        "entry 5 (model): base_model: no model in the catalogue is called 'gpt-7'",
        "entry 6 (where): backend: must be one of local, sagemaker, not 'mainframe'",
        "entry 7 (no-instance): instance_type: is required to train on SageMaker",
        "entry 8 (odd-instance): instance_type: unknown instance type 'ml.z9.huge'",
        "entry 9 (range): hyperparameters.batch_size: must be an integer between 1 and 1024 (got 0)",
        "entry 10 (type): hyperparameters.epochs: must be a number greater than 0",
        "entry 10 (type): hyperparameters.packing: must be true or false (got 'maybe')",
        "entry 11 (cap): max_cost_usd: Ensure this value is greater than or equal to 0.01.",
        "entry 12 (fine): name: the same name as entry 1",
        "entry 13 (tiny-cap): max_cost_usd: $0.05 buys only 127 s on ml.g5.xlarge; a job needs at least 5 "
        "minutes, so allow at least $0.12",
    ]
    for line in expected:
        assert line in err
    assert "entry 1 " not in err
    assert str(error) == "13 problems in the manifest: nothing was imported or submitted."
    assert counts() == before
    assert stored_files(settings.MEDIA_ROOT) == files
    assert not ManifestDataset.objects.exists()


def test_an_invalid_manifest_is_reported_by_the_dry_run_too(tmp_path, owner):
    write(
        tmp_path / "bad.yaml", "jobs:\n  - {name: x, user: nobody@example.com, dataset: 1, base_model: y}\n"
    )

    _, err, _ = run_failing(tmp_path / "bad.yaml", "--dry-run")

    assert "entry 1 (x): user: no user has the email address" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: [a, [b\n", "manifest: not valid YAML at line 2"),
        ("- name: x\n", "manifest: the manifest must be a mapping with a top-level `jobs:` list"),
        ("jobs:\n  name: x\n", "manifest: `jobs:` must be a list of entries, not a mapping"),
        ("jobs: []\n", "manifest: `jobs:` is empty"),
        ("jobs: [{}]\nextra: 1\n", "manifest: unknown top-level key(s): extra"),
        ("", "manifest: the manifest must be a mapping"),
    ],
)
def test_a_manifest_that_cannot_be_read_says_why(tmp_path, owner, text, message):
    path = tmp_path / "jobs.yaml"
    path.write_text(text, encoding="utf-8")

    _, err, error = run_failing(path)

    assert message in err
    assert str(error) == "1 problem in the manifest: nothing was imported or submitted."
    assert counts() == (0, 0)


def test_a_missing_manifest_file(tmp_path):
    _, err, _ = run_failing(tmp_path / "nope.yaml")

    assert f"manifest: {tmp_path / 'nope.yaml'} is not a file" in err


def test_entries_that_are_not_mappings_or_have_unknown_fields(tmp_path, owner, dataset):
    scratch_base_model()
    write(
        tmp_path / "jobs.yaml",
        f"""
        jobs:
          - just a string
          - {{name: typo, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              epochs: 3, hyperparameters: {{epoch: 3, base_model: gpt2, max_steps: [1, 2]}}}}
          - {{name: conflict, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2,
              method: lora, mapping: text:body, hyperparameters: {{method: full}}}}
          - {{user: {owner.email}, dataset: {dataset.pk}}}
        """,
    )

    _, err, _ = run_failing(tmp_path / "jobs.yaml")

    for line in [
        "entry 1: must be a mapping of fields (name, user, dataset, base_model, …), not a str",
        "entry 2 (typo): epochs: unknown field",
        "entry 2 (typo): hyperparameters.epoch: unknown hyperparameter",
        "entry 2 (typo): hyperparameters.base_model: set the model with the entry's base_model field",
        "entry 2 (typo): hyperparameters.max_steps: must be a single value, not a list",
        "entry 3 (conflict): method: says 'lora' but hyperparameters.method says 'full'",
        "entry 3 (conflict): mapping: only a dataset given as a file is read with a mapping",
        "entry 4: name: is required",
        "entry 4: base_model: is required",
    ]:
        assert line in err


def test_csv_problems_name_the_row_and_column(tmp_path, owner, dataset):
    path = tmp_path / "jobs.csv"
    path.write_text(
        "name,user,dataset,base_model,hyperparameters,hp.epochs\n"
        f'a,{owner.email},{dataset.pk},scratch:tiny-gpt2,"{{""epochs"": 1}}",2\n'
        f"b,{owner.email},{dataset.pk},scratch:tiny-gpt2,{{not json,\n",
        encoding="utf-8",
    )

    _, err, _ = run_failing(path)

    assert "entry 1 (a): hyperparameters.epochs: given twice (JSON column and hp. column)" in err
    assert "entry 2 (b): hyperparameters: not a JSON object" in err


def test_a_csv_with_an_unknown_column_is_refused(tmp_path, owner):
    path = tmp_path / "jobs.csv"
    path.write_text("name,user,datset\nx,y,z\n", encoding="utf-8")

    _, err, _ = run_failing(path)

    assert "manifest: unknown column(s): datset" in err


def test_a_dataset_that_is_not_ready_is_refused(tmp_path, owner, dataset):
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.FAILED, error="No rows.")
    write(
        tmp_path / "jobs.yaml",
        f"jobs: [{{name: a, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2}}]\n",
    )

    _, err, _ = run_failing(tmp_path / "jobs.yaml")

    assert f"entry 1 (a): dataset: dataset {dataset.pk} is not ready (Failed: No rows.)" in err


def test_a_file_the_readers_refuse_is_reported_before_anything_is_stored(tmp_path, owner, settings):
    scratch_base_model()
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "qa.csv").write_text(QA_CSV, encoding="utf-8")
    write(
        tmp_path / "jobs.yaml",
        f"""
        jobs:
          - {{name: a, user: {owner.email}, dataset: empty.csv, base_model: scratch:tiny-gpt2}}
          - {{name: b, user: {owner.email}, dataset: qa.csv, mapping: "text:nope",
              base_model: scratch:tiny-gpt2}}
        """,
    )

    _, err, _ = run_failing(tmp_path / "jobs.yaml")

    assert "entry 1 (a): dataset: empty.csv:" in err
    assert "entry 2 (b): mapping:" in err and "nope" in err
    assert counts() == (0, 0) and stored_files(settings.MEDIA_ROOT) == []


def test_sagemaker_entries_of_a_user_must_fit_the_budget_together(
    tmp_path, owner, dataset, sagemaker_settings
):
    scratch_base_model()
    clean, _ = validate_hyperparameters({"base_model": "scratch:tiny-gpt2"})
    cost = estimate_for(
        dataset, scratch_base_model(), clean, "sagemaker", InstanceType.objects.get(name="ml.g5.xlarge")
    ).cost_usd
    profile = get_profile(owner)
    profile.monthly_budget_usd = (cost * 3 / 2).quantize(Decimal("0.01"))
    profile.save()
    entry = f"user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2, backend: sagemaker"
    write(
        tmp_path / "jobs.yaml",
        f"jobs:\n  - {{name: a, {entry}, instance_type: ml.g5.xlarge}}\n"
        f"  - {{name: b, {entry}, instance_type: ml.g5.xlarge}}\n",
    )

    _, err, _ = run_failing(tmp_path / "jobs.yaml")

    assert "entry 1 " not in err  # alone it fits: the launch form's own check passes it
    assert "entry 2 (b): budget: estimated at $" in err
    assert "with the $" in err and "earlier SageMaker entries for alice@example.com" in err
    assert not TrainingJob.objects.exists()


def test_a_sagemaker_entry_the_budget_cannot_pay_is_refused_by_the_launch_forms_check(
    tmp_path, owner, dataset, sagemaker_settings
):
    profile = get_profile(owner)
    profile.monthly_budget_usd = Decimal("0.01")
    profile.save()
    write(
        tmp_path / "jobs.yaml",
        f"jobs: [{{name: a, user: {owner.email}, dataset: {dataset.pk}, base_model: scratch:tiny-gpt2, "
        "backend: sagemaker, instance_type: ml.g5.xlarge}]\n",
    )

    _, err, _ = run_failing(tmp_path / "jobs.yaml")

    assert "entry 1 (a): This job is estimated to cost $" in err and "of your $0.01 monthly budget" in err
    assert not TrainingJob.objects.exists()


def test_an_entry_submitted_meanwhile_by_another_run_counts_as_already_submitted(good_manifest, dataset):
    plan = batch.check_manifest(good_manifest)
    assert plan.valid
    run(good_manifest)  # the other run
    datasets = Dataset.objects.count()

    batch.import_datasets(plan)
    batch.recheck(plan)
    batch.submit(plan)

    assert [entry.state for entry in plan.entries] == [batch.ALREADY, batch.ALREADY]
    assert TrainingJob.objects.count() == 2
    assert Dataset.objects.count() == datasets  # the file the other run imported is reused
