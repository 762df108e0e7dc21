"""Malformed and hostile manifests for `manage.py submit_jobs`: each ends in a message naming what is
wrong (exit status 1), never a traceback, quickly, and creates no job, no dataset, no stored file.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from dataclasses import dataclass

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from datasets_app.models import Dataset
from datasets_app.tests.conftest import stored_files
from jobs.models import TrainingJob
from jobs.tests.conftest import make_ready_dataset, scratch_base_model

pytestmark = pytest.mark.django_db

QA = "question,answer\n" + "".join(f"What is {n} + {n}?,{2 * n}\n" for n in range(40))
CSV_HEADER = "name,user,dataset,base_model"
CSV_ROW = "{email},{dataset},scratch:tiny-gpt2"
GOOD = {
    "name": "ok",
    "user": "{email}",
    "dataset": "{dataset}",
    "base_model": "scratch:tiny-gpt2",
    "hyperparameters": "{epochs: 1, max_steps: 20, batch_size: 4, max_seq_length: 64}",
}


def yaml_entry(**fields) -> str:
    """One entry of a YAML manifest; values are raw YAML, None leaves a field out."""
    values = {**GOOD, **fields}
    lines = [f"    {key}: {value}" for key, value in values.items() if value is not None]
    return "  - " + "\n".join(lines).lstrip()


def yaml_manifest(*entries: str) -> str:
    return "jobs:\n" + "\n".join(entries or (yaml_entry(),)) + "\n"


def one(**fields) -> str:
    """A manifest of one entry, with these fields changed."""
    return yaml_manifest(yaml_entry(**fields))


def billion_laughs() -> str:
    """Ten levels of aliases inside an entry: 10**9 "lol"s if anything expands them."""
    lines = ['  - lol0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        lines.append(f"    lol{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 10) + "]")
    lines += [f"    {key}: *a9" for key in ("name", "user", "dataset", "base_model", "mapping", "preset")]
    return "jobs:\n" + "\n".join(lines) + "\n"


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("jobs.yaml", yaml_manifest())
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    id: str
    content: object  # str (formatted with email/dataset) or bytes
    message: str
    suffix: str = ".yaml"


CASES = [
    # --- Not a manifest ---------------------------------------------------------------------------------
    Case("empty-file", "", "top-level `jobs:` list"),
    Case("binary-zip-renamed-yaml", zip_bytes(), "not UTF-8"),
    Case("utf16-yaml", yaml_manifest().encode("utf-16"), "not UTF-8"),
    Case("latin1-yaml", "jobs:\n  - name: café\n".encode("latin-1"), "not UTF-8"),
    Case("jobs-not-a-list", "jobs: {a: 1}\n", "must be a list of entries"),
    Case("jobs-empty", "jobs: []\n", "`jobs:` is empty"),
    Case("unknown-top-level-key", yaml_manifest() + "run: rm -rf /\n", "unknown top-level key"),
    Case("entries-are-strings", "jobs:\n  - just a string\n  - 42\n  - null\n", "must be a mapping of"),
    Case("python-object-tag", "jobs:\n  - !!python/object/apply:os.system ['id']\n", "not valid YAML"),
    Case("python-name-tag", "jobs: !!python/name:os.system\n", "not valid YAML"),
    Case("unhashable-key", "jobs:\n  - ? [a, b]\n    : c\n", "not valid YAML"),
    Case("deeply-nested-yaml", "jobs: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
    Case("billion-laughs", billion_laughs(), "must be text"),
    Case("tabs-for-indentation", "jobs:\n\t- name: x\n", "not valid YAML"),
    # --- Fields ---------------------------------------------------------------------------------------
    Case("unknown-field-command", one(command="'$(id)'"), "unknown field"),
    Case("name-with-line-break", one(name='"two\\nlines"'), "control characters"),
    Case("name-with-escape-sequence", one(name='"\\e[2Jx"'), "control characters"),
    Case("name-of-10k-chars", one(name="n" * 10_000), "at most 200 characters"),
    Case("name-a-date", one(name="2024-01-01"), "must be text"),
    Case("user-sql", one(user="\"' OR '1'='1\""), "no user has the email address"),
    Case("someone-elses-dataset", yaml_manifest(yaml_entry()), "is not one of alice@example.com's datasets"),
    Case("dataset-negative-id", one(dataset="-1"), "no dataset has the id -1"),
    Case("dataset-a-list", one(dataset="[1, 2]"), "must be a dataset id or a file path"),
    Case("dataset-superscript-digits", one(dataset="'²'"), "file not found"),
    Case("dataset-path-traversal", one(dataset="../../../../../../etc/passwd"), "inside"),
    Case("dataset-absolute-path", one(dataset="/etc/hostname"), "inside"),
    Case("dataset-home", one(dataset="~/.bashrc"), "inside"),
    Case("dataset-device", one(dataset="/dev/zero"), "not found"),
    Case("dataset-symlink-out", one(dataset="link-to-passwd.csv"), "inside"),
    Case("dataset-binary-file", one(dataset="blob.csv"), "binary"),
    Case(
        "mapping-reaching-for-attributes",
        one(dataset="qa.csv", mapping="'template:{question.__class__}'"),
        "column",
    ),
    Case("model-not-in-catalogue", one(base_model="evil/model; rm -rf /"), "catalogue"),
    Case("backend-unknown", one(backend="ssh"), "must be one of"),
    Case("instance-type-on-local", one(instance_type="ml.g5.xlarge"), "trains locally"),
    Case("preset-traversal", one(preset="../../etc"), "must be one of"),
    Case("max-cost-negative", one(max_cost_usd="-1"), "max_cost_usd"),
    Case("max-cost-nan", one(max_cost_usd=".nan"), "max_cost_usd"),
    Case("max-cost-bool", one(max_cost_usd="true"), "max_cost_usd"),
    # --- Hyperparameters -----------------------------------------------------------------------------
    Case("hp-nan", one(hyperparameters="{epochs: .nan}"), "epochs"),
    Case("hp-infinity", one(hyperparameters="{learning_rate: .inf}"), "learning_rate"),
    Case("hp-huge-int", one(hyperparameters="{batch_size: " + "9" * 50 + "}"), "batch_size"),
    Case("hp-bool-for-int", one(hyperparameters="{batch_size: true}"), "batch_size"),
    Case("hp-shell", one(hyperparameters="{lr_scheduler: 'cosine; rm -rf /'}"), "lr_sch"),
    Case("hp-nested", one(hyperparameters="{epochs: {a: [1]}}"), "single value"),
    Case("hp-base-model", one(hyperparameters="{base_model: /etc}"), "base_model field"),
    Case("hp-unknown", one(hyperparameters="{output_dir: /etc}"), "unknown hyperparam"),
    Case("hp-not-a-mapping", one(hyperparameters="'--epochs 1'"), "must be a mapping"),
    Case("duplicate-names", yaml_manifest(yaml_entry(), yaml_entry()), "names must differ"),
    # --- CSV ----------------------------------------------------------------------------------------------
    Case("csv-nul-in-name", f"{CSV_HEADER}\nx\x00y,{CSV_ROW}\n", "Null characters", ".csv"),
    # Over the csv module's field limit, even once the dataset readers have raised it to 1,000,000.
    Case("csv-field-over-limit", "name,user\n" + "x" * 2_000_000 + ",{email}\n", "larger than", ".csv"),
    Case("csv-unknown-column", "name,user,rm -rf /\nx,{email},y\n", "unknown column", ".csv"),
    Case("csv-formula-name", '=cmd|" /C calc"!A0,{email}\n', "unknown column", ".csv"),
    Case("csv-bad-json", f"{CSV_HEADER},hyperparameters\nx,{CSV_ROW},{{oops\n", "not a JSON object", ".csv"),
    Case("csv-extra-cells", "name,user\nx,{email},surplus,cells\n", "more cells", ".csv"),
    Case("csv-header-only", "name,user\n", "no rows", ".csv"),
    Case("csv-empty", "", "empty", ".csv"),
]  # fmt: skip


def test_the_corpus_is_large_and_names_every_case():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_hostile_manifest_is_refused_with_a_message_and_creates_nothing(
    case, tmp_path, owner, outsider, settings
):
    scratch_base_model()
    dataset = make_ready_dataset(owner)
    theirs = make_ready_dataset(outsider, name="Mallory's")
    (tmp_path / "qa.csv").write_text(QA)
    (tmp_path / "blob.csv").write_bytes(bytes(range(256)) * 20)
    os.symlink("/etc/passwd", tmp_path / "link-to-passwd.csv")
    if case.id == "someone-elses-dataset":
        dataset = theirs
    said = refuse(tmp_path / f"jobs{case.suffix}", case.content, owner, dataset, settings)

    assert case.message in said, said[:3000]


def refuse(path, content: str | bytes, owner, dataset, settings) -> str:
    """Write the manifest, run `submit_jobs` on it, check that it was refused and created nothing.

    Returns all that the command said.
    """
    if isinstance(content, str):
        content = content.replace("{email}", owner.email).replace("{dataset}", str(dataset.pk))
        content = content.encode()
    path.write_bytes(content)
    files_before = stored_files(settings.MEDIA_ROOT)
    datasets_before = Dataset.objects.count()

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with pytest.raises(CommandError) as raised:
        call_command("submit_jobs", str(path), stdout=out, stderr=err)

    assert time.monotonic() - started < 20
    assert raised.value.returncode == 1
    said = f"{raised.value}\n{err.getvalue()}\n{out.getvalue()}"
    assert "Traceback" not in said
    assert TrainingJob.objects.count() == 0
    assert Dataset.objects.count() == datasets_before
    assert stored_files(settings.MEDIA_ROOT) == files_before
    return said


# Python reads at most 4,300 digits of a number written in base 10 (its int-string conversion limit).
LONG = "9" * 4301
LONG_HEX = "0x" + "f" * 3600  # read without that limit, but 4,335 digits in base 10: too long to show
JSON_MANIFEST = """{{
  "jobs": [
    {{
      "name": "ok",
      "user": "{{email}}",
      "dataset": {dataset},
      "base_model": "scratch:tiny-gpt2",
      "hyperparameters": {{"epochs": 1, "max_steps": 20, "batch_size": {batch_size}}}
    }}
  ]
}}
"""
GOOD_JSON = {"dataset": "{dataset}", "batch_size": "4"}
BATCH_SIZE = "hyperparameters.batch_size"
LONG_NUMBERS = [
    # (id, file suffix, content, field, line)
    ("yaml-hp", ".yaml", one(hyperparameters=f"{{epochs: 1, batch_size: {LONG}}}"), BATCH_SIZE, 6),
    ("yaml-dataset", ".yaml", one(dataset=LONG), "dataset", 4),
    ("yaml-quoted-dataset", ".yaml", one(dataset=f'"{LONG}"'), "dataset", 4),
    ("yaml-cost-cap", ".yaml", one(max_cost_usd=LONG), "max_cost_usd", 7),
    ("yaml-hex-hp", ".yaml", one(hyperparameters=f"{{batch_size: {LONG_HEX}}}"), BATCH_SIZE, 6),
    ("json-hp", ".json", JSON_MANIFEST.format(**{**GOOD_JSON, "batch_size": LONG}), BATCH_SIZE, 8),
    ("json-dataset", ".json", JSON_MANIFEST.format(**{**GOOD_JSON, "dataset": LONG}), "dataset", 6),
    ("csv-dataset", ".csv", f"{CSV_HEADER}\nok,{{email}},{LONG},scratch:tiny-gpt2\n", "dataset", 2),
    ("csv-hp-column", ".csv", f"{CSV_HEADER},hp.batch_size\nok,{CSV_ROW},{LONG}\n", BATCH_SIZE, 2),
    ("csv-json-hp", ".csv", f'{CSV_HEADER},hyperparameters\nok,{CSV_ROW},"{{""batch_size"": {LONG}}}"\n',
     BATCH_SIZE, 2),
]  # fmt: skip


@pytest.mark.parametrize(("suffix", "content", "field", "line"), [case[1:] for case in LONG_NUMBERS],
                         ids=[case[0] for case in LONG_NUMBERS])  # fmt: skip
def test_a_number_too_long_to_read_is_a_problem_naming_file_line_entry_and_field(
    suffix, content, field, line, tmp_path, owner, settings
):
    scratch_base_model()
    dataset = make_ready_dataset(owner)

    said = refuse(tmp_path / f"jobs{suffix}", content, owner, dataset, settings)

    assert (
        f"entry 1 (ok): {field}: line {line} of jobs{suffix} holds a number of more than 4,300 digits, "
        "too long to read"
    ) in said, said[:3000]
    assert "1 problem in the manifest: nothing was imported or submitted." in said
