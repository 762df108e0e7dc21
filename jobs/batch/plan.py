"""What a run of a manifest knows: its entries, each with what it became and what is wrong with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from datasets_app.models import Dataset
from jobs.estimate import Estimate
from jobs.models import Backend, BaseModel, InstanceType, TrainingJob

Progress = Callable[[str], None]

NEW = "new"
SUBMITTED = "submitted"
ALREADY = "already submitted"
NOT_SUBMITTED = "not submitted"


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
    instance_count: int = 1
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

    def text(self, key: str) -> str:
        """The field as stripped text; "" when it is missing or not text."""
        value = self.raw.get(key)
        return value.strip() if isinstance(value, str) else ""

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
