"""A poll cycle's AWS calls: counted, paced, within a budget per kind, and backed off when throttled."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.cache import cache

from jobs.backends.sagemaker.clients import aws
from jobs.backends.sagemaker.errors import THROTTLING_CODES, error_code

logger = logging.getLogger(__name__)

BACKOFF_KEY = "sagemaker:poll-backoff:{}"


@dataclass(frozen=True)
class PollBudget:
    """Calls per poll cycle and their pace, per kind (AWS limits them per account and region).

    At most (10 + 60 + 100 + 10) calls a cycle, 360 a minute at a 30 s interval. ListTrainingJobs
    is held near 2/s; DescribeTrainingJob and the CloudWatch Logs reads stay far below their
    default quotas (GetLogEvents and DescribeLogStreams: 25/s per account); StopTrainingJob is
    only sent again for a stop that AWS never saw.
    """

    list_pages: int = 10
    describes: int = 60
    log_calls: int = 100
    stops: int = 10
    list_per_second: float = 2.0
    describe_per_second: float = 5.0
    log_per_second: float = 10.0
    stop_per_second: float = 2.0


@dataclass
class PollReport:
    jobs: int = 0
    calls: Counter = field(default_factory=Counter)
    described: int = 0
    tailed: int = 0
    finished: int = 0
    throttled: set = field(default_factory=set)
    skipped: str = ""

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class Throttled(Exception):
    pass


class OutOfBudget(Exception):
    pass


class Pacer:
    def __init__(self, per_second: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self.next_at: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self.next_at is not None and now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


class PollCalls:
    """`calls(kind, operation, **params)`: one AWS call of a cycle, or Throttled / OutOfBudget."""

    def __init__(
        self,
        budget: PollBudget,
        report: PollReport,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.report = report
        self.left = {
            "list": budget.list_pages,
            "describe": budget.describes,
            "logs": budget.log_calls,
            "stop": budget.stops,
        }
        self.pacers = {
            "list": Pacer(budget.list_per_second, clock, sleep),
            "describe": Pacer(budget.describe_per_second, clock, sleep),
            "logs": Pacer(budget.log_per_second, clock, sleep),
            "stop": Pacer(budget.stop_per_second, clock, sleep),
        }
        self.backed_off = {kind for kind in self.left if cache.get(BACKOFF_KEY.format(kind))}
        self.clean: set[str] = set()

    def __call__(self, kind: str, operation: str, **params) -> dict:
        if kind in self.backed_off or kind in self.report.throttled:
            raise Throttled(kind)
        if self.left[kind] <= 0:
            raise OutOfBudget(kind)
        self.left[kind] -= 1
        self.pacers[kind].wait()
        self.report.calls[operation] += 1
        client = aws().logs if kind == "logs" else aws().sagemaker
        try:
            response = getattr(client, _snake(operation))(**params)
        except ClientError as error:
            if error_code(error) in THROTTLING_CODES:
                self._back_off(kind)
                raise Throttled(kind) from error
            raise
        self.clean.add(kind)
        return response

    def _back_off(self, kind: str) -> None:
        """Skip this kind of call for the rest of the cycle and for 1, 2, 4… (at most 8) more cycles."""
        self.report.throttled.add(kind)
        level_key = BACKOFF_KEY.format(kind) + ":level"
        level = min(int(cache.get(level_key) or 0) + 1, 4)
        cache.set(level_key, level, 3600)
        cache.set(BACKOFF_KEY.format(kind), True, settings.SAGEMAKER_POLL_SECONDS * 2 ** (level - 1) - 1)
        logger.warning("SageMaker poll: %s calls throttled; backing off (level %s)", kind, level)

    def forget_old_throttling(self) -> None:
        """A kind that went through this cycle unthrottled starts its next back-off at level 1."""
        for kind in self.clean - self.report.throttled:
            cache.delete(BACKOFF_KEY.format(kind) + ":level")


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
