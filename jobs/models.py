from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.urls import reverse


class Architecture(models.TextChoices):
    CAUSAL = "causal", "Causal LM"
    SEQ2SEQ = "seq2seq", "Sequence-to-sequence"


class Method(models.TextChoices):
    FULL = "full", "Full fine-tuning"
    LORA = "lora", "LoRA"
    QLORA = "qlora", "QLoRA"


class BaseModel(models.Model):
    """A model people can start from: a Hugging Face Hub id or a `scratch:` recipe."""

    name = models.CharField(max_length=100)
    hub_id = models.CharField(max_length=200, unique=True, help_text="Hub id, local path, or scratch:NAME")
    family = models.CharField(max_length=50)
    architecture = models.CharField(max_length=10, choices=Architecture.choices, default=Architecture.CAUSAL)
    parameters = models.BigIntegerField(help_text="Number of parameters")
    context_length = models.PositiveIntegerField()
    licence = models.CharField(max_length=100)
    gated = models.BooleanField(default=False, help_text="Needs HF_TOKEN and an accepted licence")
    recommended_method = models.CharField(max_length=10, choices=Method.choices, default=Method.FULL)
    recommended_instance_types = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveIntegerField(default=100)

    class Meta:
        ordering = ["sort_order", "parameters"]

    def __str__(self) -> str:
        return self.name

    @property
    def parameters_display(self) -> str:
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.1f}B"
        return f"{self.parameters / 1e6:.0f}M"


class InstanceType(models.Model):
    """A SageMaker training instance type with its price; drives estimates and costs."""

    name = models.CharField(max_length=50, unique=True, help_text="e.g. ml.g5.xlarge")
    vcpus = models.PositiveIntegerField()
    memory_gib = models.FloatField()
    gpu_type = models.CharField(max_length=50, blank=True)
    gpu_count = models.PositiveIntegerField(default=0)
    gpu_memory_gib = models.FloatField(default=0, help_text="Per GPU")
    bf16_tflops = models.FloatField(default=0, help_text="Sustained bf16 TFLOP/s of the whole instance")
    fp32_tflops = models.FloatField(default=0, help_text="Sustained fp32 TFLOP/s of the whole instance")
    price_per_hour_usd = models.DecimalField(max_digits=10, decimal_places=4)
    price_region = models.CharField(max_length=30, default="us-east-1")
    price_date = models.DateField()
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["gpu_count", "price_per_hour_usd"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_gpu(self) -> bool:
        return self.gpu_count > 0


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PREPARING = "preparing", "Preparing"
    TRAINING = "training", "Training"
    UPLOADING = "uploading", "Saving model"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED})
ACTIVE_STATES = frozenset({JobStatus.PREPARING, JobStatus.TRAINING, JobStatus.UPLOADING, JobStatus.STOPPING})


class Backend(models.TextChoices):
    LOCAL = "local", "This machine"
    SAGEMAKER = "sagemaker", "AWS SageMaker"


