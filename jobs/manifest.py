"""Batch submission: many jobs from one manifest, checked by the launch form's own rules.

A manifest is YAML::

    jobs:
      - name: support-bot-small
        user: alice@example.com
        dataset: data/support.csv        # a file, imported for the user as `import_dataset` does,
        mapping: prompt:question,completion:answer   # read with this mapping (optional),
        base_model: scratch:tiny-gpt2    # or a catalogue name ("GPT-2 small")
        backend: local
        hyperparameters: {epochs: 1, max_steps: 50}
      - name: support-bot-cloud
        user: alice@example.com
        dataset: 12                      # or one of the user's ready datasets, by id
        base_model: Qwen/Qwen2.5-0.5B
        backend: sagemaker
        instance_type: ml.g5.xlarge
        method: lora
        preset: automatic                # optional: start from a preset, then the hyperparameters above
        max_cost_usd: 5

or CSV with the same columns, hyperparameters as a JSON object in a
`hyperparameters` column or one `hp.<name>` column each. Relative paths are
read from the manifest's folder.

`run_manifest` works in phases, and nothing is imported or submitted unless
every entry passed the phase before:

1. check every entry (`check_manifest`): the user, the dataset (ownership,
   readiness; for a file: that it exists and that its first rows read with the
   mapping), the model, the backend and instance type, and then the whole
   entry through `NewJobForm`, the launch form itself, so hyperparameters,
   SageMaker availability and the estimate follow the web form's rules; the
   SageMaker entries of each user must fit in the monthly budget together;
2. import the file datasets (`import_datasets`), reusing a dataset imported
   before from a file with the same bytes and mapping for the same user;
3. check the entries again with their imported datasets (`recheck`): their
   estimates and budgets could not be known before;
4. submit (`submit`) through `actions.launch_job`, as the launch form does.

Each job carries `batch_key`, a hash of its entry (user, name, dataset or file
content, model, backend, instance type, preset, hyperparameters, cap), so a
second run of the same manifest finds the jobs it submitted and submits
nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.db import IntegrityError

from datasets_app import actions as dataset_actions
from datasets_app.mapping import MappingError, parse_mapping
from datasets_app.models import Dataset
from jobs import actions, presets, pricing
from jobs.estimate import Estimate
from jobs.forms import HYPERPARAMETER_FIELDS, NewJobForm
from jobs.models import Backend, BaseModel, InstanceType, ManifestDataset, TrainingJob
from training_scripts.hyperparameters import DEFAULTS, HYPERPARAMETERS, validate_hyperparameters

FIELDS = (
    "name",
    "user",
    "dataset",
    "mapping",
    "base_model",
    "backend",
    "instance_type",
    "method",
    "preset",
    "hyperparameters",
    "max_cost_usd",
)
REQUIRED = ("name", "user", "dataset", "base_model")
HP_PREFIX = "hp."
PRESET_NAMES = tuple(name for name, _ in presets.PRESET_CHOICES if name != presets.CUSTOM)
HASH_CHUNK = 1024 * 1024
Progress = Callable[[str], None]

NEW = "new"
SUBMITTED = "submitted"
ALREADY = "already submitted"
NOT_SUBMITTED = "not submitted"


class UnknownUser(Exception):
    pass


class UnknownModel(Exception):
    pass


def find_user(email: str):
    """The one active user with this email address (any case)."""
    users = list(get_user_model().objects.filter(email__iexact=str(email).strip())[:2])
    if len(users) != 1:
        raise UnknownUser(f"no user has the email address {str(email).strip()!r}")
    if not users[0].is_active:
        raise UnknownUser(f"the user {users[0].email} is inactive")
    return users[0]


@dataclass(frozen=True)
class Problem:
    """What is wrong, and where: `index` is the entry's position (from 1), 0 for the manifest itself."""

    index: int
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = (
            "manifest" if not self.index else f"entry {self.index}" + (f" ({self.name})" if self.name else "")
        )
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "field": self.field, "message": self.message}


class ManifestError(Exception):
    """The manifest as a whole cannot be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(0, "", "", message)


@dataclass
class FileSource:
    """A dataset given as a file: imported for the entry's user unless it was before."""

    path: Path
    sha256: str
    mapping: str

    @property
    def key(self) -> tuple[str, str]:
        return self.sha256, self.mapping


