"""The AWS clients of this process: one boto3 session, its clients made once and shared."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from django.conf import settings

CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=60)


class AWS:
    """The clients of one boto3 session (the standard credential chain, AWS_REGION)."""

    def __init__(self, session: boto3.session.Session | None = None) -> None:
        self.session = session or boto3.session.Session(region_name=settings.AWS_REGION)
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self.session.region_name or settings.AWS_REGION

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, config=CLIENT_CONFIG
            )
        return self._clients[service]

    @property
    def sagemaker(self):
        return self.client("sagemaker")

    @property
    def logs(self):
        return self.client("logs")

    @property
    def s3(self):
        return self.client("s3")


_aws: AWS | None = None


def aws() -> AWS:
    """This process's clients, made on first use (after the worker has forked)."""
    global _aws
    if _aws is None:
        _aws = AWS()
    return _aws
