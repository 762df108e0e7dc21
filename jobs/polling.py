"""The one query behind a job page's progress card, which every open job page asks for every 2 s.

It is written out once from the models' own column names and run on a plain cursor: Django's
query compiler, and RawQuerySet's matching of columns to fields, were most of that request's
time (bench/bench_progress.py). On PostgreSQL it is a prepared statement, as planning it took the
server longer than running it. Each row becomes a model instance through `from_db` and the
database's own converters, as the ORM would make it; columns not read here load on access.

The owner's whole row comes with the job, so that the view can sign its user in from it
(accounts.backends.known_user) rather than make a round trip to the cache for the same row.
"""

from __future__ import annotations

from functools import lru_cache

from django.contrib.auth import get_user_model
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper

from jobs.models import InstanceType, TrainingJob

# What the card shows: the job's progress columns, and its instance's price for the running cost.
JOB_FIELDS = (
    "id",
    "owner",
    "name",
    "backend",
    "method",  # the download buttons (jobs.artifacts.export_variants)
    "status",
    "status_message",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "eval_loss",
    "tokens_per_second",
    "eta_seconds",
    "cost_usd",
    "instance_type",
    "instance_count",
    "estimated_seconds",
    "estimated_slow_seconds",
    "estimated_phases",
    "estimate_basis",
    "phase",
    "phase_started_at",
    "created_at",
    "started_at",
    "training_started_at",
    "finished_at",
    "heartbeat_at",
    "checkpoint_step",  # the Resume button
    "resumed_at_step",  # the chart's resume marker
    # Whether a stopped job kept its model so far (jobs.artifacts.has_model), for its buttons.
    "metrics",
    "model_prefix",
    "model_artifacts_uri",
)
INSTANCE_FIELDS = ("id", "price_per_hour_usd")


def progress_job(owner_id: int, pk: int) -> TrainingJob | None:
    """Job `pk` if `owner_id` owns it, with JOB_FIELDS, its instance type's price and its owner."""
    connection = connections[router.db_for_read(TrainingJob)]
    sql, parts, converters = _statement(connection)
    # PostgreSQL plans it once per connection (llmtuner/postgresql); SQLite keeps its own statement cache.
    cursor = connection.prepared_cursor() if hasattr(connection, "prepared_cursor") else connection.cursor()
    with cursor:
        cursor.execute(sql, [pk, owner_id])
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for value, (expression, functions) in zip(row, converters, strict=True):
        for convert in functions:
            value = convert(value, expression, connection)
        values.append(value)
    (job_attnames, job_end), (instance_attnames, instance_end), (owner_attnames, _) = parts
    job = TrainingJob.from_db(connection.alias, job_attnames, values[:job_end])
    if job.instance_type_id is not None:
        instance_values = values[job_end:instance_end]
        job.instance_type = InstanceType.from_db(connection.alias, instance_attnames, instance_values)
    job.owner = get_user_model().from_db(connection.alias, owner_attnames, values[instance_end:])
    return job


def _in_model_order(model, names) -> list:
    # from_db, given some of a model's fields, expects them in the model's own order.
    return [field for field in model._meta.concrete_fields if field.name in names]


@lru_cache(maxsize=64)
def _statement(connection: BaseDatabaseWrapper) -> tuple[str, list[tuple[list[str], int]], list]:
    """The SQL, each model's attribute names with where its columns end, and each column's converters."""
    quote = connection.ops.quote_name
    User = get_user_model()
    job_fields = _in_model_order(TrainingJob, JOB_FIELDS)
    instance_fields = _in_model_order(InstanceType, INSTANCE_FIELDS)
    owner_fields = list(User._meta.concrete_fields)
    read = job_fields + instance_fields + owner_fields

    def column(model, name: str) -> str:
        return f"{quote(model._meta.db_table)}.{quote(model._meta.get_field(name).column)}"

    job_table, instance_table, user_table = (
        quote(model._meta.db_table) for model in (TrainingJob, InstanceType, User)
    )
    columns = [f"{quote(field.model._meta.db_table)}.{quote(field.column)}" for field in read]
    # Only names from the models' own metadata go into the text; the ids are parameters.
    sql = (
        f"SELECT {', '.join(columns)} FROM {job_table} "  # noqa: S608  # nosec B608
        f"INNER JOIN {user_table} ON {column(User, User._meta.pk.name)} = {column(TrainingJob, 'owner')} "
        f"LEFT OUTER JOIN {instance_table} "
        f"ON {column(InstanceType, 'id')} = {column(TrainingJob, 'instance_type')} "
        f"WHERE {column(TrainingJob, 'id')} = %s AND {column(TrainingJob, 'owner')} = %s"
    )
    converters = []
    for field in read:
        expression = field.get_col(field.model._meta.db_table)
        functions = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
        converters.append((expression, functions))
    parts, end = [], 0
    for fields in (job_fields, instance_fields, owner_fields):
        end += len(fields)
        parts.append(([field.attname for field in fields], end))
    return sql, parts, converters
