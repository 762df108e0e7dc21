"""`{% dataset_storage_usage user %}`: the user's dataset storage in use and their quota.

The settings page (accounts) shows it through this tag, so accounts needs no import of datasets.
"""

from __future__ import annotations

from django import template

from datasets_app.quota import storage_usage

register = template.Library()


@register.inclusion_tag("datasets_app/_storage_usage.html")
def dataset_storage_usage(user) -> dict:
    return {"usage": storage_usage(user.pk)}