@dataclass
class Entry:
    index: int
    raw: dict[str, Any]
    name: str = ""
    user: Any = None
    dataset: Dataset | None = None
    source: FileSource | None = None
    base_model: BaseModel | None = None
    backend: str = Backend.LOCAL
    instance_type: InstanceType | None = None
    preset: str = ""
    explicit: dict[str, Any] = field(default_factory=dict)  # hyperparameters the entry sets, as given
    max_cost_usd: Decimal | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # validated, as the job gets them
    estimate: Estimate | None = None
    batch_key: str = ""
    imported: bool = False  # its dataset was imported by this run
    job: TrainingJob | None = None
    state: str = NEW
    problems: list[Problem] = field(default_factory=list)

    def problem(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.index, self.name, field_name, message))

    @property
    def pending(self) -> bool:
        """Valid and not submitted yet."""
        return not self.problems and self.state == NEW

    @property
    def needs_import(self) -> bool:
        return self.source is not None and self.dataset is None

    def dataset_label(self) -> str:
        if self.source is not None:
            label = self.source.path.name
            return f"{label} → #{self.dataset.pk}" if self.dataset is not None else f"{label} (import)"
        return (
            f"#{self.dataset.pk} {self.dataset.name}"
            if self.dataset is not None
            else str(self.raw.get("dataset"))
        )

    def as_dict(self) -> dict[str, Any]:
        estimate = self.estimate
        return {
            "index": self.index,
            "name": self.name,
            "user": getattr(self.user, "email", self.raw.get("user")),
            "dataset": self.dataset.pk if self.dataset is not None else None,
            "dataset_file": str(self.source.path) if self.source is not None else None,
            "base_model": self.base_model.hub_id
            if self.base_model is not None
            else self.raw.get("base_model"),
            "backend": self.backend,
            "instance_type": self.instance_type.name if self.instance_type is not None else None,
            "state": self.state,
            "job": self.job.pk if self.job is not None else None,
            "steps": estimate.steps if estimate else None,
            "seconds": estimate.seconds if estimate else None,
            "cost_usd": str(estimate.cost_usd) if estimate and estimate.cost_usd is not None else None,
            "hyperparameters": self.hyperparameters or None,
            "problems": [problem.as_dict() for problem in self.problems],
        }


@dataclass
class Plan:
    entries: list[Entry]
    manifest_problems: list[Problem] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return self.manifest_problems + [problem for entry in self.entries for problem in entry.problems]

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def pending(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.pending]

    def count(self, state: str) -> int:
        return sum(1 for entry in self.entries if entry.state == state)

    @property
    def all_submitted(self) -> bool:
        return self.valid and all(entry.state in (SUBMITTED, ALREADY) for entry in self.entries)

    def totals(self) -> dict[str, Any]:
        """Estimated seconds and cost of the entries still to submit; `unknown` lack an estimate yet."""
        todo = self.pending
        known = [entry.estimate for entry in todo if entry.estimate is not None]
        return {
            "entries": len(self.entries),
            "new": len(todo),
            "already_submitted": self.count(ALREADY),
            "submitted": self.count(SUBMITTED),
            "seconds": sum(estimate.seconds for estimate in known),
            "cost_usd": sum((e.cost_usd for e in known if e.cost_usd is not None), Decimal("0.0000")),
            "unknown": len(todo) - len(known),
        }


# --- reading ---------------------------------------------------------------------------------


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The entries of a YAML or CSV manifest as dicts, as written. Raises ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        return parse_csv(text, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    return parse_yaml(text)


def parse_yaml(text: str) -> list[dict[str, Any]]:
    try:
        document = yaml.safe_load(text)
    except RecursionError:
        raise ManifestError("not valid YAML: it is nested too deeply") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error)
        raise ManifestError(f"not valid YAML{where}: {reason}") from None
    if not isinstance(document, dict) or "jobs" not in document:
        raise ManifestError("the manifest must be a mapping with a top-level `jobs:` list")
    unknown = sorted(str(key) for key in document if key != "jobs")
    if unknown:
        raise ManifestError(f"unknown top-level key(s): {', '.join(unknown)} (only `jobs:` is read)")
    jobs = document["jobs"]
    if not isinstance(jobs, list):
        raise ManifestError(f"`jobs:` must be a list of entries, not {_kind(jobs)}")
    if not jobs:
        raise ManifestError("`jobs:` is empty")
    return jobs


