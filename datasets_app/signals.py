"""A deleted user's dataset files go with them (their rows go by the database's cascade)."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="datasets_app.remove_users_files")
def remove_deleted_users_files(sender, instance, **kwargs) -> None:
    from datasets_app.actions import remove_owners_files

    owner_id = instance.pk  # a deleted instance loses its pk before the commit
    transaction.on_commit(lambda: remove_owners_files(owner_id))
