"""Training quotas from Service Quotas (cached), and an instance type that has room when one has none."""

from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError
from django.core.cache import cache

from jobs import pricing
from jobs.backends.sagemaker.clients import aws
from jobs.models import TrainingJob

QUOTA_CACHE_KEY = "sagemaker:training-quotas"
QUOTA_CACHE_SECONDS = 3600
QUOTA_NAME_RE = re.compile(r"^(ml\.[\w.-]+) for (spot )?training job usage$")


def training_quotas(*, use_cache: bool = True) -> dict[str, dict[str, float]]:
    """{instance type: {"on_demand": n, "spot": n}} from Service Quotas (cached for an hour)."""
    if use_cache:
        cached = cache.get(QUOTA_CACHE_KEY)
        if cached is not None:
            return cached
    quotas: dict[str, dict[str, float]] = {}
    paginator = aws().client("service-quotas").get_paginator("list_service_quotas")
    for page in paginator.paginate(ServiceCode="sagemaker", PaginationConfig={"PageSize": 100}):
        for quota in page.get("Quotas", []):
            match = QUOTA_NAME_RE.match(quota.get("QuotaName", ""))
            if match:
                kind = "spot" if match.group(2) else "on_demand"
                quotas.setdefault(match.group(1), {})[kind] = float(quota.get("Value", 0))
    cache.set(QUOTA_CACHE_KEY, quotas, QUOTA_CACHE_SECONDS)
    return quotas


def suggest_instance_type(job: TrainingJob) -> str | None:
    """An active instance type like the job's whose quota would allow it, cheapest first."""
    wanted = job.instance_type
    if wanted is None:
        return None
    try:
        quotas = training_quotas()
    except (ClientError, BotoCoreError):
        return None
    kind = "spot" if job.use_spot else "on_demand"
    candidates = pricing.active_instance_types().exclude(pk=wanted.pk)
    candidates = candidates.filter(gpu_count__gt=0) if wanted.has_gpu else candidates.filter(gpu_count=0)
    # As much GPU memory first (the model surely fits), then the cheapest.
    ordered = sorted(
        candidates, key=lambda item: (item.gpu_memory_gib < wanted.gpu_memory_gib, item.price_per_hour_usd)
    )
    for candidate in ordered:
        if quotas.get(candidate.name, {}).get(kind, 0) >= max(1, job.instance_count):
            return candidate.name
    return None
