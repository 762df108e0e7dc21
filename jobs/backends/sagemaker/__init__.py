"""AWS SageMaker backend: the only package that talks to SageMaker, CloudWatch Logs, IAM and Service Quotas.

- `config`: whether SageMaker is configured (settings only), its bucket, a job's name there.
- `clients`, `errors`, `quotas`: this process's boto3 clients; which AWS errors are transient
  and what a permanent one tells the user to do; the training quotas.
- `submit` (Celery task `submit_job`): the job's data and `training_scripts/` go to S3 and
  `sagemaker.train.ModelTrainer` creates the training job without waiting.
- `stop` (`stop_job`): StopTrainingJob; the poller moves the job on to stopped.
- `poll` (Celery beat, `poll_jobs`), with `budget` (its calls, paced and budgeted), `logs`
  (tailing CloudWatch into the lifecycle) and `apply` (what a description means for the job
  and its cost).
- `checks` (`manage.py check_sagemaker`): credentials, role, buckets, quotas.

The web process only calls `is_configured` and `unavailable_reason`, which read
settings: nothing here runs inside a request. The rest of the code uses the names below.
"""

from jobs.backends.sagemaker.budget import PollBudget, PollReport
from jobs.backends.sagemaker.checks import Check, run_checks
from jobs.backends.sagemaker.clients import AWS, aws
from jobs.backends.sagemaker.config import (
    AWS_ACTIVE,
    AWS_FINAL,
    bucket_name,
    is_configured,
    job_name,
    unavailable_reason,
)
from jobs.backends.sagemaker.errors import SageMakerError, TransientAWSError, retry_delay
from jobs.backends.sagemaker.poll import poll_jobs
from jobs.backends.sagemaker.stop import give_up_stop, stop_job
from jobs.backends.sagemaker.submit import give_up_submission, submit_job

__all__ = [
    "AWS",
    "AWS_ACTIVE",
    "AWS_FINAL",
    "Check",
    "PollBudget",
    "PollReport",
    "SageMakerError",
    "TransientAWSError",
    "aws",
    "bucket_name",
    "give_up_stop",
    "give_up_submission",
    "is_configured",
    "job_name",
    "poll_jobs",
    "retry_delay",
    "run_checks",
    "stop_job",
    "submit_job",
    "unavailable_reason",
]