class TrainingJob(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_jobs"
    )
    name = models.CharField(max_length=200)
    dataset = models.ForeignKey(
        "datasets_app.Dataset", on_delete=models.SET_NULL, null=True, related_name="training_jobs"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="training_jobs")
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LOCAL)
    method = models.CharField(max_length=10, choices=Method.choices, default=Method.FULL)
    hyperparameters = models.JSONField(default=dict, help_text="Validated values passed to finetune.py")

    status = models.CharField(
        max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    status_message = models.CharField(max_length=1000, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    celery_task_id = models.CharField(max_length=255, blank=True)

    # Progress, written by the lifecycle from the backend's events; the
    # progress partial reads only these.
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(default=0)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Final metrics from the done event")
    log_seq = models.PositiveIntegerField(default=0, help_text="Sequence number of the last log line")

    # Estimate and cost. The local backend costs nothing.
    instance_type = models.ForeignKey(
        InstanceType, on_delete=models.PROTECT, null=True, blank=True, related_name="training_jobs"
    )
    instance_count = models.PositiveIntegerField(default=1)
    use_spot = models.BooleanField(default=False)
    max_cost_usd = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    estimated_seconds = models.PositiveIntegerField(null=True, blank=True)
    estimated_cost_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    billable_seconds = models.PositiveIntegerField(null=True, blank=True)
    training_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="SageMaker TrainingTimeInSeconds (above billable with spot)"
    )
    # The launch estimate's slow end, what it was based on, and its seconds per phase (jobs.history).
    estimated_slow_seconds = models.PositiveIntegerField(null=True, blank=True)
    estimate_basis = models.CharField(max_length=200, blank=True)
    estimated_phases = models.JSONField(default=dict, blank=True, help_text="{phase: seconds}, at launch")

    # The phase the run is in (jobs.history.PHASES), since when, and when each was first entered
    # (seconds after started_at); the start event's figures (parameters, precision, world size).
    phase = models.CharField(max_length=30, blank=True)
    phase_started_at = models.DateTimeField(null=True, blank=True)
    phase_timeline = models.JSONField(default=dict, blank=True)
    run_facts = models.JSONField(default=dict, blank=True, help_text="From the start event")

    # SageMaker bookkeeping, written by the poller only.
    sagemaker_job_name = models.CharField(max_length=63, blank=True, db_index=True)
    sagemaker_status = models.CharField(max_length=30, blank=True)
    sagemaker_secondary_status = models.CharField(max_length=40, blank=True)
    sagemaker_log_state = models.JSONField(default=dict, blank=True, help_text="Log streams and their tokens")
    sagemaker_last_modified = models.DateTimeField(null=True, blank=True)
    model_artifacts_uri = models.CharField(max_length=1000, blank=True)
    sagemaker_described_at = models.DateTimeField(null=True, blank=True, help_text="Last DescribeTrainingJob")

    model_prefix = models.CharField(max_length=500, blank=True, help_text="Storage prefix of the tuned model")
    log_key = models.CharField(max_length=500, blank=True, help_text="Storage key of the full log")

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    training_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    # An operator's "mark failed" on a running job: it is stopped first, then ends failed with this.
    fail_reason = models.CharField(
        max_length=1000,
        blank=True,
        help_text="An operator's: the job ends failed with it once stopped",
    )
    notified_at = models.DateTimeField(null=True, blank=True)
    # Set by `submit_jobs`: a hash of the manifest entry, so a re-run never submits it twice.
    batch_key = models.CharField(max_length=64, blank=True, editable=False)
    # The new-job form's one-time token: the same form submitted twice makes one job.
    submit_token = models.UUIDField(null=True, blank=True, editable=False)
    # The attempt this one retries: however many clicks, an attempt has one next attempt.
    retry_of = models.OneToOneField(
        "self", on_delete=models.SET_NULL, null=True, blank=True, editable=False, related_name="next_attempt"
    )
    # Resume and continue (jobs/resume.py, jobs/checkpoints.py). A chain of attempts shares one
    # checkpoint folder in storage: the first attempt's, so a retry picks up where the last one ended.
    checkpoint_prefix = models.CharField(
        max_length=500, blank=True, editable=False, help_text="Storage prefix of its attempts' checkpoints"
    )
    checkpoint_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="The step of the chain's newest checkpoint, as last reported"
    )
    resumed_at_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="The checkpoint step this attempt started from (empty: from step 0)"
    )
    continued_from = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="continuations",
        help_text="The completed job whose tuned model this one started from",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "backend"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "batch_key"],
                condition=~models.Q(batch_key=""),
                name="unique_batch_key_per_owner",
            ),
            models.UniqueConstraint(fields=["owner", "submit_token"], name="unique_submit_token_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("jobs:detail", args=[self.pk])

    @property
    def export_variants(self) -> list[str]:
        """The downloads its model offers: model, adapter, or both (jobs.artifacts decides)."""
        from jobs.artifacts import export_variants

        return export_variants(self)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def processes_display(self) -> str:
        """How the run spread over devices, from its start event ("2 processes, FSDP"); empty for one."""
        facts = self.run_facts or {}
        world = int(facts.get("world_size") or 1)
        if world <= 1:
            return ""
        how = "FSDP, sharded" if facts.get("sharding") == "fsdp" else "DDP"
        return f"{world} processes, {how}"

    @property
    def percent(self) -> int:
        if self.status == JobStatus.COMPLETED:
            return 100
        if not self.total_steps:
            return 0
        return min(100, int(100 * self.step / self.total_steps))

    def storage_prefix(self) -> str:
        return f"users/{self.owner_id}/jobs/{self.pk}"

    @property
    def spot_savings_usd(self) -> Decimal | None:
        """What managed spot training saved against on-demand for the same training time (when known)."""
        if not self.use_spot or not self.billable_seconds or not self.training_seconds:
            return None
        extra = self.training_seconds - self.billable_seconds
        saved = Decimal(self.cost_usd) * extra / self.billable_seconds
        return max(Decimal(0), saved).quantize(Decimal("0.0001"))


class RunRecord(models.Model):
    """What one finished job measured, kept for the estimates of later ones (jobs.history).

    The key columns say which later jobs it is like; the rest are seconds and throughput.
    """

    job = models.OneToOneField(TrainingJob, on_delete=models.CASCADE, related_name="run_record")
    # The key.
    hub_id = models.CharField(max_length=200)
    parameters = models.BigIntegerField()
    backend = models.CharField(max_length=20, choices=Backend.choices)
    instance_type = models.CharField(max_length=50, blank=True, help_text="Empty: this machine")
    method = models.CharField(max_length=10)
    precision = models.CharField(max_length=20, blank=True)
    max_seq_length = models.PositiveIntegerField()
    world_size = models.PositiveIntegerField(default=1)
    gradient_checkpointing = models.BooleanField(default=False)
    # What it measured.
    completed = models.BooleanField(help_text="Ran to the end (else stopped part-way)")
    steps = models.PositiveIntegerField()
    train_tokens = models.BigIntegerField(default=0)
    training_phase_seconds = models.FloatField(help_text="Wall time of the training steps (no evaluation)")
    tokens_per_second = models.FloatField(
        help_text="Tokens per second of the training phase, counted as the estimate counts them"
    )
    phase_seconds = models.JSONField(default=dict, help_text="{phase: seconds} of every phase measured")
    # Passes over the evaluation data (all but the last within the training phase) and their length.
    eval_passes = models.PositiveIntegerField(default=0)
    eval_pass_seconds = models.FloatField(default=0)
    total_seconds = models.FloatField(null=True, blank=True, help_text="Leaving the queue to the end")
    estimated_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="At launch")
    billable_seconds = models.PositiveIntegerField(null=True, blank=True)
    sagemaker_training_seconds = models.PositiveIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField()

    class Meta:
        ordering = ["-finished_at", "-id"]
        indexes = [models.Index(fields=["backend", "instance_type", "-finished_at"])]

    def __str__(self) -> str:
        return f"{self.hub_id} {self.method} on {self.instance_type or self.backend}"