def parse_csv(text: str, delimiter: str = ",") -> list[dict[str, Any]]:
    """Rows as entries: empty cells are left out, `hyperparameters` (JSON) and `hp.*` columns merged."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, restkey="\x00extra")
    headers = [header.strip() for header in reader.fieldnames or []]
    if not headers:
        raise ManifestError("the CSV file is empty: its first line must name the columns")
    reader.fieldnames = headers
    unknown = [
        h for h in headers if h not in FIELDS and not (h.startswith(HP_PREFIX) and len(h) > len(HP_PREFIX))
    ]
    if unknown:
        raise ManifestError(f"unknown column(s): {', '.join(unknown)} (known: {', '.join(FIELDS)}, hp.NAME)")
    entries: list[dict[str, Any]] = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:  # a cell over the csv module's size limit, a broken quote
            raise ManifestError(f"line {reader.line_num} cannot be read as CSV: {error}") from None
        extra = row.pop("\x00extra", None)
        cells = {key: value.strip() for key, value in row.items() if key and value and value.strip()}
        if not cells and not extra:
            continue
        entry: dict[str, Any] = {key: value for key, value in cells.items() if not key.startswith(HP_PREFIX)}
        problems = []
        if extra:
            problems.append(("", f"line {reader.line_num} has more cells than there are columns"))
        if "hyperparameters" in entry:
            try:
                entry["hyperparameters"] = json.loads(entry["hyperparameters"])
            except ValueError as error:
                problems.append(("hyperparameters", f"not a JSON object ({error})"))
                entry.pop("hyperparameters")
        columns = {key[len(HP_PREFIX) :]: value for key, value in cells.items() if key.startswith(HP_PREFIX)}
        if columns:
            merged = entry.get("hyperparameters")
            merged = dict(merged) if isinstance(merged, dict) else {}
            for name, value in columns.items():
                if name in merged:
                    problems.append((f"hyperparameters.{name}", "given twice (JSON column and hp. column)"))
                merged[name] = value
            if isinstance(entry.get("hyperparameters", {}), dict):
                entry["hyperparameters"] = merged
        if problems:
            entry["\x00problems"] = problems
        entries.append(entry)
    if not entries:
        raise ManifestError("the CSV file has no rows")
    return entries


# --- phase 1: check ------------------------------------------------------------------------------


def check_manifest(path: Path) -> Plan:
    """Read and check every entry; nothing is stored. Never raises for bad input: see `Plan.problems`."""
    path = Path(path)
    try:
        raw_entries = read_manifest(path)
    except ManifestError as error:
        return Plan(entries=[], manifest_problems=[error.problem])
    return check_entries(raw_entries, base_dir=path.resolve().parent)


def check_entries(raw_entries: list[Any], base_dir: Path) -> Plan:
    entries = []
    for index, raw in enumerate(raw_entries, 1):
        entry = Entry(index=index, raw=raw if isinstance(raw, dict) else {})
        if not isinstance(raw, dict):
            entry.problem("", f"must be a mapping of fields ({', '.join(REQUIRED)}, …), not {_kind(raw)}")
        else:
            _check_entry(entry, base_dir)
        entries.append(entry)
    _check_duplicate_names(entries)
    check_budgets(entries)
    return Plan(entries=entries)


def _check_entry(entry: Entry, base_dir: Path) -> None:
    raw = entry.raw
    name = raw.get("name")
    if isinstance(name, str | int | float) and not isinstance(name, bool) and str(name).strip():
        entry.name = str(name).strip()
    for field_name, message in raw.pop("\x00problems", []):
        entry.problem(field_name, message)
    for key in raw:
        if key not in FIELDS:
            entry.problem(str(key), f"unknown field (known: {', '.join(FIELDS)})")
    for key in REQUIRED:
        if raw.get(key) in (None, ""):
            entry.problem(key, "is required")
    for key in ("name", "user", "mapping", "base_model", "backend", "instance_type", "method", "preset"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str) and not (key == "name" and entry.name):
            entry.problem(key, f"must be text, not {_kind(value)}")
    _check_user(entry)
    _check_model(entry)
    _check_backend(entry)
    _check_hyperparameters(entry)
    _check_cost_cap(entry)
    if entry.user is not None:
        _check_dataset(entry, base_dir)
    elif raw.get("dataset") not in (None, ""):
        _check_dataset_file_only(entry, base_dir)
    if entry.problems:
        return
    entry.batch_key = batch_key(entry)
    entry.job = TrainingJob.objects.filter(owner=entry.user, batch_key=entry.batch_key).first()
    if entry.job is not None:
        entry.state = ALREADY
        return
    check_with_form(entry)


def _text(entry: Entry, key: str) -> str:
    value = entry.raw.get(key)
    return value.strip() if isinstance(value, str) else ""


def _check_user(entry: Entry) -> None:
    email = _text(entry, "user")
    if not email:
        return
    try:
        entry.user = find_user(email)
    except UnknownUser as error:
        entry.problem("user", str(error))


def find_model(wanted: str) -> BaseModel:
    """The active catalogue model with this Hub id, or else this name (any case). Raises UnknownModel."""
    models = BaseModel.objects.filter(is_active=True)
    found = list(models.filter(hub_id=wanted)) or list(models.filter(name__iexact=wanted))
    if len(found) == 1:
        return found[0]
    if found:
        raise UnknownModel(f"{wanted!r} names {len(found)} models: give its Hub id instead")
    known = ", ".join(models.values_list("hub_id", flat=True)[:6])
    raise UnknownModel(f"no model in the catalogue is called {wanted!r} (Hub ids: {known}, …)")


def _check_model(entry: Entry) -> None:
    wanted = _text(entry, "base_model")
    if not wanted:
        return
    try:
        entry.base_model = find_model(wanted)
    except UnknownModel as error:
        entry.problem("base_model", str(error))


def _check_backend(entry: Entry) -> None:
    backend = _text(entry, "backend") or Backend.LOCAL
    if backend not in Backend.values:
        entry.problem("backend", f"must be one of {', '.join(Backend.values)}, not {backend!r}")
        entry.backend = ""
        return
    entry.backend = backend
    name = _text(entry, "instance_type")
    if backend != Backend.SAGEMAKER:
        if name:
            entry.problem(
                "instance_type", "only SageMaker jobs run on an instance type; this one trains locally"
            )
        return
    if not name:
        entry.problem("instance_type", "is required to train on SageMaker (e.g. ml.g5.xlarge)")
        return
    entry.instance_type = InstanceType.objects.filter(is_active=True, name=name).first()
    if entry.instance_type is None:
        known = ", ".join(InstanceType.objects.filter(is_active=True).values_list("name", flat=True))
        entry.problem("instance_type", f"unknown instance type {name!r} (known: {known})")


def _check_hyperparameters(entry: Entry) -> None:
    raw = entry.raw
    given = raw.get("hyperparameters")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        entry.problem("hyperparameters", f"must be a mapping of names to values, not {_kind(given)}")
        given = {}
    explicit: dict[str, Any] = {}
    for key, value in given.items():
        name = str(key)
        if name == "base_model":
            entry.problem("hyperparameters.base_model", "set the model with the entry's base_model field")
        elif name not in HYPERPARAMETER_FIELDS:
            entry.problem(f"hyperparameters.{name}", "unknown hyperparameter")
        elif isinstance(value, dict | list):
            entry.problem(f"hyperparameters.{name}", f"must be a single value, not {_kind(value)}")
        else:
            explicit[name] = value
    method = _text(entry, "method")
    if method:
        if "method" in explicit and str(explicit["method"]).strip().lower() != method.lower():
            entry.problem("method", f"says {method!r} but hyperparameters.method says {explicit['method']!r}")
        explicit["method"] = method
    # The same rules as the form (which runs once the rest of the entry is right): listed now so that
    # every problem of an entry shows at once. The form's checkbox would also read any text as true.
    values = dict(explicit)
    if entry.base_model is not None:
        values["base_model"] = entry.base_model.hub_id
    for name, error in validate_hyperparameters(values)[1].items():
        field_name = "method" if name == "method" and _text(entry, "method") else f"hyperparameters.{name}"
        entry.problem(field_name, error)
    entry.explicit = explicit
    preset = _text(entry, "preset")
    if preset and preset not in PRESET_NAMES:
        entry.problem("preset", f"must be one of {', '.join(PRESET_NAMES)}, not {preset!r}")
    entry.preset = preset


def _check_cost_cap(entry: Entry) -> None:
    value = entry.raw.get("max_cost_usd")
    if value in (None, ""):
        return
    if isinstance(value, bool):
        entry.problem("max_cost_usd", "must be an amount in US dollars")
        return
    cap = forms.DecimalField(min_value=Decimal("0.01"), max_digits=10, decimal_places=2)
    try:
        entry.max_cost_usd = cap.clean(str(value))
    except forms.ValidationError as error:
        entry.problem("max_cost_usd", " ".join(error.messages))
        return
    if entry.backend == Backend.LOCAL:
        entry.problem("max_cost_usd", "only SageMaker jobs cost money; this one trains locally")
    elif entry.instance_type is not None:
        # The cap becomes the job's time limit on SageMaker; too small a one could not even start it.
        seconds = pricing.max_runtime_seconds(
            entry.max_cost_usd, entry.instance_type, 1, settings.MAX_JOB_RUNTIME_SECONDS
        )
        if seconds < pricing.MIN_RUNTIME_SECONDS:
            needed = pricing.cap_for_seconds(pricing.MIN_RUNTIME_SECONDS, entry.instance_type)
            entry.problem(
                "max_cost_usd",
                f"${entry.max_cost_usd} buys only {seconds} s on {entry.instance_type.name}; a job needs at "
                f"least {pricing.MIN_RUNTIME_SECONDS // 60} minutes, so allow at least ${needed}",
            )


def _check_dataset(entry: Entry, base_dir: Path) -> None:
    value = entry.raw.get("dataset")
    if value in (None, ""):
        return
    mapping = _text(entry, "mapping")
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        if mapping:
            entry.problem("mapping", "only a dataset given as a file is read with a mapping")
        dataset = Dataset.objects.filter(pk=int(value)).first()
        if dataset is None:
            entry.problem("dataset", f"no dataset has the id {value}")
        elif dataset.owner_id != entry.user.pk:
            entry.problem("dataset", f"dataset {value} is not one of {entry.user.email}'s datasets")
        elif not dataset.is_ready:
            reason = f": {dataset.error}" if dataset.error else ""
            entry.problem("dataset", f"dataset {value} is not ready ({dataset.get_status_display()}{reason})")
        else:
            entry.dataset = dataset
        return
    source = _check_file(entry, value, mapping, base_dir)
    if source is None:
        return
    entry.source = source
    entry.dataset = reusable_dataset(entry.user, source)


def _check_dataset_file_only(entry: Entry, base_dir: Path) -> None:
    """Without a user, a file dataset can still be checked (so its problems are listed too)."""
    value = entry.raw.get("dataset")
    if isinstance(value, str) and not value.strip().isdigit():
        _check_file(entry, value, _text(entry, "mapping"), base_dir)


def _check_file(entry: Entry, value: Any, mapping: str, base_dir: Path) -> FileSource | None:
    if not isinstance(value, str):
        entry.problem("dataset", f"must be a dataset id or a file path, not {_kind(value)}")
        return None
    path = Path(value.strip()).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        entry.problem("dataset", f"file not found: {path}")
        return None
    # Whoever wrote the manifest must not make the server read any file it can (a key, /etc/passwd)
    # into a user's dataset, which that user could then download: files come from its own folder.
    folder = base_dir.resolve()
    if not path.resolve().is_relative_to(folder):
        entry.problem(
            "dataset", f"{value.strip()} is not inside the manifest's folder ({folder}); copy it there"
        )
        return None
    try:
        parse_mapping(mapping)
        with open(path, "rb") as handle:
            dataset_actions.check_file(handle, path.name, dataset_actions.ReadOptions(mapping=mapping))
    except MappingError as error:
        entry.problem("mapping", str(error))
        return None
    except dataset_actions.PreparationError as error:
        entry.problem("dataset", f"{path.name}: {error}")
        return None
    except OSError as error:
        entry.problem("dataset", f"cannot read {path}: {error.strerror or error}")
        return None
    return FileSource(path=path, sha256=file_sha256(path), mapping=mapping)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def reusable_dataset(user, source: FileSource) -> Dataset | None:
    """A ready dataset imported for this user from the same bytes with the same mapping, if any."""
    imported = (
        ManifestDataset.objects.filter(owner=user, sha256=source.sha256, read_options=source.mapping)
        .select_related("dataset")
        .order_by("-created_at")
    )
    for record in imported:
        if record.dataset.is_ready:
            return record.dataset
    return None


def batch_key(entry: Entry) -> str:
    """A hash of what the entry asks for; the same entry in a later run gives the same key."""
    normalized = validate_hyperparameters(entry.explicit)[0]
    spec = {
        "user": entry.user.pk,
        "name": entry.name,
        "dataset": {"sha256": entry.source.sha256, "mapping": entry.source.mapping}
        if entry.source is not None
        else entry.dataset.pk,
        "base_model": entry.base_model.hub_id,
        "backend": entry.backend,
        "instance_type": entry.instance_type.name if entry.instance_type is not None else None,
        "preset": entry.preset,
        "hyperparameters": {name: normalized[name] for name in sorted(entry.explicit)},
        "max_cost_usd": str(entry.max_cost_usd) if entry.max_cost_usd is not None else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def check_with_form(entry: Entry) -> None:
    """Run the entry through NewJobForm, the launch form, and keep what it makes of it.

    A file dataset that is not imported yet is checked without a dataset; `recheck`
    runs the form again once it is.
    """
    form = NewJobForm(entry.user, form_data(entry))
    form.is_valid()
    for name, messages in form.errors.items():
        if name == "dataset" and entry.dataset is None and entry.source is not None:
            continue  # not imported yet
        for message in messages:
            entry.problem(*_form_problem(name, message))
    entry.hyperparameters = form.cleaned_data.get("hyperparameters") or {}
    entry.estimate = form.estimate


def form_data(entry: Entry) -> dict[str, Any]:
    """The POST data the launch form would get for this entry."""
    data: dict[str, Any] = {
        "name": entry.name,
        "base_model": entry.base_model.pk,
        "backend": entry.backend,
        "preset": presets.CUSTOM,
    }
    if entry.dataset is not None:
        data["dataset"] = entry.dataset.pk
    if entry.instance_type is not None:
        data["instance_type"] = entry.instance_type.pk
    # The form reads a missing checkbox as false: every value goes in, the spec's defaults (or the
    # preset's values) where the entry sets none, as the page shows them before anyone types.
    if entry.preset:
        values = presets.preset_values(entry.preset, base_model=entry.base_model, dataset=entry.dataset)
    else:
        values = {name: DEFAULTS[name] for name in HYPERPARAMETER_FIELDS}
    values.update(entry.explicit)
    for name, value in values.items():
        if name not in HYPERPARAMETER_FIELDS or value is None:
            continue
        if HYPERPARAMETERS[name].type == "bool":
            if validate_hyperparameters({name: value})[0][name]:
                data[name] = "on"
        else:
            data[name] = value if isinstance(value, str) else json.dumps(value)
    if entry.max_cost_usd is not None:
        data["max_cost_usd"] = str(entry.max_cost_usd)
    return data


def _form_problem(name: str, message: str) -> tuple[str, str]:
    if name == "__all__":
        return "", message
    if name in HYPERPARAMETER_FIELDS and name != "method":
        return f"hyperparameters.{name}", message.removeprefix(f"{name} ")
    return name, message.removeprefix(f"{name} ")


def _check_duplicate_names(entries: list[Entry]) -> None:
    first: dict[str, int] = {}
    for entry in entries:
        if not entry.name:
            continue
        key = entry.name.casefold()
        if key in first:
            entry.problem("name", f"the same name as entry {first[key]}: names must differ within a manifest")
        else:
            first[key] = entry.index


def check_budgets(entries: list[Entry]) -> None:
    """The SageMaker entries of each user must fit, together, in what is left of their monthly budget."""
    earlier: dict[int, Decimal] = defaultdict(Decimal)
    for entry in entries:
        if not entry.pending or entry.estimate is None or entry.estimate.cost_usd is None:
            continue
        cost = Decimal(entry.estimate.cost_usd)
        before = earlier[entry.user.pk]
        if not before:
            message = pricing.check_budget(entry.user, cost)
        else:
            left = pricing.remaining_budget(entry.user)
            message = None
            if before + cost > left:
                message = (
                    f"estimated at ${cost:,.2f}, which with the ${before:,.2f} of this manifest's earlier "
                    f"SageMaker entries for {entry.user.email} goes over what is left of their monthly "
                    "budget "
                    f"(${max(Decimal(0), left):,.2f} of ${pricing.monthly_budget(entry.user):,.2f})"
                )
        if message:
            entry.problem("budget", message)
        else:
            earlier[entry.user.pk] += cost


# --- phase 2: import -------------------------------------------------------------------------------


def import_datasets(plan: Plan, progress: Progress | None = None) -> None:
    """Import the file of each pending entry that needs one (once per user and file content)."""
    say = progress or (lambda message: None)
    todo = [entry for entry in plan.pending if entry.needs_import]
    done: dict[tuple[int, tuple[str, str]], Dataset | str] = {}
    for number, entry in enumerate(todo, 1):
        key = (entry.user.pk, entry.source.key)
        if key not in done:
            # Another run may have imported it since this one was checked.
            done[key] = reusable_dataset(entry.user, entry.source) or ""
        if not done[key]:
            say(f"[{number}/{len(todo)}] importing {entry.source.path} for {entry.user.email}")
            done[key] = import_file(entry.user, entry.source, say)
        result = done[key]
        if isinstance(result, Dataset):
            entry.dataset = result
            entry.imported = True
        else:
            entry.problem("dataset", result)


def import_file(user, source: FileSource, progress: Progress) -> Dataset | str:
    """Store and prepare the file as the user's dataset here and now (as `import_dataset` does).

    Returns the ready dataset, or why it is not.
    """
    read = dataset_actions.ReadOptions(mapping=source.mapping)
    with open(source.path, "rb") as handle:
        try:
            dataset = dataset_actions.create_dataset(user, File(handle), source.path.name, read, queue=False)
        except dataset_actions.PreparationError as error:
            return f"{source.path.name}: {error}"
    dataset_actions.run_preparation(
        dataset.pk, on_progress=lambda rows: progress(f"      {rows:,} rows read")
    )
    dataset.refresh_from_db()
    if not dataset.is_ready:
        return f"{source.path.name} could not be prepared: {dataset.error or dataset.get_status_display()}"
    ManifestDataset.objects.create(
        owner=user, sha256=source.sha256, read_options=source.mapping, dataset=dataset
    )
    progress(
        f"      dataset {dataset.pk} “{dataset.name}”: {dataset.samples:,} samples, {dataset.tokens:,} tokens"
    )
    return dataset


# --- phase 3: check again ---------------------------------------------------------------------------


def recheck(plan: Plan) -> None:
    """The form again for entries whose dataset was just imported, then the budgets with every estimate."""
    for entry in plan.pending:
        if entry.imported:
            check_with_form(entry)
    check_budgets(plan.entries)


# --- phase 4: submit ---------------------------------------------------------------------------------


def submit(plan: Plan, progress: Progress | None = None) -> None:
    say = progress or (lambda message: None)
    todo = plan.pending
    for number, entry in enumerate(todo, 1):
        try:
            entry.job = actions.launch_job(
                entry.user,
                estimate=entry.estimate,
                name=entry.name,
                dataset=entry.dataset,
                base_model=entry.base_model,
                backend=entry.backend,
                method=entry.hyperparameters["method"],
                hyperparameters=entry.hyperparameters,
                instance_type=entry.instance_type,
                max_cost_usd=entry.max_cost_usd,
                batch_key=entry.batch_key,
            )
        except IntegrityError:
            # Another run of the same manifest submitted it a moment ago.
            entry.job = TrainingJob.objects.filter(owner=entry.user, batch_key=entry.batch_key).first()
            entry.state = ALREADY
            job_id = entry.job.pk if entry.job is not None else "?"
            say(f"[{number}/{len(todo)}] {entry.name}: already submitted (job {job_id})")
            continue
        entry.state = SUBMITTED
        say(f"[{number}/{len(todo)}] submitted {entry.name} as job {entry.job.pk}")


def run_manifest(path: Path, *, dry_run: bool = False, progress: Progress | None = None) -> Plan:
    """Check, then (unless `dry_run`) import and submit. See the module's docstring."""
    plan = check_manifest(path)
    if dry_run or not plan.valid:
        return plan
    import_datasets(plan, progress)
    if plan.valid:
        recheck(plan)
    if plan.valid:
        submit(plan, progress)
    else:
        for entry in plan.pending:
            entry.state = NOT_SUBMITTED
    return plan


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), f"a {type(value).__name__}"
    )
