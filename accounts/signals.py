"""Keep the cached signed-in user (accounts/backends.py) in step with its row."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.backends import forget_user


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.forget_saved_user")
@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.forget_deleted_user")
def forget_changed_user(sender, instance, **kwargs) -> None:
    user_id = instance.pk  # a deleted instance loses its pk before the commit
    forget_user(user_id)
    # Again once committed: a request that read the old row meanwhile may have cached it.
    transaction.on_commit(lambda: forget_user(user_id))