class ManifestDataset(models.Model):
    """A file that `submit_jobs` imported as a dataset, by content, so a re-run reuses the dataset."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="manifest_datasets"
    )
    sha256 = models.CharField(max_length=64, help_text="Of the file's bytes")
    read_options = models.CharField(max_length=2100, blank=True, help_text="How it was read (the mapping)")
    dataset = models.ForeignKey("datasets_app.Dataset", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "sha256"])]

    def __str__(self) -> str:
        return f"{self.sha256[:12]} → dataset {self.dataset_id}"


class MetricPoint(models.Model):
    """One point of the loss chart; the chart fetches points after an id cursor."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="metric_points")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"])]

    def __str__(self) -> str:
        return f"step {self.step}"


class LogLine(models.Model):
    """The last lines of a job's log; the whole log is kept in storage."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_log_seq_per_job")]

    def __str__(self) -> str:
        return self.text


class PlaygroundStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Generating"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class PlaygroundVote(models.TextChoices):
    TUNED = "tuned", "Tuned model"
    BASE = "base", "Base model"
    TIE = "tie", "Tie"


PLAYGROUND_FINAL_STATES = frozenset({PlaygroundStatus.DONE, PlaygroundStatus.FAILED})


class PlaygroundRun(models.Model):
    """One prompt tried on a completed job: the tuned model's answer beside the base model's."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="playground_runs")
    prompt = models.TextField()
    max_new_tokens = models.PositiveIntegerField()
    temperature = models.FloatField(help_text="0 means greedy decoding")
    top_p = models.FloatField()

    status = models.CharField(
        max_length=10, choices=PlaygroundStatus.choices, default=PlaygroundStatus.QUEUED, db_index=True
    )
    celery_task_id = models.CharField(max_length=255, blank=True)
    tuned_output = models.TextField(blank=True)
    base_output = models.TextField(blank=True)
    base_label = models.CharField(max_length=300, blank=True, help_text="What the base answer came from")
    notes = models.TextField(blank=True, help_text="Adjustments made to the request, e.g. a cut prompt")
    error = models.TextField(blank=True)

    # Another job of the same dataset answering in the base's place (its name kept if it is deleted).
    rival_job = models.ForeignKey(
        TrainingJob, on_delete=models.SET_NULL, null=True, blank=True, related_name="playground_rival_runs"
    )
    rival_name = models.CharField(max_length=200, blank=True)
    # Blind mode: the answers are shown as A and B, in an order drawn at submit, until the owner votes.
    blind = models.BooleanField(default=False)
    tuned_first = models.BooleanField(default=True, help_text="Blind: the tuned answer is A")
    vote = models.CharField(max_length=5, choices=PlaygroundVote.choices, blank=True)
    voted_at = models.DateTimeField(null=True, blank=True)

    # Timings, in seconds: loading (or finding in the worker's cache) both models, then each generation.
    load_seconds = models.FloatField(null=True, blank=True)
    tuned_seconds = models.FloatField(null=True, blank=True)
    base_seconds = models.FloatField(null=True, blank=True)
    tuned_tokens = models.PositiveIntegerField(null=True, blank=True)
    base_tokens = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job", "-created_at"])]

    def __str__(self) -> str:
        return self.prompt[:60]

    @property
    def is_final(self) -> bool:
        return self.status in PLAYGROUND_FINAL_STATES

    @property
    def labels_hidden(self) -> bool:
        """A blind run keeps which answer is which to itself until its owner has voted."""
        return self.blind and not self.vote

    @property
    def voted_letter(self) -> str:
        """The letter the owner picked in a blind run ("" for a tie or no vote)."""
        if self.vote == PlaygroundVote.TUNED:
            return "A" if self.tuned_first else "B"
        if self.vote == PlaygroundVote.BASE:
            return "B" if self.tuned_first else "A"
        return ""

    @property
    def blind_answers(self) -> list[tuple[str, str]]:
        first, second = (self.tuned_output, self.base_output)
        if not self.tuned_first:
            first, second = second, first
        return [("A", first), ("B", second)]


class HubPushStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Pushing"
    DONE = "done", "Pushed"
    FAILED = "failed", "Failed"


class HubPush(models.Model):
    """A completed job's model pushed to a Hugging Face Hub repository with its owner's saved token."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="hub_pushes")
    repo_name = models.CharField(max_length=200, help_text="As asked: NAME or NAMESPACE/NAME")
    private = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=HubPushStatus.choices, default=HubPushStatus.QUEUED)
    celery_task_id = models.CharField(max_length=255, blank=True)
    repo_id = models.CharField(max_length=200, blank=True, help_text="NAMESPACE/NAME, once known")
    url = models.URLField(max_length=500, blank=True)
    commit_url = models.URLField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.repo_id or self.repo_name

    @property
    def is_final(self) -> bool:
        return self.status in (HubPushStatus.DONE, HubPushStatus.FAILED)


class LocalJobAllowance(models.Model):
    """One user's cap on local jobs running or queued at once, in place of LOCAL_JOBS_PER_USER.

    Kept in the jobs app (accounts imports no other app); edited in the user admin.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="local_job_allowance"
    )
    local_jobs = models.PositiveIntegerField(
        help_text="Local training jobs this user may have running or queued at once (0: none)"
    )

    def __str__(self) -> str:
        return f"{self.local_jobs} local jobs"


class WorkerHeartbeat(models.Model):
    """A Celery worker's last sign of life, written every few seconds by the worker's main process
    (llmtuner/celery.py), busy or not: the page can tell a busy training worker from none at all."""

    name = models.CharField(max_length=255, unique=True, help_text="Node name, e.g. training@host")
    queues = models.CharField(max_length=500, help_text="The queues it consumes, as ,a,b,")
    beat_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name
