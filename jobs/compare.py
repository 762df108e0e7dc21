"""Two to four of a user's jobs side by side: their loss curves, figures and differing settings.

Built from two queries whatever the number of points (the jobs, then their loss points), so
the page costs the same for a 50-step job and a 50,000-step one; long curves are thinned to
MAX_POINTS_PER_SERIES, keeping each series' first and last point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django import forms
from django.db.models import QuerySet

from jobs.models import MetricPoint, TrainingJob

MIN_JOBS, MAX_JOBS = 2, 4
MAX_POINTS_PER_SERIES = 1000


class JobIdsField(forms.TypedMultipleChoiceField):
    """Whole numbers: an id the user does not own is a 404 in jobs_to_compare, not a form error
    that would tell which ids exist."""

    def valid_value(self, value) -> bool:
        return str(value).isdigit() and len(str(value)) <= 18


class CompareForm(forms.Form):
    """?job=<id>&job=<id>…: the jobs to compare, in the order given."""

    job = JobIdsField(coerce=int, required=False, widget=forms.MultipleHiddenInput)

    def clean_job(self) -> list[int]:
        ids = list(dict.fromkeys(self.cleaned_data["job"]))
        if not MIN_JOBS <= len(ids) <= MAX_JOBS:
            raise forms.ValidationError(
                f"Choose {MIN_JOBS} to {MAX_JOBS} different jobs to compare ({len(ids)} chosen)."
            )
        return ids


@dataclass
class Row:
    label: str
    values: list
    differs: bool = False


@dataclass
class Comparison:
    jobs: list[TrainingJob]
    series: list[dict] = field(default_factory=list)
    figures: list[Row] = field(default_factory=list)
    evaluation: list[Row] = field(default_factory=list)
    hyperparameters: list[Row] = field(default_factory=list)

    @property
    def differing_hyperparameters(self) -> list[Row]:
        return [row for row in self.hyperparameters if row.differs]

    @property
    def same_hyperparameters(self) -> list[Row]:
        return [row for row in self.hyperparameters if not row.differs]


def jobs_to_compare(jobs: QuerySet[TrainingJob], ids: list[int]) -> list[TrainingJob] | None:
    """The jobs with these ids among `jobs` (the user's own), in the order asked; None if one is not."""
    found = {
        job.pk: job
        for job in jobs.filter(pk__in=ids).select_related("base_model", "dataset", "instance_type")
    }
    if len(found) != len(ids):
        return None
    return [found[pk] for pk in ids]


def compare(jobs: list[TrainingJob]) -> Comparison:
    comparison = Comparison(jobs=jobs)
    comparison.series = loss_series(jobs)
    comparison.hyperparameters = hyperparameter_rows(jobs)
    comparison.evaluation = evaluation_rows(jobs)
    return comparison


def loss_series(jobs: list[TrainingJob]) -> list[dict]:
    """Per job, a training and an evaluation series of [step, value] points, for charts.js."""
    train: dict[int, list] = {job.pk: [] for job in jobs}
    evals: dict[int, list] = {job.pk: [] for job in jobs}
    points = (
        MetricPoint.objects.filter(job__in=[job.pk for job in jobs])
        .order_by("job_id", "step", "id")
        .values_list("job_id", "step", "loss", "eval_loss")
    )
    for job_id, step, loss, eval_loss in points.iterator(chunk_size=5000):
        if loss is not None:
            train[job_id].append([step, loss])
        if eval_loss is not None:
            evals[job_id].append([step, eval_loss])
    series = []
    for index, job in enumerate(jobs):
        series.append(
            {
                "job": job.pk,
                "index": index,
                "kind": "train",
                "label": f"{job.name}: training loss",
                "points": thinned(train[job.pk]),
            }
        )
        if evals[job.pk]:
            series.append(
                {
                    "job": job.pk,
                    "index": index,
                    "kind": "eval",
                    "label": f"{job.name}: evaluation loss",
                    "points": thinned(evals[job.pk]),
                }
            )
    return series


def thinned(points: list, limit: int = MAX_POINTS_PER_SERIES) -> list:
    """At most `limit` points, evenly spaced by position, the first and the last always kept."""
    if len(points) <= limit:
        return points
    stride = (len(points) - 1) / (limit - 1)
    return [points[round(i * stride)] for i in range(limit)]


def _row(label: str, values: list) -> Row:
    shown = [value for value in values if value not in (None, "", "–")]
    return Row(label, values, differs=len({repr(value) for value in values}) > 1 and bool(shown))


def hyperparameter_rows(jobs: list[TrainingJob]) -> list[Row]:
    """Every hyperparameter any of the jobs set, in the script's order; `differs` marks disagreement."""
    from training_scripts.hyperparameters import HYPERPARAMETERS, validate_hyperparameters

    used = []
    for job in jobs:
        clean, errors = validate_hyperparameters(job.hyperparameters)
        used.append(job.hyperparameters if errors else clean)
    names = [name for name in HYPERPARAMETERS if any(name in values for values in used)]
    names += sorted({name for values in used for name in values} - set(names))
    return [_row(name, [values.get(name) for values in used]) for name in names]


def evaluation_rows(jobs: list[TrainingJob]) -> list[Row]:
    """Tuned-model scores from each job's evaluation (metrics["evaluation"]["tuned"]), one row per metric."""
    tuned = [((job.metrics or {}).get("evaluation") or {}).get("tuned") or {} for job in jobs]
    names = list(dict.fromkeys(name for scores in tuned for name in scores))
    return [_row(name, [scores.get(name) for scores in tuned]) for name in names]
