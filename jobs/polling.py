"""The one query behind a job page's progress card, which every open job page asks for every 2 s.

It is written out once from the models' own column names and run on a plain cursor: Django's
query compiler, and RawQuerySet's matching of columns to fields, were most of that request's
time (bench/bench_progress.py). On PostgreSQL it is a prepared statement, as planning it took the
server longer than running it. The row becomes a TrainingJob through `from_db` and the
database's own converters, as the ORM would make it; columns not read here load on access.
"""

from __future__ import annotations

from functools import lru_cache

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper

from jobs.models import InstanceType, TrainingJob

# What the card shows: the job's progress columns, and its instance's price for the running cost.
JOB_FIELDS = (
    "id",
    "owner",
    "name",
    "backend",
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
    "created_at",
    "started_at",
    "training_started_at",
    "finished_at",
    "heartbeat_at",
)
INSTANCE_FIELDS = ("price_per_hour_usd",)


def progress_job(owner_id: int, pk: int) -> TrainingJob | None:
    """Job `pk` if `owner_id` owns it, with JOB_FIELDS and its instance type's price loaded."""
    connection = connections[router.db_for_read(TrainingJob)]
    sql, job_attnames, instance_attnames, converters = _statement(connection)
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
    job = TrainingJob.from_db(connection.alias, job_attnames, values[: len(job_attnames)])
    if job.instance_type_id is not None:
        job.instance_type = InstanceType.from_db(
            connection.alias, instance_attnames, values[len(job_attnames) :]
        )
    return job


def _in_model_order(model, names) -> list:
    # from_db, given some of a model's fields, expects them in the model's own order.
    return [field for field in model._meta.concrete_fields if field.name in names]


@lru_cache(maxsize=64)
def _statement(connection: BaseDatabaseWrapper) -> tuple[str, list[str], list[str], list]:
    """The SQL, the attribute names it fills, and each column's converters (per connection)."""
    quote = connection.ops.quote_name
    job_fields = _in_model_order(TrainingJob, JOB_FIELDS)
    instance_fields = _in_model_order(InstanceType, ("id", *INSTANCE_FIELDS))
    read = job_fields + instance_fields
    job_table, instance_table = quote(TrainingJob._meta.db_table), quote(InstanceType._meta.db_table)
    columns = [f"{quote(field.model._meta.db_table)}.{quote(field.column)}" for field in read]
    job_pk = f"{job_table}.{quote(TrainingJob._meta.pk.column)}"
    owner = f"{job_table}.{quote(TrainingJob._meta.get_field('owner').column)}"
    instance_type = f"{job_table}.{quote(TrainingJob._meta.get_field('instance_type').column)}"
    instance_pk = f"{instance_table}.{quote(InstanceType._meta.pk.column)}"
    # Only names from the models' own metadata go into the text; the ids are parameters.
    sql = (
        f"SELECT {', '.join(columns)} FROM {job_table} "  # noqa: S608  # nosec B608
        f"LEFT OUTER JOIN {instance_table} ON {instance_pk} = {instance_type} "
        f"WHERE {job_pk} = %s AND {owner} = %s"
    )
    converters = []
    for field in read:
        expression = field.get_col(field.model._meta.db_table)
        functions = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
        converters.append((expression, functions))
    return (
        sql,
        [field.attname for field in job_fields],
        [field.attname for field in instance_fields],
        converters,
    )
