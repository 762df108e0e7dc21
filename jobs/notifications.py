from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.adapter import PRODUCT_NAME
from accounts.models import get_profile
from jobs.models import FINAL_STATES, TrainingJob
from llmtuner.validators import one_line


def send_job_finished_email(job_id: int) -> bool:
    """Email the owner that their job ended, once. Returns whether an email went out."""
    job = TrainingJob.objects.select_related("owner", "base_model").filter(pk=job_id).first()
    if job is None or job.status not in FINAL_STATES or not job.owner.email:
        return False
    if not get_profile(job.owner).email_notifications:
        return False
    # Claim the notification so a repeated task never sends it twice.
    if not TrainingJob.objects.filter(pk=job_id, notified_at__isnull=True).update(notified_at=timezone.now()):
        return False
    context = {
        "job": job,
        "product": PRODUCT_NAME,
        "url": f"{settings.SITE_URL}{job.get_absolute_url()}",
        "settings_url": f"{settings.SITE_URL}{reverse('profile')}",
        "site_url": settings.SITE_URL,
    }
    send_mail(
        # One line whatever the name holds: a line break in a header would lose the email.
        subject=one_line(
            f"[{PRODUCT_NAME}] Your training job “{job.name}” {job.get_status_display().lower()}"
        ),
        message=render_to_string("jobs/email/job_finished.txt", context),
        from_email=None,
        recipient_list=[job.owner.email],
    )
    return True
